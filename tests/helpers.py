"""Helpers the tests share: tiny models and small synthetic images."""

from __future__ import annotations

import numpy as np
import torch


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
