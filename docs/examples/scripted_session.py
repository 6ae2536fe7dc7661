"""A scripted napari session: the segmentation widget, and ``segment_layer``, without a click.

It runs offline with the tiny test model, whose random weights make meaningless masks;
for real work load the published weights with ``napari_clipsam.load_model()``. Run it
from the repository root::

    python docs/examples/scripted_session.py              # opens napari with the results
    python docs/examples/scripted_session.py --no-show    # prints the results and exits

Either way it needs a display (``xvfb-run -a`` gives one on a headless Linux machine).
See docs/scripting.md.
"""

from __future__ import annotations

import argparse

import napari
import numpy as np

import napari_clipsam


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-show", action="store_true", help="do not show the viewer; exit when done")
    args = parser.parse_args(argv)

    viewer = napari.Viewer(show=not args.no_show)
    model = napari_clipsam.load_model(sam="tiny", clip="tiny", sam_checkpoint=None, clip_pretrained=None)
    image, truth = viewer.open_sample("napari-clipsam", "nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-clipsam", "Segment by concept")
    widget.use_model(model)
    widget.set_image(image)

    # 1. By concept: one label per object, small ones dropped. segment() returns at once;
    #    wait() keeps napari responsive until the result is in the labels layer.
    widget.set_concept("nucleus")
    widget.set_options(instances=True, min_area=20)
    widget.segment()
    result = widget.wait(timeout=600)
    print(f"concept: {result.labels.max()} objects in '{image.name} nucleus' (SAM score {result.score:.2f})")

    # 2. By prompts, in the image layer's data coordinates (row, col), as a script reads
    #    them from layers: here the centre of one ground-truth nucleus, and a negative
    #    point in a corner. The preview is kept with accept_preview().
    rows, cols = np.nonzero(truth.data == 1)
    widget.set_concept("")
    widget.set_options(instances=False, output="New layer")
    widget.set_prompts(points=[[rows.mean(), cols.mean()], [5, 5]], labels=[1, 0])
    widget.segment()
    widget.wait(timeout=600)
    new_labels = widget.accept_preview()
    print(f"prompts: label(s) {new_labels} added to '{image.name} objects'")

    # 3. Without the widget: a napari LayerDataTuple that keeps the image's scale and translate.
    data, kwargs, layer_type = napari_clipsam.segment_layer(image, "nucleus", model, instances=True, name="nucleus (script)")
    viewer.add_labels(data, **kwargs)
    print(f"segment_layer: {data.max()} objects in a {layer_type} layer '{kwargs['name']}'")

    if args.no_show:
        viewer.close()
    else:
        napari.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
