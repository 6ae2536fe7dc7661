"""Options every command shares: -v anywhere, choices from the registries, progress bars, light start."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from napari_clipsam.cli import build_parser, main
from napari_clipsam.model.build_sam import list_sam_variants

TINY = ["--sam", "tiny", "--clip", "tiny", "--sam-checkpoint", "none", "--clip-pretrained", "none",
        "--device", "cpu", "--precision", "fp32"]


@pytest.mark.parametrize("argv", [["-v", "weights", "list"], ["weights", "list", "-v"], ["weights", "-v", "list"]])
def test_verbose_is_accepted_before_and_after_the_command(argv):
    assert build_parser().parse_args(argv).verbose is True


def test_verbose_defaults_to_off():
    assert getattr(build_parser().parse_args(["weights", "list"]), "verbose", False) is False


def test_sam_variants_come_from_the_builders(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["segment", "-c", "x", "-o", "o.tif", "--sam", "vit_x"])
    err = capsys.readouterr().err
    for variant in list_sam_variants():
        assert variant in err


@pytest.mark.parametrize("word", ["none", "random", "None", "none (random)"])
def test_random_weights_words(word):
    args = build_parser().parse_args(["segment", "-c", "x", "-o", "o.tif", "--sam-checkpoint", word,
                                      "--clip-pretrained", word])
    assert args.sam_checkpoint is None and args.clip_pretrained is None


def test_refine_without_instances_names_the_fix(tmp_path, capsys):
    argv = ["segment", "--sample", "coins", "-c", "coin", "-o", str(tmp_path / "l.tif"), "--refine", *TINY]
    assert main(argv) == 2
    assert "--instances" in capsys.readouterr().err
    assert not (tmp_path / "l.tif").exists()


def test_progress_is_a_tqdm_bar_on_a_terminal(tmp_path, monkeypatch, capsys):
    """tqdm draws only on terminals (disable=None): pretend stderr is one."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    output = tmp_path / "l.npy"
    assert main(["segment", "--sample", "coins", "-c", "coin", "-o", str(output), *TINY]) == 0
    err = capsys.readouterr().err
    assert "sample coins" in err and "decoding masks" in err and "\r" in err
    assert np.load(output).shape == (303, 384)


