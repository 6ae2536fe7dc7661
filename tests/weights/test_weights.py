"""Weights registry, download cache and safe loading; every test stays off the network."""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from napari_clipsam.errors import (
    CheckpointMismatchError,
    ChecksumMismatchError,
    UnsafeCheckpointError,
    WeightsUnavailableError,
)
from napari_clipsam.model.build_sam import SAM_BUILDERS, build_sam
from napari_clipsam.weights import registry as weights
from napari_clipsam.weights.checkpoints import load_sam_state_dict, load_state_dict_checked
from napari_clipsam.weights.registry import (
    SAM_WEIGHTS,
    WeightsEntry,
    cache_dir,
    fetch,
    list_sam_weights,
    resolve_clip_checkpoint,
    resolve_sam_checkpoint,
    weights_path,
)

# Offline failures must be quick; generous for a slow, shared 2-core machine.
OFFLINE_SECONDS = 20


# ---------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def tiny_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {key: value.clone() for key, value in build_sam("tiny").state_dict().items()}


@pytest.fixture(scope="module")
def tiny_checkpoint_bytes(tiny_state_dict, tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(tiny_state_dict, path)
    return path.read_bytes()


class _Server:
    """A local HTTP server: ``files`` maps URL paths to bytes; ``truncate`` cuts bodies short."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.truncate = False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if server.truncate else body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    running = _Server()
    yield running
    running.close()


def _entry(url: str, content: bytes | None, filename: str = "tiny_sam.pth") -> WeightsEntry:
    return WeightsEntry(
        name="tiny_test",
        url=url,
        sha256=None if content is None else hashlib.sha256(content).hexdigest(),
        filename=filename,
        architecture="tiny",
        description="tiny SAM for tests",
    )


@pytest.fixture
def block_network(monkeypatch):
    """Every socket connection fails at once, except to this machine (the test server)."""
    real_connect = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else ""
        if host in ("127.0.0.1", "::1", "localhost"):
            return real_connect(self, address)
        raise OSError(101, "Network is unreachable (blocked by the test)")

    monkeypatch.setattr(socket.socket, "connect", connect)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".part", ".tmp")))


# ---------------------------------------------------------------------------------
# Registry and cache folder


def test_registry_entries_are_complete():
    assert {"vit_b", "vit_l", "vit_h", "vit_b_lm", "vit_l_lm", "vit_b_em_organelles"} <= set(
        SAM_WEIGHTS
    )
    filenames = [entry.filename for entry in SAM_WEIGHTS.values()]
    assert len(set(filenames)) == len(filenames), "two entries would share a cache file"
    for name, entry in SAM_WEIGHTS.items():
        assert entry.name == name
        assert entry.url.startswith("https://"), entry.url
        assert entry.architecture in SAM_BUILDERS and entry.architecture != "tiny"
        assert entry.filename and "/" not in entry.filename
        if entry.sha256 is None:
            # Documented: micro-sam publishes only xxh128 digests for its files.
            assert entry.xxh128 is not None and re.fullmatch(r"[0-9a-f]{32}", entry.xxh128)
        else:
            assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256), name
    assert SAM_WEIGHTS["vit_b"].sha256.startswith("ec2df627")  # "01ec64" is its file tag
    assert list_sam_weights("vit_l") == ["vit_l", "vit_l_lm", "vit_l_em_organelles"]
    assert set(list_sam_weights()) == set(SAM_WEIGHTS)


def test_cache_dir_precedence(monkeypatch, tmp_path):
    import platformdirs

    monkeypatch.setenv("NAPARI_CLIPSAM_CACHE", str(tmp_path / "from_env"))
    assert cache_dir(tmp_path / "argument") == tmp_path / "argument"
    assert cache_dir() == tmp_path / "from_env"
    monkeypatch.delenv("NAPARI_CLIPSAM_CACHE")
    default = cache_dir()
    assert default == Path(platformdirs.user_cache_dir("napari-clipsam"))
    package_folder = Path(weights.__file__).resolve().parents[1]
    assert package_folder not in default.resolve().parents
    assert weights_path(SAM_WEIGHTS["vit_b"], tmp_path) == tmp_path / "sam" / "sam_vit_b_01ec64.pth"


# ---------------------------------------------------------------------------------
# Download


def test_fetch_downloads_verifies_and_reuses(
    server, tmp_path, tiny_checkpoint_bytes, tiny_state_dict
):
    server.files["/tiny.pth"] = tiny_checkpoint_bytes
    entry = _entry(server.url("/tiny.pth"), tiny_checkpoint_bytes)
    calls: list[tuple[int, int | None]] = []

    path = fetch(entry, cache_dir=tmp_path, progress=lambda *args: calls.append(args))

    assert path == tmp_path / "sam" / "tiny_sam.pth"
    assert path.read_bytes() == tiny_checkpoint_bytes
    assert server.requests == ["/tiny.pth"]
    done = [d for d, _ in calls]
    assert done[0] == 0 and done[-1] == len(tiny_checkpoint_bytes)
    assert done == sorted(done) and len(set(done)) == len(done)
    assert all(total == len(tiny_checkpoint_bytes) for _, total in calls)
    assert _leftovers(path.parent) == []

    # A second fetch uses the cache: no request, and no re-hashing thanks to the sidecar.
    def no_hashing(*args):
        raise AssertionError("the verified file was hashed again")

    original_digest = weights._file_digest
    weights._file_digest = no_hashing
    try:
        assert fetch(entry, cache_dir=tmp_path) == path
    finally:
        weights._file_digest = original_digest
    assert server.requests == ["/tiny.pth"]

    loaded = load_sam_state_dict(path)
    assert loaded.keys() == tiny_state_dict.keys()


def test_fetch_rehashes_a_changed_file_and_replaces_it(server, tmp_path, tiny_checkpoint_bytes):
    server.files["/tiny.pth"] = tiny_checkpoint_bytes
    entry = _entry(server.url("/tiny.pth"), tiny_checkpoint_bytes)
    path = fetch(entry, cache_dir=tmp_path)
    path.write_bytes(b"damaged")  # size and mtime change: the sidecar no longer vouches

    assert fetch(entry, cache_dir=tmp_path) == path
    assert path.read_bytes() == tiny_checkpoint_bytes
    assert len(server.requests) == 2


def test_hand_placed_file_is_used_without_download(server, tmp_path, tiny_checkpoint_bytes):
    entry = _entry(server.url("/never-served.pth"), tiny_checkpoint_bytes)
    destination = weights_path(entry, tmp_path)
    destination.parent.mkdir(parents=True)
    destination.write_bytes(tiny_checkpoint_bytes)

    assert fetch(entry, cache_dir=tmp_path) == destination
    assert server.requests == []


def test_wrong_hash_raises_and_leaves_nothing(server, tmp_path, tiny_checkpoint_bytes):
    server.files["/tiny.pth"] = tiny_checkpoint_bytes
    entry = _entry(server.url("/tiny.pth"), b"other content")
    with pytest.raises(ChecksumMismatchError) as info:
        fetch(entry, cache_dir=tmp_path)
    message = str(info.value)
    assert entry.sha256 in message
    assert hashlib.sha256(tiny_checkpoint_bytes).hexdigest() in message
    folder = tmp_path / "sam"
    assert list(folder.iterdir()) == []


def test_failed_downloads_never_replace_an_existing_file(server, tmp_path, tiny_checkpoint_bytes):
    existing = b"the file that is already there"
    destination = weights_path(_entry("unused", None), tmp_path)
    destination.parent.mkdir(parents=True)
    destination.write_bytes(existing)

    # The registry expects other content: a corrupt download must not replace the file.
    server.files["/tiny.pth"] = b"corrupt bytes"
    with pytest.raises(ChecksumMismatchError):
        fetch(_entry(server.url("/tiny.pth"), tiny_checkpoint_bytes), cache_dir=tmp_path)
    assert destination.read_bytes() == existing

    # A download that breaks off: the file stays, and the message says it was kept.
    server.files["/tiny.pth"] = tiny_checkpoint_bytes
    server.truncate = True
    with pytest.raises(WeightsUnavailableError) as info:
        fetch(_entry(server.url("/tiny.pth"), tiny_checkpoint_bytes), cache_dir=tmp_path)
    assert "wrong checksum" in str(info.value)
    assert destination.read_bytes() == existing
    assert _leftovers(destination.parent) == []


def test_unverifiable_entry_downloads_with_a_warning(server, tmp_path, caplog):
    server.files["/x.pth"] = b"payload"
    entry = _entry(server.url("/x.pth"), None)
    with caplog.at_level("WARNING", logger="napari_clipsam.weights.registry"):
        path = fetch(entry, cache_dir=tmp_path)
    assert path.read_bytes() == b"payload"
    assert "without verification" in caplog.text


def test_http_error_is_weights_unavailable(server, tmp_path):
    entry = _entry(server.url("/missing.pth"), b"x")
    with pytest.raises(WeightsUnavailableError, match="HTTP 404"):
        fetch(entry, cache_dir=tmp_path)


def test_offline_fetch_fails_fast_with_instructions(tmp_path, block_network):
    entry = SAM_WEIGHTS["vit_b"]
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        fetch(entry, cache_dir=tmp_path, timeout=5)
    assert time.monotonic() - start < OFFLINE_SECONDS
    message = str(info.value)
    assert entry.filename in message
    assert entry.url in message
    assert str(tmp_path / "sam" / entry.filename) in message
    assert entry.sha256 in message
    assert isinstance(info.value, OSError)
    assert not (tmp_path / "sam" / entry.filename).exists()


def test_unreachable_port_fails_fast(tmp_path):
    # Port 9 (discard) on this machine refuses connections: no network needed.
    entry = _entry("http://127.0.0.1:9/tiny.pth", b"x")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="no connection"):
        fetch(entry, cache_dir=tmp_path, timeout=5)
    assert time.monotonic() - start < OFFLINE_SECONDS


# ---------------------------------------------------------------------------------
# Resolving SAM checkpoints


def test_resolve_sam_checkpoint(tmp_path, block_network):
    assert resolve_sam_checkpoint("vit_b", None) is None
    with pytest.raises(ValueError, match="None"):
        resolve_sam_checkpoint("tiny", "default")
    with pytest.raises(ValueError, match="vit_l"):
        resolve_sam_checkpoint("vit_b", "vit_l_lm")

    file = tmp_path / "mine.pth"
    file.write_bytes(b"x")
    assert resolve_sam_checkpoint("tiny", str(file)) == file
    assert resolve_sam_checkpoint("tiny", file) == file

    with pytest.raises(FileNotFoundError) as info:
        resolve_sam_checkpoint("vit_b", tmp_path / "nope.pth")
    assert str(tmp_path / "nope.pth") in str(info.value)
    assert "vit_b_em_organelles" in str(info.value)

    # "default" means the official file of the variant (offline here: the error says which).
    with pytest.raises(WeightsUnavailableError, match=re.escape("sam_vit_l_0b3195.pth")):
        resolve_sam_checkpoint("vit_l", "default", cache_dir=tmp_path)
    with pytest.raises(WeightsUnavailableError, match=re.escape("micro_sam_vit_b_lm.pt")):
        resolve_sam_checkpoint("vit_b", "vit_b_lm", cache_dir=tmp_path)


# ---------------------------------------------------------------------------------
# Loading


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
    loaded_now = model.state_dict()
    assert all(torch.equal(loaded_now[key], value) for key, value in tiny_state_dict.items())


def test_lightning_and_data_parallel_wrappers_are_unwrapped(tmp_path, tiny_state_dict):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_state_dict.items()}}, path)
    assert load_sam_state_dict(path).keys() == tiny_state_dict.keys()


def test_safetensors_checkpoint_loads(tmp_path, tiny_state_dict):
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_state_dict.items()}, str(path))
    loaded = load_sam_state_dict(path)
    assert all(torch.equal(loaded[key], tiny_state_dict[key]) for key in tiny_state_dict)


def _create_marker(path: str) -> None:
    Path(path).write_text("code from the checkpoint ran")


class _Payload:
    """Unpickling this object calls _create_marker(path)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (_create_marker, (self.path,))


def test_pickled_code_is_refused_and_never_runs(tmp_path, tiny_state_dict):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pth"
    torch.save({"model_state": dict(tiny_state_dict), "extra": _Payload(marker)}, path)

    with pytest.raises(UnsafeCheckpointError, match="pickled Python objects") as info:
        load_sam_state_dict(path)
    assert "safety" in str(info.value)
    assert not marker.exists()

    # The payload is live: a plain unpickling would have run it.
    control = tmp_path / "control.txt"
    control_path = tmp_path / "control.pth"
    torch.save({"extra": _Payload(control)}, control_path)
    torch.load(control_path, weights_only=False)
    assert control.exists()


def test_unreadable_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_sam_state_dict(path)


def test_wrong_architecture_lists_mismatches(tiny_state_dict):
    model = build_sam("vit_b")
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_checked(model, tiny_state_dict, what="SAM vit_b checkpoint /x/tiny.pth")
    message = str(info.value)
    assert "SAM vit_b checkpoint /x/tiny.pth" in message
    assert "Missing keys" in message
    assert re.search(r"\.\.\. and \d+ more", message)
    patch_embed = "image_encoder.patch_embed.proj.weight"
    assert f"{patch_embed}: model (768, 3, 16, 16), file (32, 3, 16, 16)" in message
    assert "embed dim 32" in message


def test_mismatch_hint_names_the_variant(tiny_state_dict):
    model = build_sam("tiny")
    state = dict(tiny_state_dict)
    state["image_encoder.patch_embed.proj.weight"] = torch.zeros(1024, 3, 16, 16)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_checked(model, state, what="SAM checkpoint")
    message = str(info.value)
    assert "looks like a vit_l checkpoint" in message
    assert "Unexpected keys (1):\n  extra.weight" in message


def test_ignored_prefixes_need_not_be_in_the_file(tiny_state_dict):
    model = build_sam("tiny")
    model.image_encoder.blocks[0].clipsam_adapter = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointMismatchError, match=re.escape("clipsam_adapter.weight")):
        load_state_dict_checked(model, tiny_state_dict, what="SAM tiny checkpoint")
    adapter_before = model.image_encoder.blocks[0].clipsam_adapter.weight.clone()

    load_state_dict_checked(
        model, tiny_state_dict, what="SAM tiny checkpoint", ignore_prefixes=(".clipsam_",)
    )

    assert torch.equal(model.image_encoder.blocks[0].clipsam_adapter.weight, adapter_before)
    key = "mask_decoder.iou_token.weight"
    assert torch.equal(model.state_dict()[key], tiny_state_dict[key])


