"""The training panel, with the tiny model, under pytest-qt."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

import napari_clipsam as nc
from napari_clipsam._qt.plot import SERIES_COLOURS, TrainingPlot
from napari_clipsam._qt.segment_widget import ClipSamWidget
from napari_clipsam._qt.training_widget import TrainingWidget
from tests.helpers import dock_in_fresh_process, load_tiny, two_kinds_image

TIMEOUT_MS = 120_000


def _tiny():
    torch.manual_seed(0)
    return load_tiny()


@pytest.fixture
def panel(make_napari_viewer):
    viewer = make_napari_viewer()
    for seed in range(3):
        image, labels = two_kinds_image(seed)
        viewer.add_image(image, name=f"image {seed}")
        viewer.add_labels(labels, name=f"labels {seed}")
    _, panel = viewer.window.add_plugin_dock_widget("napari-clipsam", "Train adapters")
    assert isinstance(panel, TrainingWidget)
    first = list(panel._pairs)[0]
    first.image.value, first.labels.value = viewer.layers["image 0"], viewer.layers["labels 0"]
    for seed in (1, 2):
        panel.add_pair(viewer.layers[f"image {seed}"], viewer.layers[f"labels {seed}"])
    panel.use_base_model(_tiny())
    return viewer, panel


def test_panel_trains_saves_and_hands_over_the_adapters(qtbot, panel, tmp_path):
    viewer, panel = panel
    panel._list_label_values()
    assert panel._concepts.value == "1=, 2="
    panel._concepts.value = "1=disc, 2=square"
    panel._steps.value = 6
    panel._learning_rate.value = 1e-3
    panel._val_fraction.value = 0.34
    output = tmp_path / "trained.safetensors"
    panel._output.value = str(output)
    panel._on_train_clicked()
    assert panel.busy
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)
    assert output.is_file()
    # The plot shows this run: every step's loss, and the validation IoU before and after.
    result, plot = panel._result, panel._plot
    assert result.steps_run >= 1
    np.testing.assert_array_equal(plot.loss_line.get_xdata(), np.arange(1, result.steps_run + 1))
    np.testing.assert_allclose(plot.loss_line.get_ydata(), result.losses)
    assert plot.iou_points.get_xdata()[0] == 0 and plot.iou_points.get_ydata()[0] == pytest.approx(result.initial.iou)
    assert result.best.iou in list(plot.iou_points.get_ydata())
    assert "before" in panel._result_label.value and "disc" in panel._result_label.value
    assert panel._use_button.enabled

    panel._use_adapters()
    _, segmentation = viewer.window.add_plugin_dock_widget("napari-clipsam", "Segment by concept")
    assert isinstance(segmentation, ClipSamWidget)
    assert segmentation.model is panel._model
    assert str(segmentation._adapters.value) == str(output)


def test_panel_sam_input_and_clip_co_training_reach_the_saved_file(qtbot, panel, tmp_path):
    viewer, panel = panel
    assert panel._sam_input.value == "auto" and panel._training_size(panel._base_model) is None  # tiny: 256 < 512
    panel._concepts.value = "1=disc, 2=square"
    panel._steps.value = 1
    panel._val_fraction.value = 0.0
    panel._sam_input.value = "512"
    panel._train_clip.value = True
    output = tmp_path / "co.safetensors"
    panel._output.value = str(output)
    panel._on_train_clicked()
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)
    metadata = nc.read_adapters_metadata(output)
    assert metadata["training_image_size"] == "512"
    assert json.loads(metadata["config"])["train_clip_attention"] is True
    assert panel._model.preferred_image_size == 512


def test_cancelled_training_keeps_the_previous_file(qtbot, panel, tmp_path):
    viewer, panel = panel
    output = tmp_path / "trained.safetensors"
    _tiny().save_adapters(output, concepts=["old"])
    before = output.read_bytes()
    panel._concepts.value = "1=disc, 2=square"
    panel._steps.value = 500
    panel._output.value = str(output)
    panel._overwrite.value = True  # replacing is allowed, but only by a finished run
    panel._on_train_clicked()
    qtbot.waitUntil(lambda: len(panel._plot.losses) >= 2, timeout=TIMEOUT_MS)
    panel.cancel()
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)
    assert output.read_bytes() == before
    # The engine removes the training state a cancelled run wrote: the panel says what is on disk.
    assert panel._status.value.startswith("Cancelled at step ")
    assert panel._status.value.endswith("No file was changed.")
    assert [path.name for path in tmp_path.iterdir()] == [output.name]
    assert not panel._use_button.enabled


def test_bad_input_is_reported_not_raised(qtbot, panel, monkeypatch, tmp_path):
    viewer, panel = panel
    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    panel._concepts.value = "1=disc, x=square"
    panel._on_train_clicked()
    assert messages and "Cannot read" in messages[0]
    panel._concepts.value = "7=absent"
    panel._on_train_clicked()
    assert "none of the label values" in messages[-1]
    # An existing adapters file is not replaced unless asked.
    existing = tmp_path / "mine.safetensors"
    existing.write_bytes(b"trained for weeks")
    panel._concepts.value = "1=disc"
    panel._output.value = str(existing)
    panel._on_train_clicked()
    assert "exists" in messages[-1] and "Replace" in messages[-1]
    assert existing.read_bytes() == b"trained for weeks"
    assert not panel.busy


def test_stack_layers_give_one_sample_per_annotated_slice(make_napari_viewer):
    viewer = make_napari_viewer()
    images, labels = zip(*(two_kinds_image(seed) for seed in range(3)))
    stack_labels = np.stack(labels)
    stack_labels[1] = 0  # an unannotated slice
    viewer.add_image(np.stack(images), name="stack")
    viewer.add_labels(stack_labels, name="stack labels")
    panel = TrainingWidget(viewer)
    viewer.window.add_dock_widget(panel)
    row = list(panel._pairs)[0]
    row.reset_choices()
    row.image.value, row.labels.value = viewer.layers["stack"], viewer.layers["stack labels"]
    panel._concepts.value = "object"
    dataset = panel._dataset()
    assert len(dataset) == 2


def _rgba(colour) -> tuple:
    from matplotlib.colors import to_rgba

    return tuple(np.round(to_rgba(colour), 4))


def test_plot_draws_the_data_on_labelled_axes_with_the_legend_clear_of_them(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    plot = TrainingPlot(viewer)
    qtbot.addWidget(plot)
    plot.resize(360, 240)
    plot.reset(20)
    for step, loss in enumerate([1.8, 1.2, 0.9, 0.7], start=1):
        plot.add_loss(step, loss)
    plot.add_validation(0, 0.12)
    plot.add_validation(4, 0.55)
    plot.draw()

    np.testing.assert_array_equal(plot.loss_line.get_xdata(), [1, 2, 3, 4])
    np.testing.assert_allclose(plot.loss_line.get_ydata(), [1.8, 1.2, 0.9, 0.7])
    np.testing.assert_array_equal(plot.iou_points.get_xdata(), [0, 4])
    np.testing.assert_allclose(plot.iou_points.get_ydata(), [0.12, 0.55])
    assert plot.loss_axes.get_xlabel() == "step"
    assert plot.loss_axes.get_ylabel() == "training loss" and plot.iou_axes.get_ylabel() == "validation IoU"
    assert plot.loss_axes.get_xlim() == (0, 20) and plot.iou_axes.get_ylim() == (0, 1)
    bottom, top = plot.loss_axes.get_ylim()
    assert bottom == 0 and top >= 1.8
    # Both axes carry values.
    assert [t.get_text() for t in plot.iou_axes.get_yticklabels()][-1] == "1.0"
    assert all(t.get_text() for t in plot.loss_axes.get_xticklabels())
    assert [text.get_text() for text in plot.legend.get_texts()] == ["training loss", "validation IoU"]
    renderer = plot.figure.canvas.get_renderer()
    assert not plot.legend.get_window_extent(renderer).overlaps(plot.loss_axes.get_window_extent(renderer))

    plot.reset(5)
    assert not plot.losses and not plot.validation and len(plot.loss_line.get_xdata()) == 0


def test_plot_follows_the_viewer_theme(make_napari_viewer, qtbot):
    from napari.utils.theme import get_theme

    viewer = make_napari_viewer()
    viewer.theme = "dark"
    plot = TrainingPlot(viewer)
    qtbot.addWidget(plot)
    for name in ("light", "dark"):
        viewer.theme = name
        theme = get_theme(name)
        assert _rgba(plot.figure.get_facecolor()) == _rgba(theme.background.as_hex())
        assert _rgba(plot.loss_axes.get_facecolor()) == _rgba(theme.background.as_hex())
        text = _rgba(theme.text.as_hex())
        assert _rgba(plot.loss_axes.xaxis.label.get_color()) == text
        assert _rgba(plot.legend.get_texts()[0].get_color()) == text
        assert _rgba(plot.loss_axes.spines["bottom"].get_edgecolor()) == text
        assert all(_rgba(t.get_color()) == text for t in plot.loss_axes.get_xticklabels())
        loss_colour, iou_colour = (_rgba(c) for c in SERIES_COLOURS[theme.type])
        assert _rgba(plot.loss_line.get_color()) == loss_colour and _rgba(plot.iou_points.get_color()) == iou_colour
        assert [_rgba(h.get_color()) for h in plot.legend.legend_handles] == [loss_colour, iou_colour]
        plot.draw()
    assert get_theme("light").background != get_theme("dark").background  # the test means something


def test_opening_the_panel_imports_no_model_code():
    """The panel opens on napari's GUI thread; torch's stack loads only in its jobs' worker."""
    assert dock_in_fresh_process("Train adapters") == ("TrainingWidget", [])


