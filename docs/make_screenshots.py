"""Screenshots of the napari-clipsam dock widget: the demo model on its generated demo scene.

Writes ``docs/images/widget_text_mode.png`` (text-only mode with the similarity map)
and ``docs/images/widget_manual_mode.png`` (manual mode: two positive points, one
negative point and the live preview), which ``docs/widget.md`` shows, and
``docs/images/training_panel.png`` (the training panel after a short run on the
sample's ground truth), which ``docs/training.md`` shows.

Run it from the repository root; it needs a display (``xvfb-run`` gives one)::

    xvfb-run -a .venv/bin/python docs/make_screenshots.py                 # the demo model, offline
    xvfb-run -a .venv/bin/python docs/make_screenshots.py --model published \\
        --sam-checkpoint default --clip-pretrained default                # published weights, nuclei sample

By default the screenshots show the shipped demo model (``preset="demo"``) on the
"Demo scene (generated cells)" sample: nothing is downloaded and the masks are real
results of a real (small, demo) model. ``--model published`` uses vit_b + ViT-B-16 on
the synthetic nuclei sample, with the weights given (random when left out: meaningless
masks). The script prints which model it used; say so in the captions of the docs.

The script neither reads nor writes your napari or napari-clipsam settings (napari's
point at a temporary folder, the widget's are off), so every run starts from the
defaults.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WINDOW_SIZE = (1700, 900)  # width, height of the napari window in pixels
DOCK_WIDTH = 460  # least width of the plugin's dock area (wider if the widget asks for more)
MAX_BYTES = 400_000  # keep each PNG below this size


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["demo", "published"], default="demo",
                        help="the demo model on the demo scene (default), or vit_b + ViT-B-16 on the nuclei sample")
    parser.add_argument(
        "--sam-checkpoint", default=None, metavar="PATH|NAME|default",
        help="SAM weights: 'default' (official vit_b, downloaded once), a registry name such as "
             "'vit_b_lm', or a file; random weights when left out",
    )
    parser.add_argument(
        "--clip-pretrained", default=None, metavar="TAG|PATH",
        help="CLIP weights: 'default' (openai), an open_clip tag, or a file; random weights when left out",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--output-dir", type=Path, default=HERE / "images", help="where the PNGs go")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each job")
    parser.add_argument("--training-steps", type=int, default=4, help="steps of the training-panel run")
    return parser.parse_args(argv)


def describe_weights(sam_checkpoint: str | None, clip_pretrained: str | None) -> str:
    sam = "random" if sam_checkpoint is None else (
        "official vit_b (Meta)" if sam_checkpoint == "default" else str(sam_checkpoint)
    )
    clip = "random" if clip_pretrained is None else (
        "openai" if clip_pretrained == "default" else str(clip_pretrained)
    )
    return f"SAM vit_b weights: {sam}; CLIP ViT-B-16 weights: {clip}"


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    started = time.perf_counter()

    # Fresh napari and widget settings: reproducible screenshots, the user's files untouched.
    scratch = Path(tempfile.mkdtemp(prefix="napari-clipsam-screenshots-"))
    os.environ["NAPARI_CONFIG"] = str(scratch / "napari-settings.yaml")
    os.environ["NAPARI_CLIPSAM_SETTINGS"] = "off"

    import napari
    import torch
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    import napari_clipsam
    from napari_clipsam._qt.model_fields import model_choices
    from napari_clipsam._qt.segment_widget import MODE_TEXT
    from napari_clipsam._sample_data import make_demo_sample, make_nuclei_sample

    def process_events(seconds: float = 0.3) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            QApplication.processEvents()
            time.sleep(0.01)

    def wait_until(condition, what: str) -> None:
        deadline = time.perf_counter() + args.timeout
        while not condition():
            if time.perf_counter() > deadline:
                raise TimeoutError(f"gave up after {args.timeout:.0f} s waiting for {what}")
            QApplication.processEvents()
            time.sleep(0.02)

    def save(name: str) -> Path:
        process_events(0.3)  # a long status line may widen the dock: fit the image again
        viewer.reset_view()
        process_events(0.5)  # let the canvas and the status line repaint
        pixels = viewer.screenshot(canvas_only=False, flash=False)  # (H, W, 4) uint8
        args.output_dir.mkdir(parents=True, exist_ok=True)
        path = args.output_dir / name
        write_png(path, pixels[..., :3])
        print(f"wrote {path} ({pixels.shape[1]}x{pixels.shape[0]} px, {path.stat().st_size / 1000:.0f} kB)")
        return path

    def segment_and_save(what: str, active_layer, name: str) -> None:
        """Segment with the widget as it is set up (its scripting methods), then capture the window."""
        t0 = time.perf_counter()
        widget.segment()
        widget.wait(timeout=args.timeout)
        print(f"{what}: {time.perf_counter() - t0:.1f} s; status: {widget._controls.status.value}")
        viewer.layers.selection.active = active_layer
        save(name)

    demo = args.model == "demo"
    weights = ("the demo model (preset 'demo', shipped in the package)" if demo
               else describe_weights(args.sam_checkpoint, args.clip_pretrained))

    # -- the model, loaded once (and handed to the widget below). Before the viewer exists:
    # with Mesa's software OpenGL (llvmpipe, as under Xvfb), loading the model stack (and
    # triton with it, where installed) after napari's OpenGL context exists crashes the
    # process, as both bundle LLVM.
    torch.manual_seed(0)
    print(f"loading the model ({weights}) on {args.device}...")
    try:
        model = napari_clipsam.load_model(preset="demo", device=args.device) if demo else napari_clipsam.load_model(
            sam="vit_b", clip="ViT-B-16",
            sam_checkpoint=args.sam_checkpoint, clip_pretrained=args.clip_pretrained,
            device=args.device,
        )
    except OSError as err:  # WeightsUnavailableError: offline, with where to put the files
        print(f"error: {err}", file=sys.stderr)
        return 2

    # -- the viewer, the sample and the widget
    viewer = napari.Viewer(show=True, title="napari-clipsam")
    viewer.window._qt_window.resize(*WINDOW_SIZE)
    if demo:  # the image, then a ground-truth layer per concept: nuclei first
        sample = make_demo_sample()
        (image_data, image_kwargs, _) = sample[0]
        ground_truth = next(data for data, kwargs, _ in sample[1:] if kwargs["name"].startswith("nucleus"))
    else:
        (image_data, image_kwargs, _), (ground_truth, _, _) = make_nuclei_sample()
    image = viewer.add_image(image_data, **image_kwargs)  # the ground truth is not shown
    dock, widget = viewer.window.add_plugin_dock_widget("napari-clipsam", "Segment by concept")
    process_events()
    dock_width = max(DOCK_WIDTH, widget.native.width() + 10)
    viewer.window._qt_window.resizeDocks([dock], [dock_width], Qt.Orientation.Horizontal)
    process_events()

    # Make the model fields tell the truth about the injected model.
    fields = widget._model_fields
    if demo:
        fields.model.value = next(label for label, name in model_choices().items() if name == "demo")
    elif args.sam_checkpoint is None:
        fields.sam_weights.value = "none (random)"
    elif args.sam_checkpoint in fields.sam_weights.choices:
        fields.sam_weights.value = args.sam_checkpoint
    if not demo:
        fields.clip_pretrained.value = "none" if args.clip_pretrained is None else str(args.clip_pretrained)
    if args.device in fields.device.choices:
        fields.device.value = args.device
    widget.use_model(model)
    widget.set_image(image)

    # -- (a) text-only mode with the similarity map
    widget._controls.mode.value = MODE_TEXT
    widget.set_concept("nucleus")
    widget.set_options(instances=demo, similarity=True)  # the demo: one label per nucleus, touching ones apart
    segment_and_save("text-only run", image, "widget_text_mode.png")

    # -- (b) manual mode: two positive points on nuclei, one negative point, live preview
    for layer in list(viewer.layers):
        if layer is not image:
            layer.visible = False
    points = [*_nucleus_centres(ground_truth, count=2), *_background_point(ground_truth)]
    widget.set_prompts(points=points, labels=[1, 1, 0])  # (row, col) in the image's data coordinates
    segment_and_save("manual preview", viewer.layers[f"{image.name} positive points"], "widget_manual_mode.png")

    # -- (c) the training panel after a few steps on the sample's own ground truth
    for layer in list(viewer.layers):
        layer.visible = layer is image
    truth = viewer.add_labels(ground_truth, name="nuclei (ground truth)")
    dock.setVisible(False)  # the panel takes the segmentation widget's place
    dock, panel = viewer.window.add_plugin_dock_widget("napari-clipsam", "Train adapters")
    process_events()
    viewer.window._qt_window.resizeDocks([dock], [max(DOCK_WIDTH, panel.native.width() + 10)],
                                         Qt.Orientation.Horizontal)
    panel.reset_choices()
    row = list(panel._pairs)[0]
    row.image.value, row.labels.value = image, truth
    panel._concepts.value = "nucleus"
    panel._steps.value = args.training_steps
    panel._val_fraction.value = 0.0  # one image: nothing to set aside
    panel.use_base_model(model)
    t0 = time.perf_counter()
    panel._on_train_clicked()
    wait_until(lambda: not panel.busy, "the training run")
    print(f"training run: {time.perf_counter() - t0:.1f} s; status: {panel._status.value}")
    viewer.layers.selection.active = truth
    save("training_panel.png")

    print(f"weights used: {weights}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    viewer.close()
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _nucleus_centres(labels, count: int):
    """(row, col) centres of ``count`` nuclei near the middle of the image."""
    import numpy as np
    from scipy import ndimage

    values = np.arange(1, int(labels.max()) + 1)
    centres = np.asarray(ndimage.center_of_mass(labels > 0, labels, values))
    middle = np.asarray(labels.shape) / 2
    order = np.argsort(np.linalg.norm(centres - middle, axis=1))
    return np.round(centres[order[:count]])


def _background_point(labels):
    """A (row, col) point on the background, far from every nucleus, near the middle."""
    import numpy as np
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(labels == 0)
    rows, cols = np.indices(labels.shape)
    middle = np.asarray(labels.shape) / 2
    near_middle = np.hypot(rows - middle[0], cols - middle[1]) < min(labels.shape) / 4
    score = np.where(near_middle, distance, 0)
    return np.asarray([np.unravel_index(np.argmax(score), labels.shape)], dtype=float)


def write_png(path: Path, rgb) -> None:
    """Save an RGB array as PNG; quantise the colours, then downscale, to stay under MAX_BYTES."""
    from PIL import Image

    picture = Image.fromarray(rgb)
    picture.save(path, optimize=True)
    if path.stat().st_size <= MAX_BYTES:
        return
    scale = 1.0
    while True:
        candidate = picture if scale == 1.0 else picture.resize(
            (round(picture.width * scale), round(picture.height * scale)), Image.Resampling.LANCZOS
        )
        candidate.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            path, optimize=True
        )
        if path.stat().st_size <= MAX_BYTES or scale < 0.5:
            return
        scale *= 0.85


if __name__ == "__main__":
    sys.exit(main())
