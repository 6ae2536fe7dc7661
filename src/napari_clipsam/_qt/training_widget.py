"""The napari training panel: fine-tune the adapters from Image/Labels layer pairs.

A thin layer over :mod:`napari_clipsam.training`: it builds the dataset from the
chosen layers, runs :func:`~napari_clipsam.iter_train` in napari's ``thread_worker``,
plots the loss and validation IoU, and hands the trained model to the segmentation
widget. Opening it imports no torch (see :mod:`napari_clipsam._qt`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    PushButton,
    SpinBox,
    create_widget,
)

# Light imports only: the training engine (torch) is imported by the job, in a worker.
from .._jobs import iter_load_model
from ..training.config import TrainingConfig
from ..training.data import ConceptDataset, parse_concepts
from ..training.jobs import train_job
from ..training.results import TrainProgress, TrainResult
from ..training.run_files import FileStates, describe_changes, file_states
from .docking import watch_docking
from .jobs import JobRunner
from .plot import TrainingPlot
from .segment_widget import SAM_INPUTS  # the sizes the segmentation widget offers
from .text_width import WrappingLabel, keep_width

if TYPE_CHECKING:
    import napari

MODES = {"Semi-automatic (text only)": "text", "Manual (one object per click / box)": "manual",
         "Both (text only and clicks)": "both"}


class _PairRow(Container):
    """One image layer and the labels layer that annotates it."""

    def __init__(self, on_remove) -> None:
        image = create_widget(label="Image", annotation="napari.layers.Image")
        labels = create_widget(label="Labels", annotation="napari.layers.Labels")
        remove = PushButton(text="x")
        remove.max_width = 28
        super().__init__(widgets=[image, labels, remove], layout="horizontal", labels=False)
        self.image, self.labels, self.remove = image, labels, remove
        remove.changed.connect(lambda *_: on_remove(self))


class TrainingWidget(Container):
    """Fine-tune CLIP-guided SAM on annotated layers, watch it learn, and use the result."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        # Not scrollable: napari docks the inner widget, and a magicgui scroll area
        # there is clipped under the dock title (magicgui issue 431).
        super().__init__(scrollable=False)
        self._viewer = napari_viewer
        self._pairs = Container(widgets=[], labels=False)
        self._add_pair_button = PushButton(text="Add image / labels pair")
        self._concepts = LineEdit(label="Concepts", value="")
        self._concepts.tooltip = "One concept for all labels ('nucleus'), or per value: '1=nucleus, 2=mitochondria'."
        self._detect_button = PushButton(text="List label values")
        self._mode = ComboBox(label="Used in mode", choices=list(MODES), value=next(iter(MODES)))
        self._steps = SpinBox(label="Steps", min=1, max=100_000, value=200)
        self._learning_rate = FloatSpinBox(label="Learning rate", min=1e-7, max=1e-1, step=1e-5, value=5e-5)
        self._learning_rate.native.setDecimals(7)
        self._batch_size = SpinBox(label="Batch size", min=1, max=16, value=1)
        self._val_fraction = FloatSpinBox(label="Validation fraction", min=0.0, max=0.9, step=0.05, value=0.2)
        self._augment = CheckBox(text="Augment (flips, rotations, crops, intensity)", value=True)
        # "auto" here is 512 on a CPU (a step several times cheaper), SAM's own elsewhere.
        self._sam_input = ComboBox(label="SAM input", choices=SAM_INPUTS, value="auto")
        self._sam_input.tooltip = (
            "Side of the image SAM sees while training, in pixels; segmentation with the saved adapters "
            "uses the same. auto: 512 on a CPU (a step is about 4x cheaper than at 1024), 1024 on a GPU."
        )
        self._train_clip = CheckBox(text="Also train CLIP's attention (slower, more memory)", value=False)
        self._train_clip.tooltip = "Co-trains CLIP's vision attention at a low learning rate (1e-7), as in the method."
        self._output = FileEdit(label="Save adapters to", mode="w", filter="*.safetensors")
        self._overwrite = CheckBox(text="Replace an existing adapters file", value=False)
        self._train_button = PushButton(text="Train")
        self._cancel_button = PushButton(text="Cancel", enabled=False)
        self._use_button = PushButton(text="Use these adapters for segmentation", enabled=False)
        self._status = WrappingLabel(value="Add image / labels pairs, name the concepts, then Train.")
        self._result_label = WrappingLabel(value="")
        self._plot = TrainingPlot(napari_viewer)
        self.extend([
            self._pairs, self._add_pair_button, self._concepts, self._detect_button, self._mode,
            self._steps, self._learning_rate, self._batch_size, self._val_fraction, self._augment,
            self._sam_input, self._train_clip, self._output, self._overwrite,
            self._train_button, self._cancel_button, self._status, self._result_label,
        ])
        self.native.layout().addWidget(self._plot)
        self.append(self._use_button)
        keep_width(self.native)

        self._base_model = None
        self._model = None
        self._runner = runner = JobRunner(self._set_status, self._set_busy)
        self.native.destroyed.connect(lambda *_: runner.detach())  # training may outlive the panel
        watch_docking(self.native, lambda: None, self.cancel)  # a closed panel trains no more
        self._result: TrainResult | None = None
        # The run under way: its output's files before it started, how far it got, whether Cancel was pressed.
        self._files_before: FileStates = {}
        self._output_path: Path | None = None
        self._last_step: tuple[int, int] | None = None
        self._cancel_asked = False

        self._add_pair_button.changed.connect(lambda *_: self.add_pair())
        self._detect_button.changed.connect(self._list_label_values)
        self._train_button.changed.connect(self._on_train_clicked)
        self._cancel_button.changed.connect(self.cancel)
        self._use_button.changed.connect(self._use_adapters)
        self.add_pair()

    # ------------------------------------------------------------------ public
    def use_base_model(self, model) -> None:
        """Train this already loaded model (its weights change in place) instead of loading one."""
        self._base_model = model

    def add_pair(self, image_layer=None, labels_layer=None) -> _PairRow:
        row = _PairRow(self._remove_pair)
        self._pairs.append(row)
        keep_width(row.native)
        row.reset_choices()
        if image_layer is not None:
            row.image.value = image_layer
        if labels_layer is not None:
            row.labels.value = labels_layer
        return row

    @property
    def busy(self) -> bool:
        return self._runner.busy

    def cancel(self, *_: Any) -> None:
        """Stop training at the next step; the status then says which files the run left."""
        if self._runner.busy:
            self._cancel_asked = True
            self._runner.cancel()

    def _set_status(self, text: str) -> None:
        self._status.value = text

    def _set_busy(self, busy: bool) -> None:
        self._train_button.enabled = not busy
        self._cancel_button.enabled = busy

    # ------------------------------------------------------------- controls
    def _remove_pair(self, row: _PairRow) -> None:
        if len(self._pairs) > 1:
            self._pairs.remove(row)

    def _rows(self) -> list[_PairRow]:
        return list(self._pairs)

    def _list_label_values(self, *_: Any) -> None:
        values: set[int] = set()
        for row in self._rows():
            if row.labels.value is not None:
                values |= {int(v) for v in np.unique(np.asarray(row.labels.value.data)) if v != 0}
        if not values:
            self._status.value = "The chosen labels layers are empty."
            return
        if not self._concepts.value.strip():
            self._concepts.value = ", ".join(f"{v}=" for v in sorted(values))
        self._status.value = f"Label values present: {sorted(values)}. Name a concept for each."

    def _dataset(self) -> ConceptDataset:
        concepts = parse_concepts(self._concepts.value)
        items, names = [], []
        for row in self._rows():
            image_layer, labels_layer = row.image.value, row.labels.value
            if image_layer is None or labels_layer is None:
                raise ValueError("Choose an image and a labels layer in every pair (or remove the pair).")
            image, labels = np.asarray(image_layer.data), np.asarray(labels_layer.data)
            spatial = image.shape[:-1] if image_layer.rgb else image.shape
            if spatial != labels.shape:
                raise ValueError(
                    f"'{labels_layer.name}' has shape {labels.shape} but '{image_layer.name}' has {spatial}."
                )
            for plane in np.ndindex(*labels.shape[:-2]):  # every slice of a stack; () for 2-D
                items.append((image[plane], labels[plane], concepts))
                names.append(f"Labels layer '{labels_layer.name}'" + (f", slice {plane}" if plane else ""))
        dataset = ConceptDataset.from_arrays(items, names=names)
        if len(dataset) == 0:
            raise ValueError("The labels layers contain none of the label values named in Concepts.")
        return dataset

    def _on_train_clicked(self, *_: Any) -> None:
        from napari.utils.notifications import show_error, show_info

        if self._runner.busy:
            message = "Training is under way: Cancel it first to start another run."
            show_info(f"napari-clipsam: {message}")
            self._status.value = message
            return
        try:
            dataset = self._dataset()
            output = _output_path(self._output.value)
            if output is not None and output.exists() and not self._overwrite.value:
                raise ValueError(
                    f"{output} exists. Choose another file name, or tick 'Replace an existing adapters file'."
                )
            train_set, val_set = dataset.split(self._val_fraction.value, seed=0)
            config = TrainingConfig(
                mode=MODES[self._mode.value], steps=self._steps.value, batch_size=self._batch_size.value,
                learning_rate=self._learning_rate.value, augment=self._augment.value,
                eval_every=max(1, self._steps.value // 8),
            )
        except ValueError as err:
            show_error(f"napari-clipsam: {err}")
            self._status.value = str(err)
            return
        self._plot.reset(config.steps)
        val_set = val_set if len(val_set) else None
        self._files_before, self._output_path = file_states(output), output
        self._last_step, self._cancel_asked = None, False
        if self._base_model is not None:
            self._start_training(self._base_model, train_set, val_set, config, output)
            return
        loaded = []  # the model, once loaded

        def train_when_loaded() -> None:  # runs when the loading worker has finished, whatever happened
            if loaded:
                self._start_training(loaded[0], train_set, val_set, config, output)

        self._runner.start(
            "Loading model", iter_load_model, kwargs=self._model_arguments(), on_result=loaded.append,
            after=train_when_loaded, on_cancelled=self._cancelled_status, on_error=self._on_error,
        )

    def _model_arguments(self) -> dict[str, Any]:
        """The segmentation widget's model settings (remembered between sessions), without its adapters:
        training starts from the base model."""
        from .settings import load_settings

        return dict(load_settings().model_arguments(), adapters=None)

    def _start_training(self, model, train_set, val_set, config: TrainingConfig, output: Path | None) -> None:
        config = dataclasses.replace(config, image_size=self._training_size(model))
        model.set_clip_attention_trainable(self._train_clip.value)
        self._model = model
        self._result = None
        self._use_button.enabled = False
        # A run that finished before a Cancel reached it has saved its file: report it as finished.
        self._runner.start(
            "Training", train_job, args=(model, train_set, val_set, config, output),
            kwargs=dict(replace=bool(self._overwrite.value)), on_result=self._on_result, on_event=self._on_event,
            on_cancelled=self._cancelled_status, on_error=self._on_error, keep_late_result=True,
        )
        self._status.value = (
            f"Training on {len(train_set)} samples, validating on {len(val_set or [])}, "
            f"SAM input {config.image_size or model.image_size}..."
        )

    def _training_size(self, model) -> int | None:
        """The SAM input side to train at, None for the model's own."""
        choice = self._sam_input.value
        if choice == "auto":
            size = min(512, model.image_size) if model.device.type == "cpu" else model.image_size
        else:
            size = int(choice)
        return None if size == model.image_size else size

    def _on_event(self, event: TrainProgress) -> None:
        self._last_step = (event.step, event.total)
        if event.stage == "training":
            self._plot.add_loss(event.step, event.loss)
            self._status.value = f"Step {event.step}/{event.total}: loss {event.loss:.3f}, lr {event.learning_rate:.2e}"
        elif event.validation is not None:
            self._plot.add_validation(event.step, event.validation.iou)
            self._status.value = f"Step {event.step}: validation IoU {event.validation.iou:.3f}"
        elif event.stage == "saving":
            self._status.value = f"Saving the adapters to {self._output_path}..."
        else:
            self._status.value = event.stage

    def _on_result(self, result: TrainResult) -> None:
        self._result = result
        self._use_button.enabled = True
        lines = []
        if result.initial is not None and result.best is not None:
            lines.append(f"Validation IoU: {result.initial.iou:.3f} before, {result.best.iou:.3f} after "
                         f"(best at step {result.best_step}).")
            for concept, scores in result.best.per_concept.items():
                before = result.initial.per_concept.get(concept, {}).get("iou", float("nan"))
                lines.append(f"  {concept}: {before:.3f} -> {scores['iou']:.3f}")
        if result.stopped_early:
            lines.append("Stopped early: validation IoU stopped improving.")
        lines.append(f"Saved to {result.output}." if result.output else "Not saved (no file chosen).")
        others = {path: state for path, state in file_states(self._output_path).items() if path != result.output}
        beside = describe_changes({p: s for p, s in self._files_before.items() if p != result.output}, others)
        if beside:
            lines.append(f"Beside it, {beside}.")
        self._result_label.value = "\n".join(lines)
        self._status.value = ("The Cancel came after the last step: training finished." if self._cancel_asked
                              else "Training finished.")

    def _run_files(self) -> str:
        """What the run did to the files named after its output, as one sentence."""
        changes = describe_changes(self._files_before, file_states(self._output_path))
        return f"Files {changes}." if changes else "No file was changed."

    def _cancelled_status(self) -> str:
        at = f" at step {self._last_step[0]} of {self._last_step[1]}" if self._last_step else ""
        return f"Cancelled{at}. {self._run_files()}"

    def _on_error(self, error: BaseException) -> None:
        self._status.value = f"Error: {error} {self._run_files()}"

    def _use_adapters(self, *_: Any) -> None:
        """Give the trained model to the segmentation widget (opening it if needed)."""
        if self._model is None or self._result is None or self._runner.busy:
            self._status.value = ("Wait for the training to finish." if self._runner.busy
                                  else "Train first: there are no trained adapters to use yet.")
            return
        _, segmentation = self._viewer.window.add_plugin_dock_widget("napari-clipsam", "Segment by concept")
        segmentation.use_model(self._model)
        if self._result.output is not None:
            segmentation._adapters.value = str(self._result.output)
        self._status.value = "The segmentation widget now uses the trained adapters."


def _output_path(value: Any) -> Path | None:
    text = str(value) if value is not None else ""
    if text in {"", "."}:
        return None
    path = Path(text)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; choose a file name ending in .safetensors.")
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    return path