# ---------------------------------------------------------------------------------
# CLIP weights


def test_clip_none_and_file_and_unknown_tag(tmp_path):
    assert resolve_clip_checkpoint("ViT-B-16", None) == (None, {})
    file = tmp_path / "clip.bin"
    file.write_bytes(b"x")
    assert resolve_clip_checkpoint("ViT-B-16", str(file)) == (file, {})
    with pytest.raises(ValueError, match="openai") as info:
        resolve_clip_checkpoint("ViT-B-16", "no_such_tag")
    assert "laion2b_s34b_b88k" in str(info.value)
    with pytest.raises(ValueError, match="tiny"):
        resolve_clip_checkpoint("tiny", "default")


def test_clip_hand_placed_file_is_found(tmp_path, block_network):
    folder = tmp_path / "clip" / "ViT-B-16_openai"
    folder.mkdir(parents=True)
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"x")
    path, cfg = resolve_clip_checkpoint("ViT-B-16", "default", cache_dir=tmp_path)
    assert path == folder / "open_clip_pytorch_model.bin"
    assert cfg["quick_gelu"] is True
    cfg["quick_gelu"] = False  # a copy: open_clip's registry is untouched
    _, fresh_cfg = resolve_clip_checkpoint("ViT-B-16", "openai", cache_dir=tmp_path)
    assert fresh_cfg["quick_gelu"] is True