def test_a_deleted_plot_no_longer_follows_the_theme(make_napari_viewer, qtbot):
    from qtpy.QtCore import QEvent
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer()
    plot = TrainingPlot(viewer)
    before = len(viewer.events.theme.callbacks)
    plot.deleteLater()
    QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    assert len(viewer.events.theme.callbacks) == before - 1
    viewer.theme = "light"  # would draw on the deleted canvas, were it still connected


class _FakeTraining:
    """Stands in for ``train_job``: writes the resumable state in step 2 and waits there for
    ``proceed``; the adapters file after a ``"saving"`` event, once ``release`` is set. Tests
    decide when each happens (events, not durations)."""

    def __init__(self, monkeypatch, removes_its_state_when_closed: bool = True) -> None:
        import threading

        self.at_step_2, self.proceed = threading.Event(), threading.Event()
        self.saving, self.release = threading.Event(), threading.Event()
        self.closed_in: list = []
        self._removes = removes_its_state_when_closed
        monkeypatch.setattr("napari_clipsam._qt.training_widget.train_job", self)

    def __call__(self, model, train_set, val_set=None, config=None, output=None, resume=False, **options):
        import threading

        from napari_clipsam.training.results import TrainProgress, TrainResult

        state = output.with_name(output.name + ".resume.pt")
        try:
            for step in (1, 2, 3):
                if step == 2:
                    state.write_bytes(b"state")
                    self.at_step_2.set()
                    assert self.proceed.wait(TIMEOUT_MS / 1000)
                yield TrainProgress("training", step, 3, 1.0 / step, 1e-4)
            yield TrainProgress("saving", 3, 3)
            self.saving.set()
            assert self.release.wait(TIMEOUT_MS / 1000)
            output.write_bytes(b"adapters")
            state.unlink()
            return TrainResult(None, None, 3, 3, False, [1.0, 0.5, 0.33], output)
        except GeneratorExit:
            self.closed_in.append(threading.current_thread())
            if self._removes:
                state.unlink(missing_ok=True)
            raise


