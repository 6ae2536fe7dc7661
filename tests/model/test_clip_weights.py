"""CLIP weights files: the network built for them (QuickGELU or GELU), and unsafe or damaged files."""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU

import napari_clipsam as nc
from napari_clipsam.errors import AmbiguousWeightsError, UnsafeCheckpointError
from napari_clipsam.model.clip import build_clip, clip_file_cfg
from napari_clipsam.weights.registry import SAM_WEIGHTS, WeightsEntry
from tests.helpers import CodeOnUnpickle

TINY = dict(sam="tiny", clip="tiny", sam_checkpoint=None, device="cpu", precision="fp32")


def _uses_quick_gelu(model) -> bool:
    return any(isinstance(module, QuickGELU) for module in model.clip.modules())


@pytest.fixture(scope="module")
def tiny_clip_file(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in build_clip("tiny").state_dict().items()}, str(path))
    return path


@pytest.fixture
def tiny_tags(monkeypatch):
    """Registers pretrained tags for "tiny" in open_clip's registry: ``tiny_tags({"openai": True})``."""

    def register(quick_by_tag: dict[str, bool]) -> None:
        cfgs = {tag: {"hf_hub": f"org/tiny-{tag}/", "quick_gelu": quick} for tag, quick in quick_by_tag.items()}
        monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tiny", cfgs)

    return register


def test_the_name_decides_where_its_tags_agree(tmp_path):
    file = tmp_path / "weights.safetensors"
    assert clip_file_cfg("ViT-L-14-336", file) == {"quick_gelu": True}  # only OpenAI's tag
    assert clip_file_cfg("RN50", file) == {"quick_gelu": True}
    assert clip_file_cfg("ViT-B-16-quickgelu", file) == {"quick_gelu": True}
    assert clip_file_cfg("convnext_base", file) == {"quick_gelu": False}
    assert clip_file_cfg("tiny", file) == {"quick_gelu": False}  # no tags: its config's activation


def test_a_tag_folder_decides(tmp_path):
    openai = tmp_path / "clip" / "ViT-B-16_openai" / "open_clip_model.safetensors"
    cfg = clip_file_cfg("ViT-B-16", openai, cache_dir=tmp_path)
    assert cfg["quick_gelu"] is True and cfg["mean"] == open_clip.get_pretrained_cfg("ViT-B-16", "openai")["mean"]
    laion = tmp_path / "clip" / "ViT-B-16_laion2b_s34b_b88k" / "open_clip_model.safetensors"
    assert clip_file_cfg("ViT-B-16", laion, cache_dir=tmp_path)["quick_gelu"] is False


def test_an_ambiguous_file_is_refused_with_ways_to_say_which(tmp_path):
    file = tmp_path / "weights.safetensors"
    with pytest.raises(AmbiguousWeightsError) as info:
        clip_file_cfg("ViT-B-16", file, cache_dir=tmp_path)
    message = str(info.value)
    assert str(file) in message and "clip='ViT-B-16-quickgelu'" in message
    assert "open_clip_config.json beside the file" in message
    assert str(tmp_path / "clip" / "ViT-B-16_openai") in message and "laion2b_s34b_b88k" in message


def test_a_file_path_builds_the_same_network_as_the_cache(tiny_clip_file, tiny_tags, tmp_path, monkeypatch):
    tiny_tags({"openai": True})
    model = nc.load_model(clip_pretrained=tiny_clip_file, **TINY)
    assert _uses_quick_gelu(model)
    loaded = model.clip.state_dict()["visual.proj"]
    from safetensors.torch import load_file

    assert torch.equal(loaded, load_file(str(tiny_clip_file))["visual.proj"])

    # The same file from the tag's folder in the cache: the same network.
    folder = tmp_path / "clip" / "tiny_openai"
    folder.mkdir(parents=True)
    (folder / tiny_clip_file.name).write_bytes(tiny_clip_file.read_bytes())
    assert _uses_quick_gelu(nc.load_model(clip_pretrained="openai", cache_dir=tmp_path, **TINY))

    tiny_tags({})
    assert not _uses_quick_gelu(nc.load_model(clip_pretrained=tiny_clip_file, **TINY))


def test_a_config_beside_the_file_decides(tiny_clip_file, tiny_tags, tmp_path):
    tiny_tags({"openai": True, "laion": False})
    file = tmp_path / tiny_clip_file.name
    file.write_bytes(tiny_clip_file.read_bytes())
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True}}))
    assert _uses_quick_gelu(nc.load_model(clip_pretrained=file, **TINY))


def test_ambiguity_fails_before_any_download(tiny_clip_file, tiny_tags, tmp_path, monkeypatch):
    tiny_tags({"openai": True, "laion": False})
    monkeypatch.setitem(SAM_WEIGHTS, "vit_b", WeightsEntry("vit_b", "http://127.0.0.1:9/x.pth", None, "x.pth", "vit_b", ""))
    monkeypatch.setattr("pooch.retrieve", lambda *args, **kwargs: pytest.fail("downloaded before refusing"))
    with pytest.raises(AmbiguousWeightsError, match="laion"):
        nc.load_model(sam="vit_b", clip="tiny", clip_pretrained=tiny_clip_file, cache_dir=tmp_path, device="cpu")


def test_a_damaged_clip_file_is_named(tiny_clip_file, tmp_path):
    file = tmp_path / "open_clip_model.safetensors"
    file.write_bytes(tiny_clip_file.read_bytes()[:-200])
    with pytest.raises(ValueError, match=re.escape(f"{file} is not a readable safetensors file")):
        nc.load_model(clip_pretrained=file, **TINY)


def test_pickled_code_in_clip_weights_is_refused(tmp_path):
    marker = tmp_path / "marker.txt"
    file = tmp_path / "open_clip_pytorch_model.bin"
    torch.save({**build_clip("tiny").state_dict(), "extra": CodeOnUnpickle(marker)}, file)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(str(file))):
        nc.load_model(clip_pretrained=file, **TINY)
    assert not marker.exists()


def test_an_hf_hub_model_with_random_weights_needs_only_its_config(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda *a, **k: pytest.fail("network"))
    config = json.loads(files("napari_clipsam").joinpath("model_configs/clipsam-tiny.json").read_text())
    folder = tmp_path / "clip" / "hf-hub_org_tiny"
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {**config, "quick_gelu": True}}))
    model = nc.load_model(sam="tiny", clip="hf-hub:org/tiny", sam_checkpoint=None, clip_pretrained=None,
                          cache_dir=tmp_path, device="cpu", precision="fp32")
    assert _uses_quick_gelu(model)
    assert model.clip.visual.conv1.out_channels == config["vision_cfg"]["width"]
