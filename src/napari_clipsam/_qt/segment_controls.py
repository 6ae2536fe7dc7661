"""The segmentation widget's own controls: what to segment, how, and where the labels go.

They hold no state of their own beyond their values; :class:`SegmentControls` also
reads them as the pipeline needs them (the kind of request, :class:`SegmentOptions`,
the whole :class:`SegmentRequest`).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FloatSpinBox,
    LineEdit,
    PushButton,
    RadioButtons,
    SpinBox,
    create_widget,
)

from ..inference.layers import layer_diameter_px, leading_ndim
from ..inference.pipeline import SegmentOptions
from ..inference.prompts import normalise_concept
from ..inference.rescale import check_diameter_unit
from ..inference.seeds import DEFAULT_SCORE_THRESHOLD
from ..inference.views import augment_from_word
from .label_layers import existing_output
from .large_image_controls import LargeImageControls
from .requests import (
    MANUAL,
    STACK,
    TEXT,
    NothingToSegment,
    RequestError,
    SegmentRequest,
    current_plane,
)
from .settings import WidgetSettings, save_settings
from .text_width import WrappingLabel
from .viewport import visible_region

MODE_TEXT = "Semi-automatic (text only)"
MODE_MANUAL = "Manual (points / box)"
SCOPE_SLICE = "Current slice"
SCOPE_ALL = "All slices"
CHANNEL_ALL = "All (RGB)"
METHOD_SEEDS = "Separate touching objects (seeds)"
METHOD_COMPONENTS = "Connected components (fast)"
# The choices' words in SegmentOptions.instance_method.
INSTANCE_METHODS = {METHOD_SEEDS: "seeds", METHOD_COMPONENTS: "components"}
# The object diameter's units, as SegmentOptions.diameter_unit and the settings name them.
UNIT_PX, UNIT_UM = "px", "µm"
DIAMETER_UNITS = {UNIT_PX: "px", UNIT_UM: "um"}
# The text-only mode's views (SegmentOptions.augment) as the widget names them, with the settings' words.
AUGMENT_CHOICES = [("auto (on for the demo model)", "auto"), ("on: 8 flips and turns", "on"), ("off", "off")]


class SegmentControls:
    """The controls below the model fields, in the order the dock shows them (:attr:`widgets`)."""

    def __init__(self, settings: WidgetSettings, output_choices: Callable[[Any], list[str]],
                 recent_choices: Callable[[Any], list[str]]) -> None:
        self.image = create_widget(label="Image", annotation="napari.layers.Image")
        self.channel = ComboBox(label="Channel", choices=[CHANNEL_ALL, "0", "1", "2"], value=CHANNEL_ALL)
        self.concept = LineEdit(label="Concept")
        self.recent = ComboBox(label="Recent", choices=recent_choices, value="")
        self.mode = RadioButtons(label="Mode", choices=[MODE_TEXT, MODE_MANUAL],
                                 value=MODE_MANUAL if settings.mode == MANUAL else MODE_TEXT)
        self.scope = ComboBox(label="Slices", choices=[SCOPE_SLICE, SCOPE_ALL], value=SCOPE_SLICE)

        self.output = ComboBox(label="Output", choices=output_choices)
        self.instances = CheckBox(text="Separate objects (instances)", value=False)
        self.refine = CheckBox(text="Refine each object", value=False)
        self.refine.tooltip = "Prompt SAM again at each object (its box and an inner point): one more pass per object."
        self.min_area = SpinBox(label="Smallest object (px)", min=0, max=10_000_000, step=10, value=0)
        self.min_area.tooltip = "Objects with fewer pixels are dropped."
        self.instance_method = ComboBox(label="Objects", choices=list(INSTANCE_METHODS), value=METHOD_SEEDS)
        self.instance_method.tooltip = (
            "Seeds: one SAM click per object found in the mask (or per positive point), so touching objects "
            "stay apart. Connected components: each connected region of the mask is one object (fast)."
        )
        self.diameter = FloatSpinBox(label="Object diameter", min=0, max=100_000, step=1, value=0)
        self.diameter.tooltip = ("The expected diameter of one object (of a rod, its length), in the unit below. "
                                 "Separate objects (seeds) use it as the objects' size; with Scale auto it also "
                                 "picks the reading scale, for models that list their concepts' sizes (the demo "
                                 "model). 0 (auto): estimated from the mask.")
        self.diameter.native.setSpecialValueText("auto")  # shown at 0
        self.diameter_unit = ComboBox(label="Diameter unit", choices=list(DIAMETER_UNITS), value=UNIT_PX)
        self.diameter_unit.tooltip = ("px: the image's pixels. µm: micrometres, turned into pixels by the image "
                                      "layer's scale where its units are lengths (as readers of OME files set them, "
                                      "or layer.units = 'um').")
        self.score_threshold = FloatSpinBox(label="Score threshold", min=0.0, max=1.0, step=0.05,
                                            value=DEFAULT_SCORE_THRESHOLD)
        self.score_threshold.tooltip = (
            "Objects SAM is less sure of (predicted IoU times stability, 0 to 1) are dropped; "
            "objects of your own positive points are kept."
        )
        self.link_planes = CheckBox(text="One label per 3-D object", value=True)
        self.link_planes.tooltip = (
            "In a stack, each slice's objects continue the previous slice's they overlap (and each time point's "
            "the previous time point's); off: every object of every slice gets its own label."
        )
        self.other_concepts = CheckBox(text="Other concepts compete", value=True)
        self.other_concepts.tooltip = (
            "Text only: each region of the mask goes to the concept that claims most of it, among the concepts the "
            "model lists (the demo model's four; the published weights list none). One more encoder pass per "
            "other concept."
        )
        self.augment = ComboBox(label="Flips and turns", choices=AUGMENT_CHOICES, value="auto")
        self.augment.tooltip = (
            "Text only: average the mask's logits over the image's 8 flips and quarter turns (8 encoder passes "
            "instead of 1; the demo model's text masks gain 0.01-0.02 IoU). Auto: on for the demo model on an image "
            "read in one pass; off in tiles and for all slices (8 times each one's cost) and for the published "
            "weights, whose encoder pass takes seconds on a CPU."
        )
        self.large = LargeImageControls(settings, lambda: self.image.value)  # tiles, level, visible region
        self._settings = settings
        self._restore(settings)
        self.replace = CheckBox(text="Replace existing labels", value=False)
        self.show_similarity = CheckBox(text="Show similarity map", value=False)

        self.run_button = PushButton(text="Segment")
        self.prompts_button = PushButton(text="Add prompt layers")
        self.prompts_button.tooltip = "Positive points, negative points and a box for the image (T switches points)."
        self.commit_button = PushButton(text="Add mask to labels", enabled=False)
        self.commit_button.tooltip = "Write the preview into the output layer (C)."
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = WrappingLabel(value="")  # long messages (offline paths) must not widen the dock

        for control in (self.mode, self.image, self.scope, self.instances, self.instance_method, self.large.scale):
            control.changed.connect(self.update_visibility)
        for control, _ in self._saved:
            control.changed.connect(self._store)

    @property
    def widgets(self) -> list:
        large = self.large
        return [
            self.image, self.channel, large.level, self.concept, self.recent, self.mode, self.scope,
            large.visible_only, self.other_concepts, self.augment, self.output, self.instances, self.instance_method, self.diameter,
            self.diameter_unit, self.score_threshold, self.link_planes, self.refine, self.min_area, self.replace, self.show_similarity, large.tiles,
            large.tile_size, large.tile_halo, large.scale,
            self.run_button, self.prompts_button, self.commit_button, self.cancel_button, self.status,
        ]

    @property
    def manual(self) -> bool:
        return self.mode.value == MODE_MANUAL

    def kind(self, layer) -> str:
        """What a Segment now asks for: one plane by text or by prompts, or every plane of a stack."""
        if self.manual:
            return MANUAL
        return STACK if leading_ndim(layer) > 0 and self.scope.value == SCOPE_ALL else TEXT

    @property
    def method(self) -> str:
        """The instance method chosen, as :class:`SegmentOptions` names it (``"seeds"``, ``"components"``)."""
        return INSTANCE_METHODS[self.instance_method.value]

    def options(self, layer, kind: str, concept: str | None) -> SegmentOptions:
        """The pipeline options the controls say, for a request of ``kind`` on ``layer``."""
        instances = bool(self.instances.value)
        seeds = instances and self.method == "seeds"
        tile_shape, halo = self.large.tiling()
        return SegmentOptions(
            instances=instances,
            refine=instances and bool(self.refine.value),
            min_area=int(self.min_area.value) if instances else 0,
            channel=None if self.channel.value == CHANNEL_ALL or not layer.rgb else int(self.channel.value),
            with_similarity=bool(self.show_similarity.value) and concept is not None and kind != STACK,
            instance_method=self.method if instances else "seeds",
            diameter=self._diameter_px(layer),
            score_threshold=float(self.score_threshold.value) if seeds else DEFAULT_SCORE_THRESHOLD,
            tile_shape=tile_shape,
            halo=halo,
            scale=self.large.chosen_scale(),
            link_planes=bool(self.link_planes.value),
            other_concepts="auto" if self.other_concepts.value else None,
            augment=augment_from_word(self.augment.value),
        )

    def set_options(self, *, instances: bool | None = None, refine: bool | None = None, min_area: int | None = None,
                    replace: bool | None = None, all_slices: bool | None = None, similarity: bool | None = None,
                    instance_method: str | None = None, diameter: float | None = None,
                    diameter_unit: str | None = None, score_threshold: float | None = None, link_planes: bool | None = None,
                    other_concepts: bool | None = None, augment: str | bool | None = None, **large: Any) -> None:
        """See :meth:`ClipSamWidget.set_options` (the output is the widget's :class:`OutputChoice`).

        ``instance_method`` is ``"seeds"`` or ``"components"``; ``diameter`` 0 means estimated;
        ``diameter_unit`` is ``"px"`` or ``"um"`` (by the image layer's scale and units);
        ``other_concepts``: whether the model's other concepts compete in the text-only mode;
        ``augment``: ``"auto"``, True or False (the text-only logits averaged over 8 views);
        ``large``: the tiles, level and visible region (:meth:`LargeImageControls.set_options`).
        """
        self.large.set_options(**large)
        if instance_method is not None:
            names = {word: choice for choice, word in INSTANCE_METHODS.items()}
            if instance_method not in names:
                raise ValueError(f"instance_method must be one of {', '.join(names)}, got {instance_method!r}.")
            self.instance_method.value = names[instance_method]
        if diameter_unit is not None:
            choices = {word: choice for choice, word in DIAMETER_UNITS.items()}  # the pipeline's words, and its error
            self.diameter_unit.value = choices[check_diameter_unit(diameter_unit)]
        for control, value in ((self.instances, instances), (self.refine, refine), (self.min_area, min_area),
                               (self.replace, replace), (self.show_similarity, similarity),
                               (self.diameter, diameter),
                               (self.score_threshold, score_threshold), (self.link_planes, link_planes),
                               (self.other_concepts, other_concepts),
                               (self.augment, {True: "on", False: "off"}.get(augment, augment))):
            if value is not None:
                control.value = value
        if all_slices is not None:
            self.scope.value = SCOPE_ALL if all_slices else SCOPE_SLICE

    @property
    def _saved(self) -> tuple[tuple[Any, str], ...]:
        """The controls whose values persist, each with its :class:`WidgetSettings` field."""
        return ((self.instances, "instances"), (self.instance_method, "instance_method"), (self.refine, "refine"),
                (self.min_area, "min_area"), (self.diameter, "diameter"), (self.diameter_unit, "diameter_unit"),
                (self.score_threshold, "score_threshold"),
                (self.link_planes, "link_planes"), (self.other_concepts, "other_concepts"), (self.augment, "augment"))

    def _restore(self, settings: WidgetSettings) -> None:
        """The saved objects options; a value the controls refuse (an edited file) keeps the default."""
        for control, name in self._saved:
            value = getattr(settings, name)
            try:
                if control is self.instance_method:
                    value = {word: choice for choice, word in INSTANCE_METHODS.items()}[value]
                elif control is self.diameter:
                    value = float(value)
                control.value = value
            except (KeyError, TypeError, ValueError) as err:
                logging.getLogger(__name__).warning("Ignoring the saved %s %r: %s", name, value, err)

    def _store(self, *_: Any) -> None:
        for control, name in self._saved:
            setattr(self._settings, name, self.method if control is self.instance_method else control.value)
        save_settings(self._settings)

    def chosen_image(self):
        """The image layer chosen; RequestError when there is none."""
        layer = self.image.value
        if layer is None:
            raise RequestError("open an image first (File > Open Sample > CLIP-Guided SAM offers some).")
        return layer

    def request(self, viewer, prompts, prompts_version: int) -> SegmentRequest:
        """What a Segment now asks for, checked before anything runs.

        Args:
            viewer: the napari viewer (its slider positions say the plane).
            prompts: the :class:`PromptLayers` the manual mode reads.
            prompts_version: how often the prompts were cleared or accepted so far.

        Raises:
            RequestError: the request cannot run (no image or concept, 3-D display, an
                output layer of another shape); NothingToSegment for a manual request
                without prompts or concept.
        """
        layer = self.chosen_image()
        concept = normalise_concept(self.concept.value)
        kind = self.kind(layer)
        if kind != MANUAL and concept is None:
            raise RequestError("type a concept, e.g. 'nucleus', for the text-only mode.")
        if leading_ndim(layer) > 0 and viewer.dims.ndisplay != 2:
            raise RequestError("switch the viewer to 2D to segment a slice.")
        try:
            existing_output(viewer, self.output.value, layer)
        except ValueError as err:
            raise RequestError(str(err)) from None
        plane = () if kind == STACK else current_plane(viewer, layer)
        try:
            region = visible_region(viewer, layer) if kind == TEXT and self.large.visible_only.value else None
        except ValueError as err:
            raise RequestError(str(err)) from None
        request = SegmentRequest(kind, layer, layer.data, plane, concept, self.options(layer, kind, concept),
                                 replace=bool(self.replace.value), prompts_version=prompts_version,
                                 level=self.large.chosen_level() if layer.multiscale else 0, region=region)
        if kind == MANUAL:
            ours = prompts.image_layer is layer
            points, point_labels, box = prompts.prompts(plane) if ours else (None, None, None)
            if points is None and box is None and concept is None:
                raise NothingToSegment("Add points or a box (or type a concept) to segment.")
            request.prompts = dict(points=points, point_labels=point_labels, box=box)
        return request

    def _diameter_px(self, layer) -> float | None:
        """The diameter in the image's pixels where it applies (µm: by ``layer``'s scale); None for auto."""
        diameter = float(self.diameter.value) if self._diameter_applies() else 0.0
        if not diameter or self.diameter_unit.value == UNIT_PX:
            return diameter or None
        try:
            return layer_diameter_px(layer, diameter)
        except ValueError as err:
            raise RequestError(str(err)) from None

    def _diameter_applies(self) -> bool:
        """Whether the diameter does anything: it sizes seeded objects and, at Scale auto, picks the scale."""
        return bool(self.instances.value) and self.method == "seeds" or self.large.chosen_scale() == "auto"

    def update_visibility(self, *_: Any) -> None:
        layer = self.image.value
        manual = self.manual
        self.channel.visible = bool(layer is not None and layer.rgb)
        stack = bool(layer is not None and leading_ndim(layer) > 0 and not manual)
        self.scope.visible = stack
        instances = bool(self.instances.value)
        self.refine.visible = self.min_area.visible = self.instance_method.visible = instances
        self.score_threshold.visible = instances and self.method == "seeds"
        self.diameter.visible = self.diameter_unit.visible = self._diameter_applies()
        self.link_planes.visible = instances and stack and self.scope.value == SCOPE_ALL
        self.prompts_button.visible = self.commit_button.visible = manual
        self.other_concepts.visible = self.augment.visible = not manual
        text_slice = not manual and not (stack and self.scope.value == SCOPE_ALL)
        self.large.update_visibility(layer=layer, text_slice=text_slice)
        self.run_button.text = "Update mask" if manual else "Segment"
        self.run_button.tooltip = f"{self.run_button.text} (S)"