def _assert_clip_unavailable(info, tmp_path: Path, folder: str) -> None:
    message = str(info.value)
    assert "timm/vit_base_patch16_clip_224.openai" in message
    assert "open_clip_model.safetensors" in message
    assert str(tmp_path / "clip" / folder / "open_clip_model.safetensors") in message
    # open_clip's OpenAI URL embeds the original file's sha256; it is kept for reference.
    assert "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f" in message


def test_clip_offline_mode_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="offline") as info:
        resolve_clip_checkpoint("ViT-B-16", "default", cache_dir=tmp_path)
    assert time.monotonic() - start < OFFLINE_SECONDS
    _assert_clip_unavailable(info, tmp_path, "ViT-B-16_openai")


def test_clip_blocked_network_fails_fast(tmp_path, monkeypatch, block_network):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="no connection") as info:
        resolve_clip_checkpoint("ViT-B-16", "openai", cache_dir=tmp_path)
    assert time.monotonic() - start < OFFLINE_SECONDS
    _assert_clip_unavailable(info, tmp_path, "ViT-B-16_openai")


def test_clip_hf_hub_model_offline_names_the_repository(tmp_path, block_network):
    name = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_clip_checkpoint(name, "default", cache_dir=tmp_path)
    assert time.monotonic() - start < OFFLINE_SECONDS
    message = str(info.value)
    assert "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224" in message
    folder = tmp_path / "clip" / "hf-hub_microsoft_BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    assert str(folder / "open_clip_config.json") in message


