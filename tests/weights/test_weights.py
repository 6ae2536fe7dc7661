"""The weights registry, downloads (pooch, huggingface_hub) and the offline message; every test
stays on this machine (a local server stands in for the hosts and the Hub)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from pathlib import Path

import pytest
import torch
import xxhash

import napari_clipsam as nc
from napari_clipsam.errors import ChecksumMismatchError, WeightsUnavailableError
from napari_clipsam.model.build_sam import SAM_BUILDERS, build_sam
from napari_clipsam.weights import download, registry
from napari_clipsam.weights.checkpoints import load_sam_state_dict
from napari_clipsam.weights.registry import (
    DEFAULT_CLIP_PRETRAINED,
    DEFAULT_CLIP_WEIGHTS,
    SAM_WEIGHTS,
    WeightsEntry,
    cache_dir,
    fetch,
    hub_repo_id,
    list_sam_weights,
    parse_weights_choice,
    resolve_clip_checkpoint,
    resolve_sam_checkpoint,
    resolve_weights,
    weights_path,
)

from .conftest import COMMIT

# Failing offline takes well under a second; huggingface_hub's retries would take ~25 s per file.
OFFLINE_SECONDS = 20
MIB = 1 << 20
OPENAI_REPO = "timm/vit_base_patch16_clip_224.openai"


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    """A tiny SAM's state dict as torch.save writes it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(build_sam("tiny").state_dict(), path)
    return path.read_bytes()


def _entry(url: str, content: bytes | None, filename: str = "tiny_sam.pth", xxh128: bool = False) -> WeightsEntry:
    if content is None:
        known_hash = None
    else:
        known_hash = f"xxh128:{xxhash.xxh128(content).hexdigest()}" if xxh128 else f"sha256:{hashlib.sha256(content).hexdigest()}"
    return WeightsEntry("tiny_test", url, known_hash, filename, "tiny", "tiny SAM for tests")


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if not path.name.endswith(".pth"))


def _never(*args, **kwargs):
    raise AssertionError("a download was attempted")


def _hub_path(repo_id: str, filename: str) -> str:
    return f"/{repo_id}/resolve/main/{filename}"


# ---------------------------------------------------------------------------------
# Registry and cache folder


def test_registry_entries_are_complete():
    assert {"vit_b", "vit_l", "vit_h", "vit_b_lm", "vit_l_lm", "vit_b_em_organelles"} <= set(SAM_WEIGHTS)
    filenames = [entry.filename for entry in SAM_WEIGHTS.values()]
    assert len(set(filenames)) == len(filenames), "two entries would share a cache file"
    for name, entry in SAM_WEIGHTS.items():
        assert entry.name == name and entry.url.startswith("https://")
        assert entry.architecture in SAM_BUILDERS and entry.architecture != "tiny"
        assert entry.filename and "/" not in entry.filename
        # Documented: micro-sam publishes only xxh128 digests for its files.
        assert re.fullmatch(r"sha256:[0-9a-f]{64}|xxh128:[0-9a-f]{32}", entry.known_hash), name
    assert SAM_WEIGHTS["vit_b"].known_hash.startswith("sha256:ec2df627")  # "01ec64" is its file tag
    assert SAM_WEIGHTS["vit_b_lm"].known_hash == "xxh128:fe9252a29f3f4ea53c15a06de471e186"
    assert list_sam_weights("vit_l") == ["vit_l", "vit_l_lm", "vit_l_em_organelles"]
    assert set(list_sam_weights()) == set(SAM_WEIGHTS)


def test_default_clip_weights_are_those_open_clip_names():
    import open_clip

    for model, (tag, repo_id) in DEFAULT_CLIP_WEIGHTS.items():
        assert DEFAULT_CLIP_PRETRAINED[model] == tag
        assert open_clip.get_pretrained_cfg(model, tag)["hf_hub"].strip("/") == repo_id


def test_cache_dir_precedence(monkeypatch, tmp_path):
    import platformdirs

    monkeypatch.setenv("NAPARI_CLIPSAM_CACHE", str(tmp_path / "from_env"))
    assert cache_dir(tmp_path / "argument") == tmp_path / "argument"
    assert cache_dir() == tmp_path / "from_env"
    monkeypatch.delenv("NAPARI_CLIPSAM_CACHE")
    default = cache_dir()
    assert default == Path(platformdirs.user_cache_dir("napari-clipsam"))
    assert Path(registry.__file__).resolve().parents[1] not in default.resolve().parents
    assert weights_path(SAM_WEIGHTS["vit_b"], tmp_path) == tmp_path / "sam" / "sam_vit_b_01ec64.pth"


