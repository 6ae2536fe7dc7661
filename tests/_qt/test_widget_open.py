"""Opening the widget is quick and light; its model choices come from the registries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from napari_clipsam._qt.model_fields import clip_model_names, sam_variant_choices, sam_weight_choices
from napari_clipsam._qt.segment_widget import ClipSamWidget
from napari_clipsam.model.build_sam import list_sam_variants
from napari_clipsam.weights.registry import DEFAULT_CLIP_PRETRAINED, RANDOM_WEIGHTS, list_sam_weights
from tests.helpers import dock_in_fresh_process

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_widget_open.py"


def _fresh_environment(tmp_path) -> dict[str, str]:
    return dict(os.environ, NAPARI_CONFIG=str(tmp_path / "napari.yaml"), NAPARI_CLIPSAM_SETTINGS="off")


def test_opening_the_widget_imports_no_model_stack(tmp_path):
    """In a fresh process, as from napari's Plugins menu: the model stack takes seconds to import."""
    name, imported = dock_in_fresh_process("Segment by concept", env=_fresh_environment(tmp_path))
    assert name == "ClipSamWidget" and imported == []


def test_the_open_benchmark_prints_its_figures(tmp_path):
    completed = subprocess.run([sys.executable, str(BENCHMARK), "--repeats", "1"], capture_output=True, text=True,
                               timeout=600, env=_fresh_environment(tmp_path))
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.startswith("CPU: ")
    assert "largest event-loop gap while opening: median" in completed.stdout
    assert "model stack imported: none" in completed.stdout


def test_sam_choices_come_from_the_builders_and_the_registry():
    variants = sam_variant_choices()
    # The demo model's architectures come with its preset (the Model choice), not as SAM choices.
    assert sorted(variants) == sorted(v for v in list_sam_variants() if v not in ("demo", "demo-deep"))
    assert variants[-1] == "tiny" and variants[0] == "vit_b"  # the test model last
    assert sam_weight_choices("vit_l") == ["default", *[n for n in list_sam_weights("vit_l") if n != "vit_l"],
                                           RANDOM_WEIGHTS]
    assert sam_weight_choices("tiny") == [RANDOM_WEIGHTS]  # nothing published for it


def test_the_weights_offered_follow_the_sam_variant(viewer):
    fields = ClipSamWidget(viewer)._model_fields
    fields.sam.value = "vit_l"
    assert "vit_l_lm" in fields.sam_weights.choices and "vit_b_lm" not in fields.sam_weights.choices
    fields.sam.value = "tiny"
    assert fields.sam_weights.choices == (RANDOM_WEIGHTS,)


def test_clip_names_without_and_with_open_clip_loaded(monkeypatch):
    import open_clip  # noqa: F401  (loaded by the tiny model in these tests anyway)

    names = clip_model_names("hf-hub:someone/their-clip")
    assert "RN50" in names and names[-2:] == ["tiny", "hf-hub:someone/their-clip"]
    monkeypatch.delitem(sys.modules, "open_clip")  # as in napari before any model was loaded
    assert clip_model_names("ViT-B-16") == list(DEFAULT_CLIP_PRETRAINED)
    assert clip_model_names("hf-hub:someone/their-clip")[-1] == "hf-hub:someone/their-clip"


def test_a_typed_hub_name_reaches_load_model_and_the_suggestions(viewer, widget, tiny_model):
    fields = widget._model_fields
    fields.clip.value = "hf-hub:someone/their-clip"
    assert widget._model_arguments()["clip"] == "hf-hub:someone/their-clip"
    widget.use_model(tiny_model)  # a model loaded: the suggestions are refreshed
    suggestions = fields._clip_completer.model().stringList()
    assert "hf-hub:someone/their-clip" in suggestions and "ViT-B-16" in suggestions


def test_clip_weight_suggestions_follow_the_model(viewer):
    import open_clip  # noqa: F401  (its tags are suggested once it is loaded)

    fields = ClipSamWidget(viewer)._model_fields
    fields.clip.value = "ViT-L-14"
    suggestions = fields._weights_completer.model().stringList()
    assert suggestions[:2] == ["default", "none"] and "openai" in suggestions
    fields.clip.value = "hf-hub:someone/their-clip"
    assert fields._weights_completer.model().stringList() == ["default", "none"]
