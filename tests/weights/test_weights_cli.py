"""``napari-clipsam weights list`` and ``fetch``."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from napari_clipsam.cli import main
from napari_clipsam.weights.registry import SAM_WEIGHTS, WeightsEntry


def test_list_shows_what_is_cached_where_the_loader_looks_without_importing_torch(tmp_path):
    (tmp_path / "sam").mkdir()
    (tmp_path / "sam" / SAM_WEIGHTS["vit_l"].filename).write_bytes(b"x")
    placed = tmp_path / "clip" / "ViT-B-32_openai" / "open_clip_model.safetensors"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"x")
    code = (
        "import sys; from napari_clipsam.cli import main; "
        f"code = main(['weights', 'list', '--cache-dir', {str(tmp_path)!r}]); "
        "print('imported:', sorted(m for m in ('torch', 'open_clip') if m in sys.modules)); sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "imported: []" in lines

    def line(start: str) -> str:
        return next(text for text in lines if text.split() and text.split()[0] == start)

    assert "cached" in line("vit_l") and "missing" in line("vit_b")
    assert "cached" in line("ViT-B-32/openai") and str(placed) in line("ViT-B-32/openai")
    assert "missing" in line("ViT-B-16/openai")
    assert str(tmp_path / "clip" / "ViT-B-16_openai" / "open_clip_model.safetensors") in line("ViT-B-16/openai")


def test_fetch_downloads_sam_and_clip_weights(hub, tmp_path, monkeypatch, capsys):
    body = b"sam weights"
    hub.files["/sam.pth"] = body
    monkeypatch.setitem(SAM_WEIGHTS, "test_sam", WeightsEntry(
        "test_sam", hub.url("/sam.pth"), f"sha256:{hashlib.sha256(body).hexdigest()}", "test_sam.pth", "vit_b", ""))
    hub.files["/laion/CLIP-ViT-B-16-laion2B-s34B-b88K/resolve/main/open_clip_model.safetensors"] = b"clip"
    hub.files["/org/model/resolve/main/open_clip_config.json"] = b"{}"
    hub.files["/org/model/resolve/main/open_clip_model.safetensors"] = b"hub model"

    argv = ["weights", "fetch", "test_sam", "ViT-B-16/laion2b_s34b_b88k", "hf-hub:org/model", "--cache-dir", str(tmp_path)]
    assert main(argv) == 0

    out = capsys.readouterr().out
    assert f"test_sam: {tmp_path / 'sam' / 'test_sam.pth'}" in out
    fetched = dict(line.split(": ", 1) for line in out.splitlines())
    assert open(fetched["ViT-B-16/laion2b_s34b_b88k"], "rb").read() == b"clip"
    assert open(fetched["hf-hub:org/model"], "rb").read() == b"hub model"


@pytest.mark.parametrize("names", [["no_such_weights/x"], []])
def test_fetch_of_nothing_known_fails_with_a_message(names, tmp_path, block_network, capsys):
    assert main(["weights", "fetch", *names, "--cache-dir", str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().err
