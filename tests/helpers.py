"""Helpers the tests share: tiny models and small synthetic images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

# The model stack: seconds to import, so never on napari's GUI thread.
HEAVY_MODULES = ("torch", "open_clip", "timm", "segment_anything")


def load_tiny(**overrides):
    """The tiny CLIP-guided SAM with random weights, on CPU in fp32.

    fp32 always: "auto" precision means bf16 on CPUs with native bf16, and results
    must not depend on the machine a test runs on.
    """
    import napari_clipsam as nc

    arguments = dict(sam="tiny", clip="tiny", sam_checkpoint=None, clip_pretrained=None, device="cpu",
                     precision="fp32")
    arguments.update(overrides)
    return nc.load_model(**arguments)


def demo_without_refiner():
    """The shipped demo model less its mask refiner, if it has one (the same weights otherwise), in fp32."""
    import napari_clipsam as nc

    demo = nc.load_model(preset="demo", precision="fp32")
    if not demo.config.mask_refiner:
        return demo
    plain = nc.load_model(sam=demo.sam_name, clip=demo.clip_name, sam_checkpoint=None, clip_pretrained=None,
                          device="cpu", precision="fp32", config=demo.config.replace(mask_refiner=0))
    plain.assign_trainable({name: tensor for name, tensor in demo.every_weight().items() if ".refiner." not in name},
                           every_weight=True)
    plain.concepts, plain.description = demo.concepts, demo.description
    return plain


def randomize_adapters(model, seed: int = 1, std: float = 0.05) -> None:
    """Give every adapter weight a random value, as training would (zero init hides bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in model.adapters:
            for parameter in adapter.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def two_kinds_image(seed: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 image with bright discs (label 1) and dimmer squares (label 2), and its labels."""
    rng = np.random.default_rng(seed)
    image = rng.normal(40, 8, size=(size, size))
    labels = np.zeros((size, size), dtype=np.int32)
    yy, xx = np.mgrid[:size, :size]
    for kind in (1, 2) * 3:
        for _ in range(20):  # find a free place
            r = int(rng.integers(6, 10))
            cy, cx = rng.integers(r + 1, size - r - 1, size=2)
            if kind == 1:
                shape = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                shape = (abs(yy - cy) <= r - 1) & (abs(xx - cx) <= r - 1)
            grown = np.zeros_like(shape)
            grown[max(cy - r - 2, 0): cy + r + 3, max(cx - r - 2, 0): cx + r + 3] = True
            if not (labels[grown] > 0).any():
                labels[shape] = kind
                image[shape] = 220 if kind == 1 else 130
                break
    return np.clip(image, 0, 255).astype(np.uint8), labels


def dock_in_fresh_process(widget_name: str, show: bool = False, env: dict | None = None) -> tuple[str, list[str]]:
    """Open one of our dock widgets in a fresh napari process, as napari's Plugins menu does.

    Returns the widget's class name and which of ``HEAVY_MODULES`` the process had imported
    right after the dock was added and its events processed. Runs on this test run's DISPLAY.
    """
    code = (
        "import json, sys\n"
        "import napari\n"
        "from qtpy.QtWidgets import QApplication\n"
        f"viewer = napari.Viewer(show={show!r})\n"
        f"dock, widget = viewer.window.add_plugin_dock_widget('napari-clipsam', {widget_name!r})\n"
        "QApplication.processEvents()\n"
        f"print(json.dumps([type(widget).__name__, [m for m in {HEAVY_MODULES!r} if m in sys.modules]]))\n"
        "viewer.close()\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert completed.returncode == 0, f"exit status {completed.returncode}\n{completed.stderr[-2000:]}"
    name, imported = json.loads(completed.stdout.strip().splitlines()[-1])
    return name, imported


def _create_marker(path: str) -> None:
    Path(path).write_text("code from the checkpoint ran")


class CodeOnUnpickle:
    """Unpickling this object calls ``_create_marker(path)``: a stand-in for a malicious checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (_create_marker, (self.path,))