def test_names_as_typed():
    assert [parse_weights_choice(text) for text in ("None", " random ", "none (random)")] == [None] * 3
    assert parse_weights_choice("") == "default" and parse_weights_choice(" vit_b_lm ") == "vit_b_lm"
    assert parse_weights_choice(Path("x.pth")) == Path("x.pth")
    assert hub_repo_id("hf-hub:org/repo") == "org/repo"
    assert hub_repo_id("ViT-B-16") is None


# ---------------------------------------------------------------------------------
# SAM downloads (pooch)


def test_fetch_downloads_verifies_reports_progress_and_reuses(host, tmp_path, monkeypatch):
    payload = bytes(range(256)) * (10 * 1024) + b"tail"  # 2.5 MiB: several progress steps
    host.files["/big.pth"] = payload
    entry = _entry(host.url("/big.pth"), payload)
    calls: list[tuple[int, int | None]] = []

    path = fetch(entry, cache_dir=tmp_path, progress=lambda *args: calls.append(args))

    assert path == tmp_path / "sam" / "tiny_sam.pth" and path.read_bytes() == payload
    assert host.downloads() == ["/big.pth"]
    assert calls == [(MIB, len(payload)), (2 * MIB, len(payload)), (len(payload), len(payload))]
    assert _leftovers(path.parent) == []

    # Found again, its hash checked, without a request.
    monkeypatch.setattr("pooch.retrieve", _never)
    assert fetch(entry, cache_dir=tmp_path) == path
    assert host.downloads() == ["/big.pth"]


def test_xxh128_hashes_are_checked(host, tmp_path, checkpoint_bytes):
    host.files["/lm.pt"] = checkpoint_bytes
    path = fetch(_entry(host.url("/lm.pt"), checkpoint_bytes, xxh128=True), cache_dir=tmp_path)
    assert load_sam_state_dict(path).keys() == build_sam("tiny").state_dict().keys()
    with pytest.raises(ChecksumMismatchError, match="XXH128"):
        fetch(_entry(host.url("/lm.pt"), b"other", filename="other.pt", xxh128=True), cache_dir=tmp_path)


def test_a_changed_file_is_hashed_again_and_replaced(host, tmp_path, checkpoint_bytes):
    host.files["/tiny.pth"] = checkpoint_bytes
    entry = _entry(host.url("/tiny.pth"), checkpoint_bytes)
    path = fetch(entry, cache_dir=tmp_path)
    path.write_bytes(b"damaged")  # size and modification time change: the stamp no longer vouches

    assert fetch(entry, cache_dir=tmp_path) == path
    assert path.read_bytes() == checkpoint_bytes
    assert len(host.downloads()) == 2


def test_a_file_saved_by_hand_is_used_without_download(host, tmp_path, checkpoint_bytes):
    entry = _entry(host.url("/never-served.pth"), checkpoint_bytes)
    destination = weights_path(entry, tmp_path)
    destination.parent.mkdir(parents=True)
    destination.write_bytes(checkpoint_bytes)

    assert fetch(entry, cache_dir=tmp_path) == destination
    assert host.requests == []


def test_a_corrupt_download_is_refused_and_leaves_nothing(host, tmp_path, checkpoint_bytes):
    host.files["/tiny.pth"] = checkpoint_bytes
    entry = _entry(host.url("/tiny.pth"), b"other content")
    with pytest.raises(ChecksumMismatchError) as info:
        fetch(entry, cache_dir=tmp_path)
    message = str(info.value)
    assert entry.known_hash in message and hashlib.sha256(checkpoint_bytes).hexdigest() in message
    assert str(tmp_path / "sam" / "tiny_sam.pth") in message
    assert list((tmp_path / "sam").iterdir()) == []


def test_failed_downloads_never_replace_an_existing_file(host, tmp_path, checkpoint_bytes):
    destination = weights_path(_entry("unused", None), tmp_path)
    destination.parent.mkdir(parents=True)
    destination.write_bytes(b"the file that is already there")

    host.files["/tiny.pth"] = b"corrupt bytes"
    with pytest.raises(ChecksumMismatchError):
        fetch(_entry(host.url("/tiny.pth"), checkpoint_bytes), cache_dir=tmp_path)
    assert destination.read_bytes() == b"the file that is already there"

    host.files["/tiny.pth"], host.truncate = checkpoint_bytes, True
    with pytest.raises(WeightsUnavailableError, match="left as it is"):
        fetch(_entry(host.url("/tiny.pth"), checkpoint_bytes), cache_dir=tmp_path)
    assert destination.read_bytes() == b"the file that is already there"
    assert _leftovers(destination.parent) == []


