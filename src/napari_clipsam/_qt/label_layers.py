"""The layers results go to: the output Labels layer, the manual preview, the similarity map.

Called on the main thread only (from the job runner's result handlers). Every write
into an output layer is one undoable step of napari's history.
"""

from __future__ import annotations

import numpy as np

from ..inference.labels import check_label_dtype, plan_label_write
from ..inference.layers import CONCEPTS_METADATA_KEY, spatial, spatial_shape

NEW_LAYER = "New layer"
PREVIEW_NAME = "clipsam preview"


def labels_layer_names(viewer) -> list[str]:
    from napari.layers import Labels

    return [layer.name for layer in viewer.layers if isinstance(layer, Labels)]


def output_choices(viewer, _widget=None) -> list[str]:
    """What the Output control offers: a new layer, or one of the viewer's Labels layers."""
    return [NEW_LAYER, *labels_layer_names(viewer)]


def existing_output(viewer, choice: str | None, image_layer):
    """The Labels layer chosen as output, None for a new one; refuses one of another shape."""
    if not choice or choice == NEW_LAYER or choice not in viewer.layers:
        return None
    output = viewer.layers[choice]
    shape = spatial_shape(image_layer)
    if tuple(output.data.shape) != shape:
        raise ValueError(
            f"The output layer '{choice}' has shape {tuple(output.data.shape)}, the image {shape}; "
            "choose another output or 'New layer'."
        )
    return output


def output_layer(viewer, choice: str | None, image_layer, concept: str | None):
    """The chosen Labels layer, or a new one named after image and concept, with the image's scale and translate."""
    from napari.layers import Labels

    output = existing_output(viewer, choice, image_layer)
    if output is not None:
        return output
    output = Labels(
        np.zeros(spatial_shape(image_layer), dtype=np.uint32), name=f"{image_layer.name} {concept or 'objects'}",
        scale=spatial(image_layer, image_layer.scale), translate=spatial(image_layer, image_layer.translate),
    )
    viewer.add_layer(output)
    return output


def write_labels(
    output, results: list[tuple[tuple[int, ...], np.ndarray]], *, concept: str | None, instances: bool, replace: bool
) -> list[int]:
    """Write results, each (plane, labels), into ``output`` as one undo step; returns the new label values.

    New objects never merge with existing ones (see :func:`plan_label_write`); a semantic
    (non-instance) result of a concept takes the value that concept has in the layer.
    """
    concepts = output.metadata.setdefault(CONCEPTS_METADATA_KEY, {})
    new_labels: list[int] = []
    pruned = False
    with output.block_history():
        for plane, source in results:
            if not pruned and np.asarray(source).any():
                _forget_absent_concepts(output.data, concepts)
                pruned = True
            semantic_value = None if instances or concept is None else concepts.get(concept)
            write = plan_label_write(output.data, source, plane=plane, instances=instances, replace=replace,
                                     semantic_value=semantic_value)
            if write.empty:
                continue
            check_label_dtype(output.data, write)
            output.data_setitem(write.indices, write.values)
            new_labels.extend(write.new_labels)
            if not instances and concept is not None:
                concepts[concept] = write.new_labels[0]
    return new_labels


def _forget_absent_concepts(data, concepts: dict[str, int]) -> None:
    """Drop the concepts whose value is no longer in the layer.

    napari's undo restores the data, not the metadata: after an undo, a concept's value
    may be free again and taken by the next write (another concept, or an object), so a
    later run of the first concept must not reuse it. A concept whose pixels were all
    undone or erased gets a new value on its next run.
    """
    data = np.asarray(data)
    for concept, value in list(concepts.items()):
        if not (data == value).any():
            del concepts[concept]


def show_preview(viewer, image_layer, mask: np.ndarray):
    """Show a copy of a plane's result in the preview layer (made on first use, over the image's plane).

    A copy: the user may paint on the preview, and what they paint is what
    :func:`preview_labels` hands back, while the job's result stays as it was computed.
    """
    from napari.layers import Labels

    mask = np.array(mask, copy=True)
    if PREVIEW_NAME in viewer.layers:
        preview = viewer.layers[PREVIEW_NAME]
        preview.data = mask
        return preview
    preview = Labels(mask, name=PREVIEW_NAME, opacity=0.6, scale=spatial(image_layer, image_layer.scale)[-2:],
                     translate=spatial(image_layer, image_layer.translate)[-2:])
    viewer.add_layer(preview)
    return preview


def preview_labels(viewer) -> np.ndarray | None:
    """The preview as the viewer shows it now (with the user's edits); None without a preview layer."""
    if PREVIEW_NAME not in viewer.layers:
        return None
    return np.asarray(viewer.layers[PREVIEW_NAME].data)


def remove_preview(viewer) -> None:
    if PREVIEW_NAME in viewer.layers:
        viewer.layers.remove(PREVIEW_NAME)


def show_similarity(viewer, image_layer, concept: str, similarity: np.ndarray) -> None:
    """Show the concept's similarity map over the image; the image stays the active layer."""
    name = f"similarity: {concept}"
    scale = spatial(image_layer, image_layer.scale)[-2:]
    translate = spatial(image_layer, image_layer.translate)[-2:]
    if name in viewer.layers:
        existing = viewer.layers[name]
        existing.data = similarity
        existing.scale, existing.translate = scale, translate
    else:
        viewer.add_image(similarity, name=name, colormap="magma", opacity=0.5, blending="additive",
                         contrast_limits=(0.0, 1.0), scale=scale, translate=translate)
    viewer.layers.selection.active = image_layer
