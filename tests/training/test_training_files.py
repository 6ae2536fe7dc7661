"""What training writes, and what it never writes: divergence, cancel, resume states, replacing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_clipsam.training.engine as engine
from napari_clipsam.errors import (
    CorruptFileError,
    OutputExistsError,
    TrainingDivergedError,
    UnsafeCheckpointError,
)
from napari_clipsam.training.config import TrainingConfig
from napari_clipsam.training.data import ConceptDataset
from napari_clipsam.training.engine import iter_train, resume_path, train
from napari_clipsam.training.results import EvaluationReport, TrainProgress
from napari_clipsam.weights.adapters_file import read_adapters_tensors
from tests.helpers import CodeOnUnpickle, load_tiny, two_kinds_image

MAPPING = {1: "disc", 2: "square"}
# Small and quick: SAM at its smallest input, no augmentation.
QUICK = dict(image_size=64, augment=False, patience=0)


def _model():
    torch.manual_seed(0)
    return load_tiny()


@pytest.fixture(scope="module")
def data():
    train_set = ConceptDataset.from_arrays([(*two_kinds_image(seed, size=64), MAPPING) for seed in range(2)])
    val_set = ConceptDataset.from_arrays([(*two_kinds_image(100, size=64), "object")])
    return train_set, val_set


def _trainable(model):
    return {name: p.detach().clone() for name, p in model.trainable_parameters()}


def _leftovers(folder, *keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def _drain(job):
    events = []
    while True:
        try:
            events.append(next(job))
        except StopIteration as stop:
            return events, stop.value


@pytest.fixture
def previous(tmp_path):
    """An adapters file from an earlier training, at the output path."""
    path = _model().save_adapters(tmp_path / "adapters.safetensors", concepts=["old"])
    return path, path.read_bytes()


# ------------------------------------------------------------------ divergence
def test_a_huge_learning_rate_stops_naming_the_step_and_saves_nothing(data, previous, tmp_path):
    output, before = previous
    model = _model()
    weights = _trainable(model)
    config = TrainingConfig(steps=20, eval_every=1, learning_rate=1e6, **QUICK)
    with pytest.raises(TrainingDivergedError, match=r"diverged at step \d+: the (loss|gradients|weight)") as error:
        train(model, data[0], None, config, output=output, replace=True)
    assert "Nothing was saved" in str(error.value) and f"{output} was left as it was" in str(error.value)
    assert output.read_bytes() == before
    assert _leftovers(tmp_path, output.name) == []  # no resume state, no temporary
    # The model is not left broken: it holds the weights it had when the run began.
    assert all(torch.equal(p, weights[n]) for n, p in model.trainable_parameters())


def _fake_validation(scores):
    """Validation that reports ``scores[step]`` without segmenting (a validated improvement, made to order)."""
    def validate(model, val_set, config, step):
        report = EvaluationReport({"object": {"iou": scores[step], "dice": scores[step], "count": 1}},
                                  scores[step], scores[step], scores[step])
        yield TrainProgress("validated", step, config.steps, validation=report)
        return report
    return validate


def test_divergence_after_an_improvement_saves_the_best_validated_state(data, previous, monkeypatch):
    output, _ = previous
    monkeypatch.setattr(engine, "_validate", _fake_validation({0: 0.1, 1: 0.3, 2: 0.5, 3: 0.4}))
    real_step, seen = engine._train_step, {}

    def step_then_break(model, *args):
        loss = real_step(model, *args)
        seen[len(seen) + 1] = _trainable(model)
        if len(seen) == 4:  # a weight goes bad at step 4
            with torch.no_grad():
                next(p for _, p in model.trainable_parameters()).view(-1)[0] = float("inf")
        return loss

    monkeypatch.setattr(engine, "_train_step", step_then_break)
    model = _model()
    config = TrainingConfig(steps=10, eval_every=1, learning_rate=1e-3, **QUICK)
    with pytest.raises(TrainingDivergedError, match="step 4: the weight .* NaN or infinite") as error:
        train(model, *data, config, output=output, replace=True)
    assert "best validated state (step 2, validation IoU 0.500)" in str(error.value)
    assert f"saved to {output}" in str(error.value)
    saved = read_adapters_tensors(output, {n: p.shape for n, p in model.trainable_parameters()})
    for name, value in seen[2].items():
        assert torch.equal(saved[name], value) and torch.equal(model.get_parameter(name), value), name


# ------------------------------------------------------------------ cancel and the final save
def test_cancel_removes_the_resume_state_it_wrote_and_keeps_the_previous_file(data, previous, tmp_path):
    output, before = previous
    job = iter_train(_model(), data[0], None, TrainingConfig(steps=50, eval_every=1, **QUICK), output=output,
                     replace=True)
    for _ in range(3):
        next(job)
    assert resume_path(output).is_file()  # written while the run goes on, for a killed process
    job.close()  # the panel's Cancel
    assert output.read_bytes() == before
    assert _leftovers(tmp_path, output.name) == []


def test_a_cancel_at_the_saving_event_writes_nothing_and_past_it_the_save_completes(data, tmp_path):
    output = tmp_path / "new.safetensors"
    config = TrainingConfig(steps=2, eval_every=1, **QUICK)
    job = iter_train(_model(), data[0], None, config, output=output)
    events = [next(job) for _ in range(3)]
    assert [e.stage for e in events] == ["training", "training", "saving"]
    job.close()
    assert _leftovers(tmp_path) == []
    job = iter_train(_model(), data[0], None, config, output=output)
    events, result = _drain(job)
    assert events[-1].stage == "saving" and result.output == output and output.is_file()
    assert _leftovers(tmp_path, output.name) == []  # the resume state is gone after a finished run


def test_the_resume_state_is_kept_only_when_asked(data, tmp_path):
    output = tmp_path / "a.safetensors"
    train(_model(), data[0], None, TrainingConfig(steps=2, eval_every=1, **QUICK), output=output)
    assert not resume_path(output).exists()
    train(_model(), data[0], None, TrainingConfig(steps=2, eval_every=1, **QUICK), output=output, replace=True,
          keep_resume_state=True)
    assert torch.load(resume_path(output), map_location="cpu", weights_only=True)["step"] == 2
    # Resuming to more steps continues it; the finished run removes it.
    result = train(_model(), data[0], None, TrainingConfig(steps=3, eval_every=1, **QUICK), output=output,
                   resume=True)
    assert result.steps_run == 3 and not resume_path(output).exists()


def test_a_cancelled_resumed_run_keeps_its_state(data, tmp_path):
    output = tmp_path / "a.safetensors"
    config = TrainingConfig(steps=6, eval_every=1, **QUICK)
    job = iter_train(_model(), data[0], None, config, output=output, keep_resume_state=True)
    for _ in range(2):
        next(job)
    job.close()
    assert torch.load(resume_path(output), map_location="cpu", weights_only=True)["step"] == 1
    job = iter_train(_model(), data[0], None, config, output=output, resume=True)
    for _ in range(3):
        next(job)
    job.close()
    assert torch.load(resume_path(output), map_location="cpu", weights_only=True)["step"] == 3
    assert not output.exists()


# ------------------------------------------------------------------ replacing
def test_an_existing_output_is_replaced_only_when_allowed(data, previous, tmp_path):
    output, before = previous
    config = TrainingConfig(steps=1, **QUICK)
    job = iter_train(_model(), data[0], None, config, output=output)
    with pytest.raises(OutputExistsError, match="replace=True"):
        next(job)  # refused before any training
    assert output.read_bytes() == before
    resume_path(output).write_bytes(b"a state of another run")
    with pytest.raises(OutputExistsError):
        train(_model(), data[0], None, config, output=output)
    resume_path(output).unlink()
    train(_model(), data[0], None, config, output=output, replace=True)
    assert output.read_bytes() != before


def test_a_file_that_appears_during_training_is_not_replaced(data, tmp_path, monkeypatch):
    output = tmp_path / "a.safetensors"
    real_step = engine._train_step

    def step_while_another_run_saves(*args):
        output.write_bytes(b"another run's adapters")
        return real_step(*args)

    monkeypatch.setattr(engine, "_train_step", step_while_another_run_saves)
    with pytest.raises(OutputExistsError):
        train(_model(), data[0], None, TrainingConfig(steps=1, **QUICK), output=output)
    assert output.read_bytes() == b"another run's adapters"
    assert _leftovers(tmp_path, output.name) == []


# ------------------------------------------------------------------ resume states from elsewhere
def test_a_resume_state_with_pickled_code_is_refused_without_running_it(data, tmp_path):
    output, marker = tmp_path / "a.safetensors", tmp_path / "marker"
    torch.save({"trainable": CodeOnUnpickle(marker)}, resume_path(output))
    model = _model()
    weights = _trainable(model)
    with pytest.raises(UnsafeCheckpointError, match="pickled Python objects") as error:
        train(model, data[0], None, TrainingConfig(steps=2, **QUICK), output=output, resume=True)
    assert str(resume_path(output)) in str(error.value) and "weights_only" not in str(error.value)
    assert error.value.__cause__ is None and error.value.__suppress_context__  # no advice to load it unsafely
    assert not marker.exists()
    assert all(torch.equal(p, weights[n]) for n, p in model.trainable_parameters())


@pytest.fixture(scope="module")
def valid_state(data, tmp_path_factory):
    """The content of a resume state written after 2 steps (with a validation)."""
    output = tmp_path_factory.mktemp("state") / "a.safetensors"
    train(_model(), *data, TrainingConfig(steps=2, eval_every=1, **QUICK), output=output, keep_resume_state=True)
    return resume_path(output).read_bytes()


def _corrupted(valid: dict, case: str, model) -> object:
    name = next(n for n, _ in model.trainable_parameters())
    state = {**valid, "trainable": dict(valid["trainable"])}
    if case == "a list":
        return [1, 2, 3]
    if case == "missing entries":
        return {k: v for k, v in state.items() if k != "optimizer"}
    if case == "a step as text":
        state["step"] = "2"
    elif case == "losses of another length":
        state["losses"] = [0.5]
    elif case == "NaN weights":
        state["trainable"][name] = torch.full_like(state["trainable"][name], float("nan"))
    elif case == "weights of another shape":
        state["trainable"][name] = torch.zeros(3)
    elif case == "integer weights":
        state["trainable"][name] = state["trainable"][name].long()
    elif case == "an optimiser of another model":
        state["optimizer"] = {"state": {}, "param_groups": [{"params": [0, 1]}]}
    elif case == "NaN optimiser moments":
        moments = state["optimizer"]["state"][0]
        state["optimizer"] = {**state["optimizer"], "state": {**state["optimizer"]["state"],
                                                              0: {**moments, "exp_avg": moments["exp_avg"] * np.nan}}}
    elif case == "a bad report":
        state["best_report"] = {"iou": 1}
    return state


@pytest.mark.parametrize("case", ["empty", "truncated", "junk", "a list", "missing entries", "a step as text",
                                  "losses of another length", "NaN weights", "weights of another shape",
                                  "integer weights", "an optimiser of another model", "NaN optimiser moments",
                                  "a bad report"])
def test_a_damaged_resume_state_is_refused_naming_the_file(data, valid_state, tmp_path, case):
    output = tmp_path / "a.safetensors"
    path = resume_path(output)
    model = _model()
    if case in ("empty", "truncated", "junk"):
        path.write_bytes({"empty": b"", "truncated": valid_state[: len(valid_state) // 2],
                          "junk": b"not a checkpoint" * 10}[case])
    else:
        path.write_bytes(valid_state)
        torch.save(_corrupted(torch.load(path, map_location="cpu", weights_only=True), case, model), path)
    weights, preferred = _trainable(model), model.preferred_image_size
    with pytest.raises(CorruptFileError) as error:
        train(model, data[0], None, TrainingConfig(steps=4, **QUICK), output=output, resume=True)
    assert str(path) in str(error.value)
    assert all(torch.equal(p, weights[n]) for n, p in model.trainable_parameters())
    assert model.preferred_image_size == preferred
    assert path.is_file() and not output.exists()  # the state is the user's: left where it was


def test_a_valid_resume_state_still_resumes(data, valid_state, tmp_path):
    output = tmp_path / "a.safetensors"
    resume_path(output).write_bytes(valid_state)
    result = train(_model(), *data, TrainingConfig(steps=3, eval_every=1, **QUICK), output=output, resume=True)
    assert result.steps_run == 3 and output.is_file()
    with pytest.raises(ValueError, match="beyond the 1 steps"):
        resume_path(output).write_bytes(valid_state)
        train(_model(), *data, TrainingConfig(steps=1, **QUICK), output=output, resume=True)


# ------------------------------------------------------------------ labels and settings
def test_float_labels_with_fractions_are_refused_naming_the_source(tmp_path):
    import tifffile

    image, labels = two_kinds_image(0, size=64)
    fractions = labels.astype(np.float32) * 0.01  # a probability-like map: was taken as all foreground
    with pytest.raises(ValueError, match="labels 'cells'.*float32 with values such as 0.01"):
        ConceptDataset.from_arrays([(image, fractions, "object")], names=["labels 'cells'"])
    with pytest.raises(ValueError, match="item 0"):
        ConceptDataset.from_arrays([(image, np.where(labels > 0, np.nan, 0.0), "object")])
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    tifffile.imwrite(tmp_path / "images" / "cell.tif", image)
    tifffile.imwrite(tmp_path / "labels" / "cell_labels.tif", fractions)
    with pytest.raises(ValueError, match="cell_labels.tif"):
        ConceptDataset.from_folders(tmp_path / "images", tmp_path / "labels", "object")
    # Whole numbers stored as floats are labels like any other.
    as_floats = ConceptDataset.from_arrays([(image, labels.astype(np.float64), MAPPING)])
    as_integers = ConceptDataset.from_arrays([(image, labels, MAPPING)])
    assert [s.concept for s in as_floats] == [s.concept for s in as_integers]
    for a, b in zip(as_floats, as_integers):
        np.testing.assert_array_equal(a.mask, b.mask)


@pytest.mark.parametrize(
    ("field", "value"),
    [("image_size", 1048576), ("image_size", 100), ("learning_rate", float("nan")), ("learning_rate", -1.0),
     ("warmup_fraction", 2.0), ("patience", -1), ("lone_click_share", 1.5), ("lone_click_share", float("nan"))],
)
def test_training_settings_out_of_range_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        TrainingConfig(**{field: value})
