"""The napari dock widget: segment by concept, points and boxes into Labels layers.

A thin layer over the core. The parts, each in its own module beside this one:
``model_fields`` and ``segment_controls`` (the controls), ``segment_jobs`` (requests run
in a worker with the model they need), ``prompt_layers`` (the manual prompts),
``label_layers`` (results into layers, on the main thread), ``shortcuts`` (keys) and
``requests``. This class wires them together and offers the scripting methods
(docs/scripting.md).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container

from ..inference.pipeline import SegmentResult
from ..inference.prompts import normalise_concept
from . import label_layers
from .docking import watch_docking
from .jobs import JobRunner
from .label_layers import NEW_LAYER
from .model_fields import SAM_INPUTS, ModelFields
from .outputs import OutputChoice
from .prompt_layers import POSITIVE, PromptLayers
from .requests import (
    MANUAL,
    STACK,
    TEXT,
    NothingToSegment,
    RequestError,
    SegmentRequest,
    StaleResultError,
    current_plane,
    stale_reason,
)
from .segment_controls import MODE_MANUAL, MODE_TEXT, SCOPE_ALL, SCOPE_SLICE, SegmentControls
from .segment_jobs import SegmentJobs
from .settings import load_settings, save_settings
from .shortcuts import ACCEPT, CLEAR, SEGMENT, TOGGLE, ViewerShortcuts, shortcuts_text
from .text_width import keep_width

if TYPE_CHECKING:
    import napari

# Milliseconds to wait after the last prompt edit before decoding.
DEBOUNCE_MS = 150

__all__ = ["ClipSamWidget", "MODE_MANUAL", "MODE_TEXT", "NEW_LAYER", "SAM_INPUTS", "SCOPE_ALL", "SCOPE_SLICE"]


class ClipSamWidget(Container):
    """Segment an image layer by concept (text), points and boxes into a Labels layer.

    Scripts drive it with :meth:`set_image`, :meth:`set_concept`, :meth:`set_options`,
    :meth:`set_prompts`, :meth:`segment`, :meth:`wait`, :meth:`accept_preview`,
    :meth:`clear_prompts` and :meth:`use_model`.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        # Not scrollable: napari docks the inner widget, and a magicgui scroll area
        # there is clipped under the dock title (magicgui issue 431).
        super().__init__(scrollable=False)
        self._viewer = napari_viewer
        self._settings = load_settings()
        self._model_fields = ModelFields(self._settings)
        self._model_concepts: list[str] = []  # the loaded model's (the demo model lists its own)
        self._adapters = self._model_fields.adapters  # the training panel fills it in
        self._controls = SegmentControls(self._settings, partial(label_layers.output_choices, napari_viewer),
                                         self._recent_choices)
        self.extend([*self._model_fields.widgets, *self._controls.widgets])
        self.tooltip = f"Shortcuts while this panel is open:\n{shortcuts_text()}"
        keep_width(self.native)
        self._output = OutputChoice(napari_viewer, self._controls.output)

        runner = JobRunner(self._set_status, self._set_busy)
        self.native.destroyed.connect(lambda *_: runner.detach())  # a job may outlive the widget
        self._jobs = SegmentJobs(
            runner, self._model_arguments, self._model_fields.image_size,
            on_result=self._on_result, on_model=self._show_model, set_status=self._set_status,
        )
        self._preview: tuple[SegmentRequest, SegmentResult] | None = None
        self._prompts_version = 0  # counts clears and accepts: older previews are out of date
        self._closed = False  # taken out of its dock: prompt edits no longer segment
        self._shortcuts = ViewerShortcuts(napari_viewer, {
            SEGMENT: self._on_run_clicked, ACCEPT: self._commit_preview, TOGGLE: self._key_toggle,
            CLEAR: lambda _owner: self.clear_prompts(),
        })
        self._prompts = PromptLayers(napari_viewer, self._on_prompts_edited, self._shortcuts.bind_layer)

        from qtpy.QtCore import QTimer

        self._debounce = QTimer(singleShot=True, interval=DEBOUNCE_MS)
        self._debounce.timeout.connect(self._on_prompts_settled)
        self._connect_controls()
        watch_docking(self.native, self._on_docked, self._on_undocked)
        self._controls.update_visibility()

    # ------------------------------------------------------------- scripting
    def set_image(self, layer) -> None:
        """Segment ``layer`` (an Image layer of the viewer, or its name) from now on."""
        if isinstance(layer, str):
            layer = self._viewer.layers[layer]
        self._controls.image.reset_choices()
        self._controls.image.value = layer

    def set_concept(self, text: str) -> None:
        """The concept to segment, e.g. ``"nucleus"``; empty for plain SAM prompting in the manual mode."""
        self._controls.concept.value = text

    def set_options(self, *, instances: bool | None = None, refine: bool | None = None, min_area: int | None = None,
                    replace: bool | None = None, all_slices: bool | None = None, similarity: bool | None = None,
                    output: str | None = None, instance_method: str | None = None, diameter: float | None = None,
                    score_threshold: float | None = None, link_planes: bool | None = None,
                    other_concepts: bool | None = None, **large_image: Any) -> None:
        """Set the output options as the controls do; None leaves one as it is.

        Args:
            instances: one label per object; ``refine`` and ``min_area`` apply only then.
            refine: prompt SAM again at each object (its box and an inner point).
            min_area: drop objects smaller than this many pixels.
            replace: let new labels overwrite existing ones.
            all_slices: segment every plane of a stack (the text-only mode).
            similarity: show the concept's similarity map.
            output: the name of an existing Labels layer (it stays the output whatever the
                image), or ``"New layer"`` (the output follows the image again).
            instance_method, diameter (diameter_unit: "px", "um"), score_threshold, link_planes, other_concepts
                (True: "auto"), augment: see ``nc.segment``. large_image: ``tiles`` (``"auto"``, ``"off"``, ``"custom"``), ``tile_size``,
                ``halo`` (pixels; 0: auto), ``scale`` (0: auto), ``level`` (of a multiscale image), ``visible_only`` (docs/widget.md).
        """
        self._controls.set_options(instances=instances, refine=refine, min_area=min_area, replace=replace,
                                   all_slices=all_slices, similarity=similarity, instance_method=instance_method,
                                   diameter=diameter, score_threshold=score_threshold, link_planes=link_planes,
                                   other_concepts=other_concepts, **large_image)
        if output is not None:
            self._output.choose(output)

    def set_prompts(self, points=None, labels=None, box=None) -> None:
        """Replace the manual prompts of the chosen image and switch to the manual mode; does not segment.

        The positive points layer is left selected, ready for clicks by hand.

        Coordinates are napari data coordinates of the image layer, as a script reads them
        from a Points or Shapes layer: (row, col) pixels land on the plane the viewer shows;
        a stack also takes full coordinates (plane indices first).

        Args:
            points: (N, 2) or (N, D) coordinates.
            labels: (N,) 1 for a positive point, 0 for a negative one; default all positive.
            box: two opposite corners, or a Shapes rectangle's four, each (row, col) or (D,).
        """
        layer = self._controls.chosen_image()
        self._controls.mode.value = MODE_MANUAL
        self._prompts.ensure(layer)
        self._prompts.set(current_plane(self._viewer, layer), points, labels, box)
        self._prompts.activate(POSITIVE)
        self._debounce.stop()

    def segment(self) -> None:
        """Start segmenting as the widget is set up (what Segment does); returns at once, see :meth:`wait`.

        Raises:
            RequestError: (a ValueError) it cannot start: no image, no concept in the
                text-only mode, neither prompts nor concept in the manual mode, an output
                layer of another shape.
        """
        request = self._make_request()
        if request.concept:
            self._remember_concept(request.concept)
        self._jobs.submit(request)

    def wait(self, timeout: float = 600.0) -> Any:
        """Process Qt events until the last :meth:`segment` has finished; returns its result.

        Returns:
            A :class:`PlaneResult` (a :class:`SegmentResult` at full resolution) for one plane (in
            the manual mode, the preview's), or the (*leading, H, W) int32 labels of an "All slices" run.

        Raises:
            The job's error (e.g. ``WeightsUnavailableError``); :class:`StaleResultError` when
            the image, slice or concept changed meanwhile (nothing was written);
            RuntimeError when cancelled or replaced by a newer request; TimeoutError after
            ``timeout`` seconds (the job goes on).
        """
        return self._jobs.wait(timeout)

    def accept_preview(self) -> list[int]:
        """Write the manual mode's preview, as the preview layer shows it (with any painting
        on it), into the output labels (one undo step); then clear the prompts.

        Returns:
            The new label values.
        """
        shown = label_layers.preview_labels(self._viewer)
        if self._preview is None or shown is None:
            raise RuntimeError("No preview to add: segment in the manual mode first.")
        request, _ = self._preview
        reason = self._stale_reason(request)
        if reason is not None:
            raise StaleResultError(f"The preview is out of date ({reason}); update it first.")
        new = self._write(request, [(request.plane, shown)])
        self._reset_prompts()
        self._set_status(f"Added label(s) {new}." if new else "Nothing added: the preview is empty.")
        return new

    def clear_prompts(self) -> None:
        """Empty the prompt layers and drop the preview."""
        self._reset_prompts()
        self._set_status("Prompts cleared.")

    def use_model(self, model) -> None:
        """Use an already loaded :class:`ClipSamModel`, whatever the model fields say (until Load model)."""
        self._jobs.use_model(model)
        self._show_model(model)

    @property
    def model(self):
        """The model the widget segments with; None until one is loaded or given."""
        return self._jobs.model

    @property
    def busy(self) -> bool:
        return self._jobs.busy

    def cancel(self, *_: Any) -> None:
        """Stop the running job at its next stage boundary and drop the queued one; layers stay as they are."""
        self._debounce.stop()
        self._jobs.cancel()

    # -------------------------------------------------------------- controls
    def _connect_controls(self) -> None:
        controls = self._controls
        self._model_fields.load_button.changed.connect(self._on_load_clicked)
        controls.run_button.changed.connect(self._on_run_clicked)
        controls.prompts_button.changed.connect(self._add_prompt_layers)
        controls.commit_button.changed.connect(self._commit_preview)
        controls.cancel_button.changed.connect(self.cancel)
        controls.recent.changed.connect(self._on_recent)
        controls.image.changed.connect(self._output.follow)
        for control in (*self._model_fields.saved_fields, controls.mode):
            control.changed.connect(self._save_settings)

    def _set_status(self, text: str) -> None:
        self._controls.status.value = text

    def _set_busy(self, busy: bool) -> None:
        self._controls.cancel_button.enabled = busy

    def _on_docked(self) -> None:
        self._closed = False
        self._shortcuts.bind()

    def _on_undocked(self) -> None:
        """The dock was closed: unbind the keys, cancel the job; nothing is written after this."""
        self._closed = True
        self._shortcuts.unbind()
        self.cancel()

    def _show_model(self, model) -> None:
        self._model_fields.refresh_choices()  # open_clip is loaded now: its names are free
        self._model_concepts = list(model.concepts)  # offered beside the recent ones
        self._controls.recent.reset_choices()
        demo = " DEMO model: generated scenes only, not for real data." if model.is_demo else ""
        self._set_status(f"Model: SAM {model.sam_name} + CLIP {model.clip_name} ({model.device}, {model.precision}).{demo}")

    def _recent_choices(self, _widget: Any = None) -> list[str]:
        recent = self._settings.recent_concepts
        return ["", *recent, *[c for c in self._model_concepts if c not in recent]]

    def _on_recent(self, value: str) -> None:
        if value:
            self._controls.concept.value = value

    def _save_settings(self, *_: Any) -> None:
        self._model_fields.store(self._settings)
        self._settings.mode = MANUAL if self._controls.manual else TEXT
        save_settings(self._settings)

    def _model_arguments(self) -> dict[str, Any]:
        self._model_fields.store(self._settings)
        return self._settings.model_arguments()

    def _remember_concept(self, concept: str) -> None:
        self._settings.remember_concept(concept)
        self._controls.recent.reset_choices()
        save_settings(self._settings)

    def _notify(self, message: str) -> None:
        """A refusal the user must see even when a job's next stage overwrites the status line."""
        from napari.utils.notifications import show_info

        self._set_status(message)
        show_info(f"napari-clipsam: {message}")

    def _report(self, error: BaseException) -> None:
        from napari.utils.notifications import show_error

        self._set_status(f"Error: {error}")
        show_error(f"napari-clipsam: {error}")

    # ---------------------------------------------------------- buttons, keys
    def _on_run_clicked(self, *_: Any) -> None:
        try:
            self.segment()
        except NothingToSegment as err:  # the user is still placing prompts
            self._set_status(str(err))
        except RequestError as err:
            self._report(err)

    def _on_load_clicked(self, *_: Any) -> None:
        if not self._jobs.load():
            self._notify("A job is running: wait for it (or Cancel it), then load the model.")

    def _add_prompt_layers(self, *_: Any) -> None:
        try:
            layer = self._controls.chosen_image()
        except RequestError as err:
            self._report(err)
            return
        self._controls.mode.value = MODE_MANUAL
        self._prompts.ensure(layer)
        self._prompts.activate(POSITIVE)
        self._set_status("Click to add positive points (T: negative points), or draw a box in the box layer.")

    def _commit_preview(self, *_: Any) -> None:
        try:
            self.accept_preview()
        except RuntimeError as err:  # nothing to add, or out of date
            self._set_status(str(err))
        except (ValueError, KeyError, OSError) as err:
            self._report(err)

    def _key_toggle(self, _owner: Any) -> None:
        image = self._controls.image.value
        if image is not None and self._prompts.image_layer is image and self._prompts.get(POSITIVE) is not None:
            self._set_status(f"Adding {self._prompts.toggle()} points.")
        else:  # the first T: the prompt layers, positive points first
            self._add_prompt_layers()

    def _on_prompts_edited(self, event: Any = None) -> None:
        action = getattr(event, "action", None)
        if action is not None and str(action).lower().split(".")[-1] in {"adding", "removing", "changing"}:
            return  # the 'before' half of napari's paired data events
        if self._controls.manual and not self._closed:
            self._debounce.start()

    def _on_prompts_settled(self) -> None:
        if self._controls.manual and not self._closed:
            self._on_run_clicked()

    # ------------------------------------------------------ requests, results
    def _make_request(self) -> SegmentRequest:
        return self._controls.request(self._viewer, self._prompts, self._prompts_version)

    def _stale_reason(self, request: SegmentRequest) -> str | None:
        return stale_reason(request, self._viewer, self._controls.image.value,
                            normalise_concept(self._controls.concept.value), self._prompts_version)

    def _on_result(self, request: SegmentRequest, result: Any) -> None:
        reason = self._stale_reason(request)
        if reason is not None:
            self._set_status(f"Result dropped: {reason} meanwhile.")
            request.outcome.fail(StaleResultError(self._controls.status.value))
            return
        try:
            self._set_status(self._show_result(request, result))
        except (ValueError, KeyError, OSError) as err:  # e.g. the output layer changed shape meanwhile
            self._report(err)
            request.outcome.fail(err)
            return
        request.outcome.succeed(result)

    def _show_result(self, request: SegmentRequest, result: Any) -> str:
        """Put a result into layers; returns the status line."""
        if request.kind == STACK:
            new = self._write(request, [((), result)])
            return f"{request.concept}: {len(new)} new label(s) in {result[..., 0, 0].size} slices."
        if result.similarity is not None:
            label_layers.show_similarity(self._viewer, request.image_layer, request.concept, result.similarity)
        if request.kind == MANUAL:
            label_layers.show_preview(self._viewer, request.image_layer, result.labels)
            self._preview = (request, result)
            self._controls.commit_button.enabled = True
            return f"Preview updated ({result.summary}). 'Add mask to labels' (C) keeps it."
        new = self._write(request, [(request.plane, result.labels)])
        return f"{request.concept}: {len(new)} new label(s), {result.summary}."

    def _write(self, request: SegmentRequest, results: list) -> list[int]:
        return self._output.write(request.image_layer, results, concept=request.concept,
                                  instances=request.options.instances, replace=request.replace)

    def _reset_prompts(self) -> None:
        """Empty the prompt layers and drop the preview; a preview still being computed is out of date."""
        self._debounce.stop()
        self._prompts_version += 1
        self._prompts.clear()
        self._preview = None
        self._controls.commit_button.enabled = False
        label_layers.remove_preview(self._viewer)
