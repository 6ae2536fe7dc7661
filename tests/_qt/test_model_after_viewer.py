"""A script that opens a napari viewer and then loads a model must not crash napari.

With Mesa's software OpenGL (Xvfb, virtual machines, remote desktops) importing triton
after napari's OpenGL context exists kills the process (segmentation fault, seen here);
load_model keeps triton out where there is no CUDA GPU to use it.
"""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
import napari
viewer = napari.Viewer(show=False)
import napari_clipsam as nc
model = nc.load_model(sam="tiny", clip="tiny", sam_checkpoint=None, clip_pretrained=None, device="cpu",
                      precision="fp32")
labels = nc.segment(viewer.add_image(__import__("numpy").zeros((40, 40))).data, "x", model=model)
print("segmented", labels.shape)
"""


def test_a_model_loads_after_a_viewer_exists():
    # A fresh process: this one has imported torchvision long ago.
    completed = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, f"exit status {completed.returncode}\n{completed.stderr[-2000:]}"
    assert "segmented (40, 40)" in completed.stdout