def _start(panel, output):
    panel._concepts.value = "1=disc, 2=square"
    panel._output.value = str(output)
    panel._on_train_clicked()
    assert panel.busy


@pytest.mark.parametrize("removes", [True, False])
def test_cancel_says_which_files_the_run_left(qtbot, panel, tmp_path, monkeypatch, removes):
    """The status once said nothing changed while a .resume.pt stayed behind."""
    viewer, panel = panel
    fake = _FakeTraining(monkeypatch, removes_its_state_when_closed=removes)
    output = tmp_path / "trained.safetensors"
    _start(panel, output)
    assert fake.at_step_2.wait(TIMEOUT_MS / 1000)
    panel._cancel_button.changed.emit(True)
    fake.proceed.set()
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)
    assert fake.closed_in and fake.closed_in[0] is not threading.main_thread()
    assert not output.exists()
    if removes:
        assert panel._status.value == "Cancelled at step 2 of 3. No file was changed."
    else:
        assert panel._status.value == "Cancelled at step 2 of 3. Files written and kept: trained.safetensors.resume.pt."
    assert not panel._use_button.enabled


def test_a_cancel_during_the_final_save_reports_the_saved_file(qtbot, panel, tmp_path, monkeypatch):
    """A Cancel that arrives while the file is being written: the file is there, and the panel says so."""
    viewer, panel = panel
    fake = _FakeTraining(monkeypatch)
    output = tmp_path / "trained.safetensors"
    fake.proceed.set()
    _start(panel, output)
    assert fake.saving.wait(TIMEOUT_MS / 1000)
    panel.cancel()
    fake.release.set()
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)
    assert output.read_bytes() == b"adapters" and not fake.closed_in
    assert panel._status.value == "The Cancel came after the last step: training finished."
    assert f"Saved to {output}." in panel._result_label.value
    assert panel._use_button.enabled