def test_http_error_is_weights_unavailable(host, tmp_path):
    with pytest.raises(WeightsUnavailableError, match="404") as info:
        fetch(_entry(host.url("/missing.pth"), b"x"), cache_dir=tmp_path)
    assert not isinstance(info.value, ChecksumMismatchError)


def test_a_host_that_refuses_fails_fast_without_trying_to_download(tmp_path, block_network, monkeypatch):
    monkeypatch.setattr("pooch.retrieve", _never)
    start = time.monotonic()
    # Port 9 (discard) on this machine refuses connections.
    with pytest.raises(WeightsUnavailableError, match="no connection to 127.0.0.1:9"):
        fetch(_entry("http://127.0.0.1:9/tiny.pth", b"x"), cache_dir=tmp_path)
    assert time.monotonic() - start < OFFLINE_SECONDS


def test_resolve_sam_checkpoint(tmp_path, block_network):
    assert resolve_sam_checkpoint("vit_b", None) is None
    with pytest.raises(ValueError, match="None"):
        resolve_sam_checkpoint("tiny", "default")
    with pytest.raises(ValueError, match="vit_l"):
        resolve_sam_checkpoint("vit_b", "vit_l_lm")
    file = tmp_path / "mine.pth"
    file.write_bytes(b"x")
    assert resolve_sam_checkpoint("tiny", str(file)) == file == resolve_sam_checkpoint("tiny", file)
    with pytest.raises(FileNotFoundError) as info:
        resolve_sam_checkpoint("vit_b", tmp_path / "nope.pth")
    assert str(tmp_path / "nope.pth") in str(info.value) and "vit_b_em_organelles" in str(info.value)
    with pytest.raises(WeightsUnavailableError, match=re.escape("sam_vit_l_0b3195.pth")):
        resolve_sam_checkpoint("vit_l", "default", cache_dir=tmp_path)
    with pytest.raises(WeightsUnavailableError, match=re.escape("micro_sam_vit_b_lm.pt")):
        resolve_sam_checkpoint("vit_b", "vit_b_lm", cache_dir=tmp_path)


# ---------------------------------------------------------------------------------
# CLIP weights (huggingface_hub, against the local server as the Hub)


def test_clip_weights_download_from_the_hub_with_progress(hub, tmp_path, monkeypatch):
    payload = b"w" * 3000
    hub.files[_hub_path(OPENAI_REPO, "open_clip_model.safetensors")] = payload
    calls = []

    path, cfg = resolve_clip_checkpoint("ViT-B-16", "default", tmp_path, progress=lambda *args: calls.append(args))

    snapshot = tmp_path / "clip" / f"models--{OPENAI_REPO.replace('/', '--')}" / "snapshots" / COMMIT
    assert path == snapshot / "open_clip_model.safetensors" and path.read_bytes() == payload
    assert calls == [(0, 3000), (3000, 3000)]
    assert cfg["quick_gelu"] is True and cfg["hf_hub"].startswith(OPENAI_REPO)
    cfg["quick_gelu"] = False  # a copy: open_clip's registry is untouched

    # Found in the Hub cache next time, with no request at all.
    requests = len(hub.requests)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", _never)
    again, fresh_cfg = resolve_clip_checkpoint("ViT-B-16", "openai", tmp_path)
    assert again == path and fresh_cfg["quick_gelu"] is True and len(hub.requests) == requests


def test_clip_pytorch_file_is_taken_where_the_repository_has_no_safetensors(hub, tmp_path):
    repo_id = "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"
    hub.files[_hub_path(repo_id, "open_clip_pytorch_model.bin")] = b"bin"
    path, cfg = resolve_clip_checkpoint("ViT-B-16", "laion2b_s34b_b88k", tmp_path)
    assert path.name == "open_clip_pytorch_model.bin" and path.read_bytes() == b"bin"
    assert cfg["quick_gelu"] is False


def test_clip_file_saved_by_hand_is_found(tmp_path, block_network, monkeypatch):
    monkeypatch.setattr("huggingface_hub.hf_hub_download", _never)
    folder = tmp_path / "clip" / "ViT-B-16_openai"
    folder.mkdir(parents=True)
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"x")
    path, cfg = resolve_clip_checkpoint("ViT-B-16", "default", cache_dir=tmp_path)
    assert path == folder / "open_clip_pytorch_model.bin" and cfg["quick_gelu"] is True


