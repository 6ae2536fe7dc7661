"""The napari dock widget: segment by concept, points and boxes into Labels layers.

A thin layer over the core: the model, predictor and jobs live in Qt-free modules;
this file builds the controls, runs the jobs in napari's ``thread_worker`` and writes
results into layers, always on the main thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    PushButton,
    RadioButtons,
    create_widget,
)

# Light imports only (numpy, scipy): the model stack is imported by the jobs, in a worker.
from .._jobs import Progress, iter_load_model
from ..inference.labels import check_label_dtype, plan_label_write
from ..inference.pipeline import SegmentOptions, SegmentResult, iter_segment, iter_segment_stack
from .jobs import JobRunner
from .settings import load_settings, save_settings

if TYPE_CHECKING:
    import napari

NEW_LAYER = "New layer"
MODE_TEXT = "Semi-automatic (text only)"
MODE_MANUAL = "Manual (points / box)"
SCOPE_SLICE = "Current slice"
SCOPE_ALL = "All slices"
CHANNEL_ALL = "All (RGB)"
_SAM_VARIANTS = ["vit_b", "vit_l", "vit_h"]
# SAM input sides offered; "auto" is the size the adapters were trained at, else SAM's own.
SAM_INPUTS = ["auto", "1024", "768", "512"]
# Milliseconds to wait after the last prompt edit before decoding.
DEBOUNCE_MS = 150


def _sam_weight_choices() -> list[str]:
    from ..weights.registry import RANDOM_WEIGHTS, SAM_WEIGHTS

    return ["default", *[name for name in SAM_WEIGHTS if name not in _SAM_VARIANTS], RANDOM_WEIGHTS]


@dataclass
class _Request:
    """One segmentation asked for, with what it was computed from (to detect staleness)."""

    kind: str  # "text", "manual" or "stack"
    image_layer: Any
    data: Any
    plane: tuple[int, ...]
    concept: str | None
    arguments: dict[str, Any] = field(default_factory=dict)


class ClipSamWidget(Container):
    """Segment an image layer by concept (text), points and boxes into a Labels layer."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        # Not scrollable: napari docks the inner widget, and a magicgui scroll area
        # there is clipped under the dock title (magicgui issue 431).
        super().__init__(scrollable=False)
        self._viewer = napari_viewer
        self._settings = load_settings()
        settings = self._settings

        # -- model
        self._sam = ComboBox(label="SAM", choices=_SAM_VARIANTS, value=_choice(settings.sam, _SAM_VARIANTS))
        weights = _sam_weight_choices()
        self._sam_weights = ComboBox(label="SAM weights", choices=weights, value=_choice(settings.sam_weights, weights))
        self._clip = LineEdit(label="CLIP model", value=settings.clip)
        self._clip_pretrained = LineEdit(label="CLIP weights", value=settings.clip_pretrained)
        self._adapters = FileEdit(label="Adapters", mode="r", filter="*.safetensors", value=settings.adapters)
        self._device = ComboBox(label="Device", choices=["auto", "cpu", "cuda", "mps"], value=settings.device)
        self._precision = ComboBox(label="Precision", choices=["auto", "fp32", "bf16"], value=settings.precision)
        self._sam_input = ComboBox(label="SAM input", choices=SAM_INPUTS, value=_choice(settings.sam_input, SAM_INPUTS))
        self._sam_input.tooltip = (
            "Side of the image SAM sees, in pixels. Smaller is faster (512: about 4x on a CPU) with "
            "less detail. auto: the size the adapters were trained at, else 1024."
        )
        self._load_button = PushButton(text="Load model")

        # -- what to segment
        self._image = create_widget(label="Image", annotation="napari.layers.Image")
        self._channel = ComboBox(label="Channel", choices=[CHANNEL_ALL, "0", "1", "2"], value=CHANNEL_ALL)
        self._concept = LineEdit(label="Concept")
        self._recent = ComboBox(label="Recent", choices=self._recent_choices, value="")
        self._mode = RadioButtons(
            label="Mode", choices=[MODE_TEXT, MODE_MANUAL],
            value=MODE_MANUAL if settings.mode == "manual" else MODE_TEXT,
        )
        self._scope = ComboBox(label="Slices", choices=[SCOPE_SLICE, SCOPE_ALL], value=SCOPE_SLICE)

        # -- output
        self._output = ComboBox(label="Output", choices=self._output_choices)
        self._instances = CheckBox(text="Separate objects (instances)", value=False)
        self._replace = CheckBox(text="Replace existing labels", value=False)
        self._show_similarity = CheckBox(text="Show similarity map", value=False)

        # -- actions
        self._run_button = PushButton(text="Segment")
        self._prompts_button = PushButton(text="Add prompt layers")
        self._commit_button = PushButton(text="Add mask to labels", enabled=False)
        self._cancel_button = PushButton(text="Cancel", enabled=False)
        self._status = Label(value="")
        self._status.native.setWordWrap(True)  # long messages (offline paths) must not widen the dock

        self.extend([
            self._sam, self._sam_weights, self._clip, self._clip_pretrained, self._adapters,
            self._device, self._precision, self._sam_input, self._load_button,
            self._image, self._channel, self._concept, self._recent, self._mode, self._scope,
            self._output, self._instances, self._replace, self._show_similarity,
            self._run_button, self._prompts_button, self._commit_button, self._cancel_button, self._status,
        ])

        # -- state
        self._model = None
        self._model_key: tuple | None = None
        self._predictor = None
        self._runner = JobRunner(self._set_status, self._set_busy)
        self._queued: Callable[[], None] | None = None
        self._preview: tuple[_Request, SegmentResult] | None = None
        self._prompt_layers: dict[str, Any] = {}

        from qtpy.QtCore import QTimer

        self._debounce = QTimer()
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self._request_manual)

        self._load_button.changed.connect(self._on_load_clicked)
        self._run_button.changed.connect(self._on_run_clicked)
        self._prompts_button.changed.connect(self._add_prompt_layers)
        self._commit_button.changed.connect(self._commit_preview)
        self._cancel_button.changed.connect(self.cancel)
        self._recent.changed.connect(self._on_recent)
        self._mode.changed.connect(self._update_visibility)
        self._image.changed.connect(self._update_visibility)
        for widget in (self._sam, self._sam_weights, self._clip, self._clip_pretrained, self._adapters,
                       self._device, self._precision, self._sam_input, self._mode):
            widget.changed.connect(self._save_settings)
        self._update_visibility()

    # ------------------------------------------------------------------ public
    def use_model(self, model) -> None:
        """Use an already loaded :class:`ClipSamModel` (from a script or the training panel)."""
        from ..inference.predictor import ClipSamPredictor

        self._model = model
        self._model_key = ("given", id(model))
        self._predictor = ClipSamPredictor(model)
        self._status.value = f"Model: SAM {model.sam_name} + CLIP {model.clip_name} ({model.device}, {model.precision})"

    @property
    def busy(self) -> bool:
        return self._runner.busy

    def cancel(self, *_: Any) -> None:
        """Stop the running job at its next stage boundary and drop the queued one; layers stay as they are."""
        self._queued = None
        self._debounce.stop()
        self._runner.cancel()

    def _set_status(self, text: str) -> None:
        self._status.value = text

    def _set_busy(self, busy: bool) -> None:
        self._cancel_button.enabled = busy

    # ------------------------------------------------------------- controls
    def _output_choices(self, _widget: Any = None) -> list[str]:
        from napari.layers import Labels

        return [NEW_LAYER, *[layer.name for layer in self._viewer.layers if isinstance(layer, Labels)]]

    def _recent_choices(self, _widget: Any = None) -> list[str]:
        return ["", *self._settings.recent_concepts]

    def _on_recent(self, value: str) -> None:
        if value:
            self._concept.value = value

    def _update_visibility(self, *_: Any) -> None:
        layer = self._image.value
        manual = self._mode.value == MODE_MANUAL
        self._channel.visible = bool(layer is not None and layer.rgb)
        self._scope.visible = bool(layer is not None and _leading_ndim(layer) > 0 and not manual)
        self._prompts_button.visible = manual
        self._commit_button.visible = manual
        self._run_button.text = "Segment" if not manual else "Update mask"

    def _save_settings(self, *_: Any) -> None:
        self._settings_from_controls()
        save_settings(self._settings)

    def _settings_from_controls(self) -> None:
        settings = self._settings
        settings.sam = self._sam.value
        settings.sam_weights = self._sam_weights.value
        settings.clip = self._clip.value
        settings.clip_pretrained = self._clip_pretrained.value
        settings.adapters = _path_or_empty(self._adapters.value)
        settings.device = self._device.value
        settings.precision = self._precision.value
        settings.sam_input = self._sam_input.value
        settings.mode = "manual" if self._mode.value == MODE_MANUAL else "text"

    def _remember_concept(self, concept: str) -> None:
        self._settings.remember_concept(concept)
        self._recent.reset_choices()
        save_settings(self._settings)

    # ------------------------------------------------------------------ model
    def _model_arguments(self) -> dict[str, Any]:
        self._settings_from_controls()
        return self._settings.model_arguments()

    def _on_load_clicked(self, *_: Any) -> None:
        self._ensure_model(then=None, force=True)

    def _ensure_model(self, then: Callable[[], None] | None, force: bool = False) -> None:
        """Run ``then`` once a model is loaded, loading one in the background if needed."""
        if self._model is not None and not force and self._model_key is not None:
            if self._model_key[0] == "given" or self._model_key == tuple(self._model_arguments().items()):
                if then is not None:
                    then()
                return
        arguments = self._model_arguments()
        self._start(
            "Loading model",
            iter_load_model,
            kwargs=arguments,
            on_result=lambda model: self._on_model_loaded(model, arguments, then),
        )

    def _on_model_loaded(self, model, arguments: dict[str, Any], then: Callable[[], None] | None) -> None:
        self.use_model(model)
        self._model_key = tuple(arguments.items())
        if then is not None:
            self._queued = then  # starts as soon as the loading worker has finished

    # --------------------------------------------------------------- requests
    def _current_plane(self, layer) -> tuple[int, ...]:
        leading = _leading_ndim(layer)
        if leading == 0:
            return ()
        data_position = layer.world_to_data(self._viewer.dims.point)
        shape = _spatial_shape(layer)
        return tuple(
            int(np.clip(round(float(c)), 0, size - 1)) for c, size in zip(data_position[:leading], shape[:leading])
        )

    def _make_request(self, kind: str) -> _Request | None:
        from napari.utils.notifications import show_error

        layer = self._image.value
        if layer is None:
            show_error("napari-clipsam: open an image first (File > Open Sample > CLIP-Guided SAM offers some).")
            return None
        concept = " ".join(self._concept.value.split()) or None
        if kind != "manual" and concept is None:
            show_error("napari-clipsam: type a concept, e.g. 'nucleus', for the text-only mode.")
            return None
        if self._viewer.dims.ndisplay != 2 and _leading_ndim(layer) > 0:
            show_error("napari-clipsam: switch the viewer to 2D to segment a slice.")
            return None
        choice = self._output.value
        if choice and choice != NEW_LAYER and choice in self._viewer.layers:
            shape = tuple(self._viewer.layers[choice].data.shape)
            if shape != _spatial_shape(layer):
                show_error(
                    f"napari-clipsam: the output layer '{choice}' has shape {shape}, the image "
                    f"{_spatial_shape(layer)}; choose another output or 'New layer'."
                )
                return None
        plane = self._current_plane(layer)
        return _Request(kind=kind, image_layer=layer, data=layer.data, plane=plane, concept=concept)

    def _image_plane(self, request: _Request) -> np.ndarray:
        return np.asarray(request.data[request.plane] if request.plane else request.data)

    def _channel_index(self) -> int | None:
        layer = self._image.value
        value = self._channel.value
        return None if value == CHANNEL_ALL or layer is None or not layer.rgb else int(value)

    def _on_run_clicked(self, *_: Any) -> None:
        if self._mode.value == MODE_MANUAL:
            self._request_manual()
            return
        layer = self._image.value
        all_slices = layer is not None and _leading_ndim(layer) > 0 and self._scope.value == SCOPE_ALL
        request = self._make_request("stack" if all_slices else "text")
        if request is None:
            return
        self._remember_concept(request.concept)
        self._submit(lambda: self._start_segmentation(request))

    def _request_manual(self) -> None:
        request = self._make_request("manual")
        if request is None:
            return
        coords, labels, box = self._prompts_for(request)
        if coords is None and box is None and request.concept is None:
            self._status.value = "Add points or a box (or type a concept) to segment."
            return
        request.arguments = dict(points=coords, point_labels=labels, box=box)
        if request.concept:
            self._remember_concept(request.concept)
        self._submit(lambda: self._start_segmentation(request))

    def _submit(self, start: Callable[[], None]) -> None:
        """Run now, or queue behind the running job; a newer request replaces a queued one."""
        def with_model() -> None:
            self._ensure_model(then=start)

        if self._runner.busy:
            self._queued = with_model
            self._status.value = "Queued: waiting for the running job to finish..."
        else:
            with_model()

    def _start_segmentation(self, request: _Request) -> None:
        # Set here, between jobs: a new size drops the predictor's features (none is running).
        self._predictor.image_size = None if self._sam_input.value == "auto" else int(self._sam_input.value)
        options = SegmentOptions(
            instances=self._instances.value, channel=self._channel_index(),
            with_similarity=self._show_similarity.value and request.concept is not None and request.kind != "stack",
        )
        if request.kind == "stack":
            self._start(
                "Segmenting all slices", iter_segment_stack,
                args=(self._predictor, request.data, request.concept),
                kwargs=dict(options=options, rgb=request.image_layer.rgb),
                on_result=lambda labels: self._reporting_errors(self._write_stack, request, labels),
            )
            return
        self._start(
            "Segmenting", iter_segment,
            args=(self._predictor, self._image_plane(request), request.concept),
            kwargs=dict(request.arguments, options=options),
            on_result=lambda result: self._on_segmented(request, result),
        )

    # ------------------------------------------------------------------ worker
    def _start(self, title: str, job: Callable, args: tuple = (), kwargs: dict | None = None,
               on_result: Callable[[Any], None] | None = None) -> None:
        self._runner.start(title, job, args, kwargs, on_result=on_result, on_event=self._on_progress,
                           after=self._run_queued)

    def _on_progress(self, event: Progress) -> None:
        if event.stage == "downloading weights" and event.total:
            self._status.value = f"Downloading weights: {event.done / 1e6:.0f} of {event.total / 1e6:.0f} MB"

    def _run_queued(self) -> None:
        queued, self._queued = self._queued, None
        if queued is not None:
            queued()

    # ----------------------------------------------------------------- results
    def _is_current(self, request: _Request) -> bool:
        """Whether the widget still shows what ``request`` was computed for."""
        layer = request.image_layer
        if layer not in self._viewer.layers or self._image.value is not layer or layer.data is not request.data:
            return False
        concept = " ".join(self._concept.value.split()) or None
        if concept != request.concept:
            return False
        return request.kind == "stack" or self._current_plane(layer) == request.plane

    def _on_segmented(self, request: _Request, result: SegmentResult) -> None:
        self._reporting_errors(self._apply_result, request, result)

    def _reporting_errors(self, function: Callable, *args: Any) -> None:
        """Run a result handler; a failure (e.g. the output layer changed shape) is notified, not raised."""
        from napari.utils.notifications import show_error

        try:
            function(*args)
        except (ValueError, KeyError, OSError) as err:
            self._status.value = f"Error: {err}"
            show_error(f"napari-clipsam: {err}")

    def _apply_result(self, request: _Request, result: SegmentResult) -> None:
        if not self._is_current(request):
            self._status.value = "Result dropped: the image, slice or concept changed meanwhile."
            return
        if result.similarity is not None:
            self._show_similarity_layer(request, result.similarity)
        if request.kind == "manual":
            self._show_preview(request, result)
            return
        new = self._write(request, result)
        self._status.value = f"{request.concept}: {len(new)} new label(s), score {result.score:.2f}."

    def _output_layer(self, request: _Request):
        """The chosen Labels layer, or a new one named after image and concept."""
        from napari.layers import Labels

        choice = self._output.value
        layer = request.image_layer
        shape = _spatial_shape(layer)
        if choice and choice != NEW_LAYER and choice in self._viewer.layers:
            output = self._viewer.layers[choice]
            if tuple(output.data.shape) != tuple(shape):
                raise ValueError(
                    f"The output layer '{choice}' has shape {output.data.shape}, the image {shape}; "
                    "choose another output or 'New layer'."
                )
            return output
        name = f"{layer.name} {request.concept or 'objects'}"
        output = Labels(
            np.zeros(shape, dtype=np.uint32), name=name,
            scale=_spatial(layer, layer.scale), translate=_spatial(layer, layer.translate),
        )
        self._viewer.add_layer(output)
        self._output.reset_choices()
        self._output.value = output.name
        return output

    def _semantic_value(self, output, concept: str | None) -> int | None:
        if self._instances.value or concept is None:
            return None
        return output.metadata.get("clipsam_concepts", {}).get(concept)

    def _write(self, request: _Request, result: SegmentResult, plane: tuple[int, ...] | None = None) -> list[int]:
        """Write one result as one undoable step; returns the new label values."""
        output = self._output_layer(request)
        return self._write_into(output, request, [(request.plane if plane is None else plane, result.labels)])

    def _write_into(self, output, request: _Request, results: list[tuple[tuple[int, ...], np.ndarray]]) -> list[int]:
        new_labels: list[int] = []
        with output.block_history():
            for plane, source in results:
                write = plan_label_write(
                    output.data, source, plane=plane, instances=self._instances.value,
                    replace=self._replace.value, semantic_value=self._semantic_value(output, request.concept),
                )
                if write.empty:
                    continue
                check_label_dtype(output.data, write)
                output.data_setitem(write.indices, write.values)
                new_labels.extend(write.new_labels)
                if not self._instances.value and request.concept is not None:
                    output.metadata.setdefault("clipsam_concepts", {})[request.concept] = write.new_labels[0]
        return new_labels

    def _write_stack(self, request: _Request, labels: np.ndarray) -> None:
        if not self._is_current(request):
            self._status.value = "Result dropped: the image or concept changed meanwhile."
            return
        output = self._output_layer(request)
        new = self._write_into(output, request, [((), labels)])
        planes = int(np.prod(labels.shape[:-2]))
        self._status.value = f"{request.concept}: {len(new)} new label(s) in {planes} slices."

    def _show_similarity_layer(self, request: _Request, similarity: np.ndarray) -> None:
        layer = request.image_layer
        name = f"similarity: {request.concept}"
        scale, translate = _spatial(layer, layer.scale)[-2:], _spatial(layer, layer.translate)[-2:]
        if name in self._viewer.layers:
            existing = self._viewer.layers[name]
            existing.data = similarity
            existing.scale, existing.translate = scale, translate
        else:
            self._viewer.add_image(
                similarity, name=name, colormap="magma", opacity=0.5, blending="additive",
                contrast_limits=(0.0, 1.0), scale=scale, translate=translate,
            )
        self._viewer.layers.selection.active = layer

    # ------------------------------------------------------------ manual mode
    def _add_prompt_layers(self, *_: Any) -> None:
        """Create (or re-use) the positive, negative and box layers for the chosen image."""
        from napari.utils.notifications import show_error

        layer = self._image.value
        if layer is None:
            show_error("napari-clipsam: choose an image first.")
            return
        ndim = len(_spatial_shape(layer))
        common = dict(ndim=ndim, scale=_spatial(layer, layer.scale), translate=_spatial(layer, layer.translate))
        specs = {
            "positive": dict(face_color="lime", border_color="white"),
            "negative": dict(face_color="red", border_color="white"),
        }
        for kind, colors in specs.items():
            name = f"{layer.name} {kind} points"
            if name not in self._viewer.layers:
                points = self._viewer.add_points(name=name, size=max(4, min(_spatial_shape(layer)[-2:]) // 60), **colors, **common)
                points.events.data.connect(self._on_prompts_edited)
            self._prompt_layers[kind] = self._viewer.layers[name]
        name = f"{layer.name} box"
        if name not in self._viewer.layers:
            shapes = self._viewer.add_shapes(name=name, edge_color="yellow", face_color="transparent", edge_width=2, **common)
            shapes.events.data.connect(self._on_prompts_edited)
        self._prompt_layers["box"] = self._viewer.layers[name]
        positive = self._prompt_layers["positive"]
        self._viewer.layers.selection.active = positive
        positive.mode = "add"
        self._status.value = "Click to add positive points; use the negative layer or draw a box."

    def _on_prompts_edited(self, event: Any = None) -> None:
        action = getattr(event, "action", None)
        if action is not None and str(action).lower().split(".")[-1] in {"adding", "removing", "changing"}:
            return  # the 'before' half of napari's paired data events
        if self._mode.value == MODE_MANUAL:
            self._debounce.start()

    def _prompts_for(self, request: _Request) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """XY points with labels, and an XYXY box, from the prompt layers on the request's plane."""
        leading = len(request.plane)
        coords, labels = [], []
        for kind, value in (("positive", 1), ("negative", 0)):
            points = self._prompt_layers.get(kind)
            if points is None or points not in self._viewer.layers:
                continue
            for point in np.asarray(points.data):
                if leading and tuple(int(round(c)) for c in point[:leading]) != request.plane:
                    continue
                coords.append([point[-1], point[-2]])
                labels.append(value)
        box = None
        shapes = self._prompt_layers.get("box")
        if shapes is not None and shapes in self._viewer.layers:
            for corners in reversed(list(shapes.data)):  # the newest box on this plane
                corners = np.asarray(corners)
                if leading and tuple(int(round(c)) for c in corners[0, :leading]) != request.plane:
                    continue
                rows, cols = corners[:, -2], corners[:, -1]
                if cols.max() > cols.min() and rows.max() > rows.min():
                    box = np.array([cols.min(), rows.min(), cols.max(), rows.max()])
                    break
        if not coords:
            return None, None, box
        return np.asarray(coords, dtype=np.float64), np.asarray(labels, dtype=np.int64), box

    def _show_preview(self, request: _Request, result: SegmentResult) -> None:
        from napari.layers import Labels

        layer = request.image_layer
        name = "clipsam preview"
        mask = result.labels
        scale, translate = _spatial(layer, layer.scale)[-2:], _spatial(layer, layer.translate)[-2:]
        if name in self._viewer.layers:
            preview = self._viewer.layers[name]
            preview.data = mask
        else:
            preview = Labels(mask, name=name, opacity=0.6, scale=scale, translate=translate)
            self._viewer.add_layer(preview)
        self._preview = (request, result)
        self._commit_button.enabled = True
        self._status.value = f"Preview updated (score {result.score:.2f}). 'Add mask to labels' keeps it."

    def _commit_preview(self, *_: Any) -> None:
        """Write the manual preview into the output layer (one undo step) and clear the prompts."""
        if self._preview is None:
            return
        request, result = self._preview
        if not self._is_current(request):
            self._status.value = "The preview is out of date (image, slice or concept changed); update it first."
            return
        new = self._write(request, result)
        self._preview = None
        self._commit_button.enabled = False
        if "clipsam preview" in self._viewer.layers:
            self._viewer.layers.remove("clipsam preview")
        for kind in ("positive", "negative", "box"):
            prompt_layer = self._prompt_layers.get(kind)
            if prompt_layer is not None and prompt_layer in self._viewer.layers:
                with prompt_layer.events.data.blocker(self._on_prompts_edited):
                    prompt_layer.data = []
        self._status.value = f"Added label(s) {new}."


def _choice(value: str, choices: list[str]) -> str:
    return value if value in choices else choices[0]


def _path_or_empty(value: Any) -> str:
    text = str(value) if value is not None else ""
    return "" if text in {"", "."} or not Path(text).is_file() else text


def _spatial_shape(layer) -> tuple[int, ...]:
    shape = tuple(layer.data.shape)
    return shape[:-1] if layer.rgb else shape


def _spatial(layer, values) -> tuple[float, ...]:
    return tuple(values)[: len(_spatial_shape(layer))]


def _leading_ndim(layer) -> int:
    return len(_spatial_shape(layer)) - 2
