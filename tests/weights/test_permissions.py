"""Downloaded weights get the permissions the umask gives, so a cache shared by a lab stays readable.

A local server stands in for the hosts (see conftest.py); nothing leaves this machine.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from napari_clipsam.weights.registry import WeightsEntry, fetch, resolve_clip_checkpoint


@pytest.fixture
def umask():
    """Set the process's umask for one test; the earlier one comes back after it."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)],
                         ids=["umask-022", "umask-002", "umask-077"])
def test_a_url_download_gets_the_umask_permissions_not_pooch_private_ones(host, tmp_path, umask, mask, mode):
    payload = b"weights" * 100
    host.files["/w.pth"] = payload
    entry = WeightsEntry("tiny_test", host.url("/w.pth"), f"sha256:{hashlib.sha256(payload).hexdigest()}",
                         "w.pth", "tiny", "weights for a test")
    umask(mask)
    path = fetch(entry, cache_dir=tmp_path)
    assert path.read_bytes() == payload
    assert path.stat().st_mode & 0o777 == mode


def test_a_hub_download_gets_the_umask_permissions(hub, tmp_path, umask):
    repo_id = "timm/vit_base_patch16_clip_224.openai"
    hub.files[f"/{repo_id}/resolve/main/open_clip_model.safetensors"] = b"w" * 3000
    umask(0o022)
    path, _ = resolve_clip_checkpoint("ViT-B-16", "default", tmp_path)
    assert path.resolve().stat().st_mode & 0o777 == 0o644  # the blob the snapshot links to