def test_clip_none_file_and_unknown_tag(tmp_path):
    assert resolve_clip_checkpoint("ViT-B-16", None) == (None, {})
    file = tmp_path / "weights.bin"
    file.write_bytes(b"x")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True}}))
    assert resolve_clip_checkpoint("ViT-B-16", str(file)) == (file, {"quick_gelu": True})
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.bin"))):
        resolve_clip_checkpoint("ViT-B-16", tmp_path / "nope.bin")
    with pytest.raises(ValueError, match="no_such_tag") as info:
        resolve_clip_checkpoint("ViT-B-16", "no_such_tag")
    assert "laion2b_s34b_b88k" in str(info.value)
    with pytest.raises(ValueError, match="tiny"):
        resolve_clip_checkpoint("tiny", "default")


def test_hf_hub_model_saved_by_hand(tmp_path, block_network):
    folder = tmp_path / "clip" / "hf-hub_org_model"
    folder.mkdir(parents=True)
    (folder / "open_clip_model.safetensors").write_bytes(b"x")
    config = {"model_cfg": {"embed_dim": 512, "quick_gelu": True}, "preprocess_cfg": {"mean": [0.5] * 3}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))

    path, cfg = resolve_clip_checkpoint("hf-hub:org/model", "default", cache_dir=tmp_path)
    assert path == folder / "open_clip_model.safetensors"
    assert cfg["quick_gelu"] is True and cfg["mean"] == [0.5] * 3 and cfg["model_cfg"]["embed_dim"] == 512
    # Random weights still need the configuration (the architecture), but no weights file.
    (folder / "open_clip_model.safetensors").unlink()
    assert resolve_clip_checkpoint("hf-hub:org/model", None, cache_dir=tmp_path)[1] == cfg
    with pytest.raises(ValueError, match="Hugging Face Hub repository"):
        resolve_clip_checkpoint("hf-hub:org/model", "openai", cache_dir=tmp_path)


# ---------------------------------------------------------------------------------
# Offline: one error that lists every missing file


def test_offline_load_model_lists_every_file_at_once_and_fast(tmp_path, block_network, monkeypatch):
    monkeypatch.setattr("pooch.retrieve", _never)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", _never)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        nc.load_model(cache_dir=tmp_path, device="cpu")
    assert time.monotonic() - start < OFFLINE_SECONDS
    message = str(info.value)
    sam = SAM_WEIGHTS["vit_b"]
    for text in (
        sam.url, str(tmp_path / "sam" / sam.filename), sam.known_hash,
        f"https://huggingface.co/{OPENAI_REPO}/resolve/main/open_clip_model.safetensors",
        str(tmp_path / "clip" / "ViT-B-16_openai" / "open_clip_model.safetensors"), "none pinned",
        "sam_checkpoint=None, clip_pretrained=None", "--sam-checkpoint none --clip-pretrained none",
        '"none (random)"', "NAPARI_CLIPSAM_CACHE",
    ):
        assert text in message
    assert message.count("no connection") == 2
    assert not (tmp_path / "sam" / sam.filename).exists()


def test_hub_offline_mode_is_honoured_and_the_rest_still_downloads(hub, tmp_path, checkpoint_bytes, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.hf_hub_download", _never)
    hub.files["/tiny.pth"] = checkpoint_bytes
    entry = dataclasses.replace(_entry(hub.url("/tiny.pth"), checkpoint_bytes), architecture="vit_b")
    monkeypatch.setitem(SAM_WEIGHTS, "vit_b", entry)

    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE") as info:
        resolve_weights("vit_b", "default", "ViT-B-16", "default", cache_dir=tmp_path)

    assert "SAM checkpoint" not in str(info.value)  # the SAM file did download
    assert (tmp_path / "sam" / "tiny_sam.pth").read_bytes() == checkpoint_bytes
    assert hub.downloads() == ["/tiny.pth"]


def test_every_failure_is_listed_with_its_own_reason(hub, tmp_path):
    name = "hf-hub:org/model"
    hub.files[_hub_path("org/model", "open_clip_config.json")] = json.dumps({"model_cfg": {}}).encode()
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_weights("vit_b", "default", name, "default", cache_dir=tmp_path)
    message = str(info.value)
    assert "SAM checkpoint 'vit_b': no connection to dl.fbaipublicfiles.com" in message
    assert re.search(r"CLIP hf-hub:org/model weights: the download failed \(\w+: 404", message)
    assert str(tmp_path / "clip" / "hf-hub_org_model" / "open_clip_model.safetensors") in message
    assert "configuration" not in message  # that one downloaded
    assert download.find_on_disk(registry.clip_file(name, None, "org/model", tmp_path, config=True)) is not None