def test_clip_hf_hub_model_hand_placed(tmp_path, block_network):
    import json

    folder = tmp_path / "clip" / "hf-hub_org_model"
    folder.mkdir(parents=True)
    (folder / "open_clip_model.safetensors").write_bytes(b"x")
    config = {
        "model_cfg": {"embed_dim": 512, "quick_gelu": True},
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))

    path, cfg = resolve_clip_checkpoint("hf-hub:org/model", "default", cache_dir=tmp_path)

    assert path == folder / "open_clip_model.safetensors"
    assert cfg["quick_gelu"] is True
    assert cfg["mean"] == [0.5, 0.5, 0.5]
    assert cfg["model_cfg"]["embed_dim"] == 512


def test_clip_earlier_hub_download_is_used_offline(tmp_path, block_network):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "clip" / "models--timm--vit_base_patch16_clip_224.openai"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"x")

    path, cfg = resolve_clip_checkpoint("ViT-B-16", "default", cache_dir=tmp_path)

    assert path == snapshot / "open_clip_model.safetensors"
    assert cfg["hf_hub"] == "timm/vit_base_patch16_clip_224.openai/"


def test_clip_download_goes_through_open_clip_and_reports_progress(tmp_path, monkeypatch):
    import open_clip.pretrained

    downloaded = tmp_path / "downloaded.safetensors"
    downloaded.write_bytes(b"12345")
    seen = {}

    def fake_download(cfg, cache_dir=None, **kwargs):
        seen.update(cfg=cfg, cache_dir=cache_dir)
        return str(downloaded)

    monkeypatch.setattr(weights, "_unreachable_reason", lambda url, timeout=5.0: None)
    monkeypatch.setattr(weights, "_hf_offline", lambda: False)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", fake_download)
    calls = []

    path, _ = resolve_clip_checkpoint(
        "ViT-B-16", "openai", cache_dir=tmp_path, progress=lambda *args: calls.append(args)
    )

    assert path == downloaded
    assert seen["cache_dir"] == str(tmp_path / "clip")
    assert seen["cfg"]["hf_hub"] == "timm/vit_base_patch16_clip_224.openai/"
    assert calls == [(0, None), (5, 5)]


def test_clip_download_failure_is_weights_unavailable(tmp_path, monkeypatch):
    import open_clip.pretrained

    def failing_download(cfg, cache_dir=None, **kwargs):
        raise RuntimeError("the hub said no")

    monkeypatch.setattr(weights, "_unreachable_reason", lambda url, timeout=5.0: None)
    monkeypatch.setattr(weights, "_hf_offline", lambda: False)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", failing_download)

    with pytest.raises(WeightsUnavailableError, match="the hub said no") as info:
        resolve_clip_checkpoint("ViT-B-16", "openai", cache_dir=tmp_path)
    assert isinstance(info.value.__cause__, RuntimeError)
    _assert_clip_unavailable(info, tmp_path, "ViT-B-16_openai")
