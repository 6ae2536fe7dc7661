"""``napari-clipsam train`` and ``evaluate`` on the tiny model and synthetic two-concept images."""

from __future__ import annotations

import json

import pytest
import tifffile
import torch

import napari_clipsam as nc
from napari_clipsam.cli import main
from napari_clipsam.training.engine import resume_path
from tests.helpers import load_tiny, two_kinds_image

TINY = ["--sam", "tiny", "--clip", "tiny", "--sam-checkpoint", "none", "--clip-pretrained", "none", "--device", "cpu"]
CONCEPTS = ["--concepts", "1=disc, 2=square"]


@pytest.fixture
def folders(tmp_path):
    """Three images with discs (label 1) and squares (label 2), and label files named ``*_labels.tif``."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for seed in range(3):
        image, label_image = two_kinds_image(seed)
        tifffile.imwrite(images / f"cell{seed}.tif", image)
        tifffile.imwrite(labels / f"cell{seed}_labels.tif", label_image)
    return ["--images", str(images), "--labels", str(labels), *CONCEPTS]


def test_train_writes_adapters_with_their_metadata(folders, tmp_path, capsys, monkeypatch):
    from napari_clipsam.cli.train import _TrainingPrinter

    monkeypatch.setattr(_TrainingPrinter, "seconds", 1e9)  # lines by step count only, however slow the machine
    output = tmp_path / "out" / "adapters.safetensors"
    argv = ["train", *folders, "-o", str(output), "--steps", "4", "--eval-every", "4", "--log-every", "2",
            "--val-fraction", "0.34", "--image-size", "128", *TINY]
    assert main(argv) == 0
    metadata = nc.read_adapters_metadata(output)
    assert json.loads(metadata["concepts"]) == ["disc", "square"]
    assert (metadata["sam"], metadata["clip"]) == ("tiny", "tiny")
    assert not resume_path(output).exists()  # a finished run keeps no training state unless asked
    out = capsys.readouterr().out
    assert "4 training and 2 validation samples" in out and "SAM input 128" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("step ")] == ["1/4", "3/4", "4/4"]
    assert "validation at step 0:" in out and "validation at step 4:" in out
    assert "before training" in out and str(output) in out and "resumable state" not in out
    # The file loads back onto the same base model.
    load_tiny(adapters=output)


def test_train_clip_attention_flag(folders, tmp_path, capsys):
    output = tmp_path / "co.safetensors"
    argv = ["train", *folders, "-o", str(output), "--steps", "1", "--val-fraction", "0", "--image-size", "128",
            "--train-clip-attention", "--clip-lr", "1e-6", *TINY]
    assert main(argv) == 0
    assert "CLIP attention trained at lr 1e-06" in capsys.readouterr().out
    assert json.loads(nc.read_adapters_metadata(output)["config"])["train_clip_attention"] is True


def test_existing_output_is_refused_without_overwrite(folders, tmp_path, capsys):
    output = tmp_path / "adapters.safetensors"
    output.write_bytes(b"precious")
    argv = ["train", *folders, "-o", str(output), "--steps", "1", "--val-fraction", "0", *TINY]
    assert main(argv) == 2
    assert output.read_bytes() == b"precious"
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train", *folders, "-o", str(tmp_path / "new.safetensors"), "--resume", *TINY]) == 2
    assert "Nothing to resume" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads(nc.read_adapters_metadata(output)["concepts"]) == ["disc", "square"]
    assert "no validation samples" in capsys.readouterr().out


def test_evaluate_prints_each_concept_and_writes_json(folders, tmp_path, capsys):
    report = tmp_path / "report.json"
    assert main(["evaluate", *folders, "--mode", "manual", "--json", str(report), "--image-size", "128", *TINY]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {line.split()[0]: line.split()[1:] for line in lines if line.split()[:1] in (["disc"], ["square"],
                                                                                      ["overall"])}
    assert table["disc"][0] == "3" and table["square"][0] == "3" and table["overall"][0] == "6"
    saved = json.loads(report.read_text())
    assert set(saved["per_concept"]) == {"disc", "square"}
    assert 0 <= saved["iou"] <= 1 and saved["settings"]["mode"] == "manual" and saved["settings"]["image_size"] == 128
    assert f"{saved['per_concept']['disc']['iou']:.3f}" == table["disc"][1]
    # An existing report is not replaced without --overwrite.
    assert main(["evaluate", *folders, "--json", str(report), *TINY]) == 2
    assert json.loads(report.read_text()) == saved


def test_evaluate_keeps_a_report_written_meanwhile(folders, tmp_path, capsys, monkeypatch):
    """The --json check at the start is not enough: a report another run wrote meanwhile stays."""
    import napari_clipsam.cli.train as train_cli

    report = tmp_path / "report.json"
    real_progress = train_cli.job_progress

    def and_another_run_writes(job, *args, **kwargs):
        result = real_progress(job, *args, **kwargs)
        report.write_text("the other run's report")
        return result

    monkeypatch.setattr(train_cli, "job_progress", and_another_run_writes)
    assert main(["evaluate", *folders, "--json", str(report), "--image-size", "128", *TINY]) == 2
    assert report.read_text() == "the other run's report"
    assert "left as it is" in capsys.readouterr().err


def test_evaluate_checks_its_json_path_before_the_model_loads(folders, tmp_path, capsys, monkeypatch):
    import napari_clipsam.cli.train as train_cli

    monkeypatch.setattr(train_cli, "load_model", lambda args: pytest.fail("the model loaded before the check"))
    (tmp_path / "a-file").write_text("x")
    assert main(["evaluate", *folders, "--json", str(tmp_path / "a-file" / "report.json"), *TINY]) == 2
    assert "a-file" in capsys.readouterr().err


def _ctrl_c_at_the_third_step(monkeypatch) -> None:
    """Ctrl+C arrives as the third training step begins (after steps 1 and 2 were saved as state)."""
    import napari_clipsam.training.engine as training

    real_step, calls = training._train_step, []

    def interrupted_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(training, "_train_step", interrupted_step)


def test_ctrl_c_keeps_the_previous_file_and_exits_130(folders, tmp_path, capsys, monkeypatch):

    output = tmp_path / "adapters.safetensors"
    output.write_bytes(b"previous adapters")
    _ctrl_c_at_the_third_step(monkeypatch)
    argv = ["train", *folders, "-o", str(output), "--overwrite", "--steps", "10", "--eval-every", "1",
            "--val-fraction", "0", "--image-size", "64", *TINY]
    assert main(argv) == 130
    assert output.read_bytes() == b"previous adapters"
    # The training state written at steps 1 and 2 is gone with the run: no file of it is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapters.safetensors", "images", "labels"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted at step 2" in err[0] and "left as it was" in err[0]
    assert "--keep-resume-state" in err[0] and "--resume continues" not in err[0]


def test_ctrl_c_with_keep_resume_state_then_resume(folders, tmp_path, capsys, monkeypatch):
    import napari_clipsam.training.engine as training

    output, real_step = tmp_path / "adapters.safetensors", training._train_step
    _ctrl_c_at_the_third_step(monkeypatch)
    common = ["train", *folders, "-o", str(output), "--eval-every", "1", "--val-fraction", "0", "--image-size", "64",
              *TINY]
    assert main([*common, "--steps", "4", "--keep-resume-state"]) == 130
    err = capsys.readouterr().err
    assert f"--resume continues from the state kept in {resume_path(output)}" in err and "not written" in err
    monkeypatch.setattr(training, "_train_step", real_step)
    assert main([*common, "--steps", "4", "--resume"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("step ")] == ["3/4", "4/4"]
    assert output.is_file() and not resume_path(output).exists()


def test_ctrl_c_during_the_final_save_says_the_file_was_written(folders, tmp_path, capsys, monkeypatch):
    from napari_clipsam.model.clipsam import ClipSamModel

    output = tmp_path / "adapters.safetensors"
    output.write_bytes(b"previous adapters")
    real_save = ClipSamModel.save_adapters

    def save_then_interrupt(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        raise KeyboardInterrupt  # Ctrl+C as the save completes

    monkeypatch.setattr(ClipSamModel, "save_adapters", save_then_interrupt)
    argv = ["train", *folders, "-o", str(output), "--overwrite", "--steps", "1", "--val-fraction", "0",
            "--image-size", "64", *TINY]
    assert main(argv) == 130
    assert output.read_bytes() != b"previous adapters"
    err = capsys.readouterr().err
    assert f"the training had finished: {output} was written" in err and "left as it was" not in err


def test_a_diverging_run_exits_2_naming_the_step_and_keeps_the_previous_file(folders, tmp_path, capsys):
    output = tmp_path / "adapters.safetensors"
    output.write_bytes(b"previous adapters")
    argv = ["train", *folders, "-o", str(output), "--overwrite", "--steps", "20", "--lr", "1e6", "--val-fraction", "0",
            "--image-size", "64", "--no-augment", *TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "diverged at step" in err and "Nothing was saved" in err
    assert output.read_bytes() == b"previous adapters"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapters.safetensors", "images", "labels"]


def test_resume_refuses_pickled_code_and_damaged_states(folders, tmp_path, capsys):
    from tests.helpers import CodeOnUnpickle

    output, marker = tmp_path / "adapters.safetensors", tmp_path / "marker"
    torch.save({"step": CodeOnUnpickle(marker)}, resume_path(output))
    argv = ["train", *folders, "-o", str(output), "--resume", "--steps", "2", "--image-size", "64", *TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pickled Python objects" in err and str(resume_path(output)) in err
    assert "weights_only" not in err and not marker.exists()
    resume_path(output).write_bytes(b"")
    assert main(argv) == 2
    assert f"{resume_path(output)} is not a readable training state" in capsys.readouterr().err


def test_a_label_file_of_fractions_is_refused_naming_it(tmp_path, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    image, label_image = two_kinds_image(0)
    tifffile.imwrite(images / "cell0.tif", image)
    tifffile.imwrite(labels / "cell0_labels.tif", (label_image * 0.01).astype("float32"))
    argv = ["train", "--images", str(images), "--labels", str(labels), "--concept", "cell",
            "-o", str(tmp_path / "a.safetensors"), *TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cell0_labels.tif" in err and "whole numbers" in err


@pytest.mark.parametrize(
    ("concepts", "message"),
    [
        (["--concepts", "1=disc, x=square"], "Cannot read 'x=square'"),
        (["--concepts", "disc"], "label=concept pairs"),
        (["--concepts", "1=disc, 1=square"], "twice"),
        (["--concept", "1=disc"], "use --concepts"),
    ],
)
def test_bad_concepts_exit_2_with_a_clear_message(concepts, message, tmp_path, capsys):
    folders = ["--images", str(tmp_path), "--labels", str(tmp_path)]
    argv = ["train", *folders, *concepts, "-o", str(tmp_path / "a.safetensors")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