def test_every_button_while_training(qtbot, panel, tmp_path, monkeypatch):
    viewer, panel = panel
    notices = []
    monkeypatch.setattr("napari.utils.notifications.show_info", notices.append)
    fake = _FakeTraining(monkeypatch)
    _start(panel, tmp_path / "trained.safetensors")
    assert fake.at_step_2.wait(TIMEOUT_MS / 1000)
    panel._train_button.changed.emit(True)  # disabled while training, but a script can still press it
    assert notices and "Cancel it first" in notices[0]
    panel._use_button.changed.emit(True)
    assert "Wait for the training" in panel._status.value
    for button in (panel._add_pair_button, panel._detect_button, panel._cancel_button):
        button.changed.emit(True)
    fake.proceed.set()
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)
    assert fake.closed_in and panel._status.value == "Cancelled at step 2 of 3. No file was changed."


def test_closing_the_panel_dock_cancels_training(qtbot, panel, tmp_path, monkeypatch):
    viewer, panel = panel
    fake = _FakeTraining(monkeypatch)
    output = tmp_path / "trained.safetensors"
    _start(panel, output)
    assert fake.at_step_2.wait(TIMEOUT_MS / 1000)
    viewer.window.remove_dock_widget(panel.native)  # the dock's x
    fake.proceed.set()
    fake.release.set()
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)
    assert fake.closed_in and list(tmp_path.iterdir()) == []
    assert panel._status.value.startswith("Cancelled at step 2 of 3.")


def test_closing_napari_mid_training_stops_it_quietly(qtbot, panel, tmp_path, monkeypatch):
    """No handler reaches the deleted panel (an exception in napari's event loop fails the test),
    the run is closed in its worker, and it leaves no file."""
    viewer, panel = panel
    fake = _FakeTraining(monkeypatch)
    _start(panel, tmp_path / "trained.safetensors")
    assert fake.at_step_2.wait(TIMEOUT_MS / 1000)
    runner = panel._runner
    with qtbot.waitSignal(panel.native.destroyed, timeout=TIMEOUT_MS):
        viewer.close()
    fake.proceed.set()
    fake.release.set()
    qtbot.waitUntil(lambda: not runner.busy, timeout=TIMEOUT_MS)
    assert fake.closed_in and fake.closed_in[0] is not threading.main_thread()
    assert list(tmp_path.iterdir()) == []


def test_long_text_never_widens_the_panel(qtbot, panel, tmp_path):
    from qtpy.QtWidgets import QApplication

    viewer, panel = panel
    viewer.window.show()  # sizes of hidden widgets are not kept up to date

    def widths() -> tuple[int, int]:
        QApplication.processEvents()  # Qt lays out again on a posted event
        return panel.native.minimumSizeHint().width(), panel.native.parent().minimumSizeHint().width()

    before = widths()
    long = "mitochondrion" * 150
    image, labels = two_kinds_image(0)
    panel.add_pair(viewer.add_image(image, name=f"image {long}"), viewer.add_labels(labels, name=f"labels {long}"))
    panel._concepts.value = f"1={long}"
    panel._output.value = str(tmp_path / f"{long}.safetensors")
    panel._status.value = f"Error: cannot write {tmp_path / long}"
    panel._result_label.value = f"  {long}: 0.100 -> 0.500"
    assert widths() == before