@pytest.mark.parametrize("argv", [["--help"], ["weights", "list"]])
def test_light_commands_import_no_model_stack(argv, tmp_path):
    code = (
        "import json, sys\n"
        "from napari_clipsam.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps([m for m in ('torch', 'open_clip', 'segment_anything', 'timm') if m in sys.modules]))\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                               env={"NAPARI_CLIPSAM_CACHE": str(tmp_path), "PATH": ""})
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == []


def _segment_options(*flags: str):
    from napari_clipsam.cli.segment import _options

    return _options(build_parser().parse_args(["segment", "-c", "x", "-o", "o.tif", *flags]))


def test_instance_flags_become_the_pipeline_options():
    from napari_clipsam.inference.pipeline import SegmentOptions

    assert _segment_options("--instances") == SegmentOptions(instances=True)  # seeds, diameter estimated
    assert _segment_options("--instances", "--diameter", "18.5", "--score-threshold", "0") == SegmentOptions(
        instances=True, instance_method="seeds", diameter=18.5, score_threshold=0.0
    )
    assert _segment_options("--instances", "--instance-method", "components", "--refine", "--min-area", "9") == (
        SegmentOptions(instances=True, instance_method="components", refine=True, min_area=9)
    )
    # A length: micrometres, which each file's pixel size turns into its pixels (batch.segment_to_file).
    assert _segment_options("--diameter", "10um") == SegmentOptions(diameter=10.0, diameter_unit="um")
    assert _segment_options("--instances", "--diameter", "0.012 mm") == SegmentOptions(
        instances=True, diameter=12.0, diameter_unit="um")
    assert _segment_options("--diameter", "24px") == SegmentOptions(diameter=24.0)
    # Without seeded instances the diameter picks the reading scale (--scale auto, the default).
    assert _segment_options("--diameter", "120") == SegmentOptions(diameter=120.0)
    assert _segment_options("--instances", "--instance-method", "components", "--diameter", "90") == (
        SegmentOptions(instances=True, instance_method="components", diameter=90.0)
    )


def test_the_instance_methods_and_default_threshold_are_the_pipelines():
    from napari_clipsam.cli.segment import DEFAULT_SCORE_THRESHOLD, INSTANCE_METHODS
    from napari_clipsam.inference import pipeline, seeds

    assert INSTANCE_METHODS == pipeline.INSTANCE_METHODS
    assert DEFAULT_SCORE_THRESHOLD == seeds.DEFAULT_SCORE_THRESHOLD


def test_tiling_flags_become_the_pipeline_options():
    from napari_clipsam.inference.pipeline import SegmentOptions

    assert _segment_options() == SegmentOptions(tile_shape="auto", halo="auto")
    assert _segment_options("--tile-shape", "none") == SegmentOptions(tile_shape=None)
    assert _segment_options("--tile-shape", "512", "--halo", "32,48") == SegmentOptions(
        tile_shape=(512, 512), halo=(32, 48))
    assert _segment_options("--encoder-batch", "4") == SegmentOptions(encoder_batch=4)
    assert _segment_options("--encoder-batch", "auto") == SegmentOptions(encoder_batch="auto")
    assert _segment_options().scale == "auto"
    assert _segment_options("--scale", "2.5") == SegmentOptions(scale=2.5)


def test_other_concepts_flag_becomes_the_pipeline_option():
    from napari_clipsam.inference.pipeline import SegmentOptions

    assert _segment_options().other_concepts == "auto"
    assert _segment_options("--other-concepts", "none") == SegmentOptions(other_concepts=None)
    assert _segment_options("--other-concepts", "bacterium, cell membrane").other_concepts == (
        "bacterium", "cell membrane")
    assert _segment_options("--other-concepts", "AUTO") == SegmentOptions()


def test_augment_flag_becomes_the_pipeline_option():
    from napari_clipsam.inference.pipeline import SegmentOptions

    assert _segment_options().augment == "auto"
    assert _segment_options("--augment", "on") == SegmentOptions(augment=True)
    assert _segment_options("--augment", "off") == SegmentOptions(augment=False)


@pytest.mark.parametrize(("flags", "words"), [
    (["--tile-shape", "0"], "--tile-shape must be pixels"), (["--tile-shape", "big"], "--tile-shape must be pixels"),
    (["--halo", "-4"], "--halo must be pixels"),
    (["--encoder-batch", "0"], "give a number of tiles or planes of 1 or more, or auto"),
    (["--encoder-batch", "many"], "give a number of tiles or planes of 1 or more, or auto"),
    (["--other-concepts", "spot,,bacterium"], "give concept names separated by commas, auto or none"),
    (["--augment", "8"], "argument --augment: invalid choice"),
    (["--scale", "0"], "give image pixels per pixel the model reads"),
    (["--diameter", "10furlong"], "argument --diameter: give the object diameter in pixels (24) or with a unit"),
    (["--scale", "half"], "give image pixels per pixel the model reads"),
])
def test_bad_tiling_flags_exit_2_naming_the_flag(flags, words, capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["segment", "-c", "x", "-o", "o.tif", *flags])
    assert exited.value.code == 2 and words in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--diameter", "20", "--scale", "2"], "with --scale 2 and no seeded instances it would do nothing"),
        (["--instance-method", "seeds"], "--instance-method apply to objects: add --instances"),
        (["--score-threshold", "0"], "--score-threshold apply to objects: add --instances"),
        (["--instances", "--instance-method", "components", "--score-threshold", "0.2"],
         "--score-threshold applies to --instance-method seeds, not to components"),
        (["--instances", "--instance-method", "components", "--diameter", "20", "--scale", "1.5"],
         "leave it out, or use --scale auto"),
        (["--instances", "--diameter", "0"], "--diameter must be more than 0 pixels"),
        (["--diameter", "-4"], "--diameter must be more than 0 pixels"),
        (["--diameter", "0um"], "--diameter must be more than 0 µm"),
        (["--instances", "--score-threshold", "1.5"], "--score-threshold must be between 0 and 1"),
    ],
)
def test_instance_flags_that_do_not_apply_name_the_fix(tmp_path, capsys, flags, message):
    argv = ["segment", "--sample", "coins", "-c", "coin", "-o", str(tmp_path / "l.tif"), *flags, *TINY]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "l.tif").exists()


def test_an_unknown_instance_method_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["segment", "-c", "x", "-o", "o.tif", "--instance-method", "watershed"])
    assert "seeds" in capsys.readouterr().err
