"""Adapters files are untrusted input: every entry and tensor is checked before the model changes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import napari_clipsam as nc
from napari_clipsam.errors import AdaptersMismatchError, InvalidAdaptersError, OutputExistsError
from napari_clipsam.weights.adapters_file import (
    read_adapters_config,
    read_adapters_metadata,
    read_adapters_tensors,
    write_adapters_file,
)
from tests.helpers import load_tiny, randomize_adapters


@pytest.fixture
def saved(tiny_model, tmp_path):
    """A valid adapters file of the tiny model, trained at SAM input 128."""
    randomize_adapters(tiny_model)
    return tiny_model.save_adapters(tmp_path / "a.safetensors", concepts=["nucleus"],
                                    extra_metadata={"training_mode": "text", "training_image_size": "128"})


def _rewrite(path, metadata_changes=None, tensor_changes=None, drop=()):
    """Rewrite ``path`` with entries changed (None removes one), as a hand-made or damaged file would be."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(str(path))
    for key, value in (metadata_changes or {}).items():
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    for name in drop:
        tensors.pop(name)
    tensors.update(tensor_changes or {})
    save_file(tensors, str(path), metadata=metadata)


def _model_state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, model.preferred_image_size, model.weights_version,
            model.config)


def _assert_untouched(model, before):
    weights, preferred, version, config = before
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())
    assert (model.preferred_image_size, model.weights_version, model.config) == (preferred, version, config)


def _a_trainable_name(model, part=".clipsam."):
    return next(n for n, _ in model.trainable_parameters() if part in n)


@pytest.mark.parametrize(
    ("changes", "entry"),
    [
        ({"training_image_size": "1048576"}, "'training_image_size'"),  # asked for 17 GB at the first predict
        ({"training_image_size": "100"}, "'training_image_size'"),  # not a multiple of 16
        ({"training_image_size": "-64"}, "'training_image_size'"),
        ({"training_mode": "auto"}, "'training_mode'"),
        ({"concepts": "nucleus"}, "'concepts'"),  # not JSON
        ({"concepts": "[1, 2]"}, "'concepts'"),
        ({"concepts": json.dumps(["x" * 5000])}, "'concepts'"),
        ({"config": "{"}, "'config'"),
        ({"config": "[]"}, "'config'"),
        ({"config": None}, "'config'"),  # missing: a bare KeyError before
        ({"sam": None}, "'sam'"),
        ({"sam": ""}, "'sam'"),
        ({"napari_clipsam_version": None}, "'napari_clipsam_version'"),
        ({"format_version": "2"}, "'format_version'"),
        ({"format_version": "2", "new_entry": "x"}, "update napari-clipsam"),  # the version explains new entries
        ({"comment": "hello"}, "unknown entries ['comment']"),
    ],
)
def test_bad_metadata_is_refused_naming_the_file_and_the_entry(saved, changes, entry):
    _rewrite(saved, changes)
    with pytest.raises(InvalidAdaptersError) as error:
        read_adapters_metadata(saved)
    assert str(saved) in str(error.value) and entry in str(error.value)
    # Building a model with the file stops before anything is built, with the same error.
    with pytest.raises(InvalidAdaptersError, match=entry.replace("[", r"\[").replace("]", r"\]")):
        load_tiny(adapters=saved)


def test_loading_bad_metadata_leaves_the_model_as_it_was(saved):
    model = load_tiny()
    _rewrite(saved, {"training_image_size": "1048576"})
    before = _model_state(model)
    with pytest.raises(InvalidAdaptersError, match="training_image_size"):
        model.load_adapters(saved)
    _assert_untouched(model, before)


