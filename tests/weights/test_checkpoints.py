"""Reading checkpoints safely, unwrapping training frameworks' files, and checked loading."""

from __future__ import annotations

import re

import pytest
import torch

from napari_clipsam.errors import CheckpointMismatchError, UnsafeCheckpointError
from napari_clipsam.model.build_sam import build_sam
from napari_clipsam.weights.checkpoints import load_sam_state_dict, load_state_dict_checked, read_checkpoint
from tests.helpers import CodeOnUnpickle


@pytest.fixture(scope="module")
def tiny_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {key: value.clone() for key, value in build_sam("tiny").state_dict().items()}


def test_micro_sam_wrapped_checkpoint_round_trips(tmp_path, tiny_state_dict):
    wrapped = {
        "model_state": {f"sam.{key}": value for key, value in tiny_state_dict.items()},
        "optimizer_state": {"state": {}, "param_groups": [{"lr": 1e-5}]},
        "epoch": 12,
        "train_loss": 0.25,
    }
    path = tmp_path / "micro_sam_style.pt"
    torch.save(wrapped, path)

    loaded = load_sam_state_dict(path)

    assert loaded.keys() == tiny_state_dict.keys()
    assert all(torch.equal(loaded[key], tiny_state_dict[key]) for key in loaded)
    torch.manual_seed(1)
    model = build_sam("tiny")
    load_state_dict_checked(model, loaded, what="tiny checkpoint")
    assert all(torch.equal(model.state_dict()[key], value) for key, value in tiny_state_dict.items())


def test_lightning_and_data_parallel_wrappers_are_unwrapped(tmp_path, tiny_state_dict):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_state_dict.items()}}, path)
    assert load_sam_state_dict(path).keys() == tiny_state_dict.keys()


def test_safetensors_checkpoint_loads_and_a_truncated_one_is_named(tmp_path, tiny_state_dict):
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_state_dict.items()}, str(path))
    loaded = load_sam_state_dict(path)
    assert all(torch.equal(loaded[key], tiny_state_dict[key]) for key in tiny_state_dict)

    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a readable safetensors file")):
        read_checkpoint(path)


def test_pickled_code_is_refused_and_never_runs(tmp_path, tiny_state_dict):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pth"
    torch.save({"model_state": dict(tiny_state_dict), "extra": CodeOnUnpickle(marker)}, path)

    with pytest.raises(UnsafeCheckpointError, match="pickled Python objects") as info:
        load_sam_state_dict(path)
    assert "safety" in str(info.value)
    assert not marker.exists()

    # The payload is live: a plain unpickling would have run it.
    control = tmp_path / "control.txt"
    torch.save({"extra": CodeOnUnpickle(control)}, tmp_path / "control.pth")
    torch.load(tmp_path / "control.pth", weights_only=False)
    assert control.exists()


def test_unreadable_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a readable PyTorch checkpoint")):
        load_sam_state_dict(path)
    torch.save([1, 2], path)
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        load_sam_state_dict(path)


def test_wrong_architecture_lists_mismatches(tiny_state_dict):
    model = build_sam("vit_b")
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_checked(model, tiny_state_dict, what="SAM vit_b checkpoint /x/tiny.pth")
    message = str(info.value)
    assert "SAM vit_b checkpoint /x/tiny.pth" in message and "Missing keys" in message
    assert re.search(r"\.\.\. and \d+ more", message)
    patch_embed = "image_encoder.patch_embed.proj.weight"
    assert f"{patch_embed}: model (768, 3, 16, 16), file (32, 3, 16, 16)" in message
    assert "embed dim 32" in message


def test_mismatch_hints(tiny_state_dict):
    model = build_sam("tiny")
    state = dict(tiny_state_dict)
    state["image_encoder.patch_embed.proj.weight"] = torch.zeros(1024, 3, 16, 16)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_checked(model, state, what="SAM checkpoint")
    assert "looks like a vit_l checkpoint" in str(info.value)
    assert "Unexpected keys (1):\n  extra.weight" in str(info.value)

    wrapped = {f"net.{key}": value for key, value in tiny_state_dict.items()}
    with pytest.raises(CheckpointMismatchError, match="starts with 'net.'; it may wrap another model"):
        load_state_dict_checked(model, wrapped, what="SAM checkpoint")