@pytest.mark.parametrize(
    ("config_changes", "field"),
    [
        ({"clip_image_size": 100000}, "clip_image_size"),  # asked for 120 GB
        ({"num_points": 10**9}, "num_points"),
        ({"surgery_blocks": 10**6}, "surgery_blocks"),
        ({"bottleneck_ratio": "0.25"}, "bottleneck_ratio"),  # a TypeError before
        ({"adapter_scale": float("nan")}, "adapter_scale"),
        ({"similarity_mask_prompt": "false"}, "similarity_mask_prompt"),  # a true string before
        ({"templates": ["a photo of a {}."] * 1000}, "templates"),
        ({"semantic_blocks": ["a"]}, "semantic_blocks"),
        ({"modalities": "text"}, "modalities"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_configuration_out_of_range_is_refused_naming_the_file(saved, config_changes, field):
    with safe_open(str(saved), framework="pt") as handle:
        config = json.loads(handle.metadata()["config"])
    _rewrite(saved, {"config": json.dumps({**config, **config_changes})})
    for load in (lambda: read_adapters_config(saved, nc.ClipSamConfig.from_json), lambda: load_tiny(adapters=saved)):
        with pytest.raises(InvalidAdaptersError) as error:
            load()
        assert str(saved) in str(error.value) and "'config'" in str(error.value) and field in str(error.value)
    model = load_tiny()
    before = _model_state(model)
    with pytest.raises(InvalidAdaptersError):
        model.load_adapters(saved)
    _assert_untouched(model, before)


def _bad_tensors(model):
    adapter, decoder = _a_trainable_name(model), _a_trainable_name(model, "sam.mask_decoder.")
    shape = dict(model.trainable_parameters())[adapter].shape
    nan = torch.zeros(shape)
    nan.view(-1)[0] = float("nan")
    return [
        ({adapter: nan}, (), adapter, "NaN or infinite"),
        ({adapter: torch.full(shape, float("inf"))}, (), adapter, "NaN or infinite"),
        ({adapter: torch.full(shape, 1e300, dtype=torch.float64)}, (), adapter, "NaN or infinite"),
        ({adapter: torch.ones(shape, dtype=torch.int64)}, (), adapter, "I64"),
        ({adapter: torch.ones(shape, dtype=torch.bool)}, (), adapter, "BOOL"),
        ({adapter: torch.zeros(*shape, 2)}, (), adapter, "shape"),
        ({}, (decoder,), decoder, "missing"),
        ({"sam.extra.weight": torch.zeros(2)}, (), "sam.extra.weight", "unexpected"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_bad_tensors_are_refused_and_the_model_stays_as_it_was(saved, case):
    model = load_tiny()
    changes, drop, name, problem = _bad_tensors(model)[case]
    _rewrite(saved, tensor_changes=changes, drop=drop)
    shapes = {n: tuple(p.shape) for n, p in model.trainable_parameters()}
    with pytest.raises(InvalidAdaptersError) as error:
        read_adapters_tensors(saved, shapes)
    assert str(saved) in str(error.value) and name in str(error.value) and problem in str(error.value)
    before = _model_state(model)
    with pytest.raises(InvalidAdaptersError, match=problem):
        model.load_adapters(saved)
    _assert_untouched(model, before)


def test_half_precision_tensors_load(saved):
    model = load_tiny()
    tensors = {name: tensor.to(torch.bfloat16) for name, tensor in load_file(str(saved)).items()}
    _rewrite(saved, tensor_changes=tensors)
    model.load_adapters(saved)
    name = _a_trainable_name(model)
    torch.testing.assert_close(model.get_parameter(name), tensors[name].float())
    assert model.preferred_image_size == 128


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_file_is_refused_naming_it(saved, damage):
    data = saved.read_bytes()
    saved.write_bytes({"truncated": data[: len(data) - 100], "garbage": b"\xff" * 8 + b"junk", "empty": b""}[damage])
    model = load_tiny()
    before = _model_state(model)
    for load in (lambda: read_adapters_metadata(saved), lambda: model.load_adapters(saved),
                 lambda: load_tiny(adapters=saved)):
        with pytest.raises(InvalidAdaptersError, match="not a readable safetensors file") as error:
            load()
        assert str(saved) in str(error.value)
    _assert_untouched(model, before)
    with pytest.raises(FileNotFoundError):
        read_adapters_metadata(saved.with_name("missing.safetensors"))


def test_a_file_for_another_configuration_is_a_mismatch_not_invalid(tmp_path):
    path = load_tiny(config=nc.ClipSamConfig(semantic_blocks=(-1,))).save_adapters(tmp_path / "a.safetensors")
    model = load_tiny()
    before = _model_state(model)
    with pytest.raises(AdaptersMismatchError, match="configuration") as error:
        model.load_adapters(path)
    assert not isinstance(error.value, InvalidAdaptersError)
    _assert_untouched(model, before)


def test_non_finite_weights_are_never_written(tiny_model, tmp_path):
    path = tiny_model.save_adapters(tmp_path / "a.safetensors", concepts=["old"])
    original = path.read_bytes()
    with torch.no_grad():
        tiny_model.get_parameter(_a_trainable_name(tiny_model)).view(-1)[0] = float("nan")
    with pytest.raises(InvalidAdaptersError, match="NaN"):
        tiny_model.save_adapters(path, concepts=["new"])
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_metadata_that_would_be_refused_is_never_written(tiny_model, tmp_path):
    with pytest.raises(InvalidAdaptersError, match="training_image_size"):
        tiny_model.save_adapters(tmp_path / "a.safetensors", extra_metadata={"training_image_size": "100"})
    assert not list(tmp_path.iterdir())


def test_writing_without_replace_keeps_an_existing_file(saved):
    original = saved.read_bytes()
    metadata = read_adapters_metadata(saved)
    with pytest.raises(OutputExistsError):
        write_adapters_file(saved, load_file(str(saved)), metadata, replace=False)
    assert saved.read_bytes() == original
