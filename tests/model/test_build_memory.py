"""Loading weights without a second copy in memory, and a model stack without triton on CPU-only machines."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_clipsam.model.build import _free_weights, _restore_dtypes
from napari_clipsam.model.build_sam import build_sam
from napari_clipsam.model.clip import build_clip
from napari_clipsam.weights.checkpoints import load_state_dict_checked
from tests.helpers import load_tiny


def _files(tmp_path, sam_dtype=torch.float32):
    torch.manual_seed(3)
    sam_state = {key: value.to(sam_dtype) if value.is_floating_point() else value
                 for key, value in build_sam("tiny").state_dict().items()}
    sam_path = tmp_path / "sam_tiny.pth"
    torch.save(sam_state, sam_path)
    clip_state = {key: value.contiguous() for key, value in build_clip("tiny").state_dict().items()}
    clip_path = tmp_path / "open_clip_model.safetensors"
    save_file(clip_state, str(clip_path))
    return sam_path, sam_state, clip_path, clip_state


def test_loaded_weights_are_the_files_and_unsaved_buffers_stay(tmp_path):
    sam_path, sam_state, clip_path, clip_state = _files(tmp_path)
    model = load_tiny(sam_checkpoint=sam_path, clip_pretrained=clip_path)
    for prefix, state in (("sam.", sam_state), ("clip.", clip_state)):
        loaded = model.state_dict()
        for key, value in state.items():
            assert torch.equal(loaded[prefix + key], value), key
    tensors = list(model.state_dict().values()) + list(model.buffers())
    assert not any(tensor.is_meta for tensor in tensors)
    # Buffers that are not in a state dict: built, never read from the file.
    assert model.sam.pixel_mean.flatten().tolist() == pytest.approx([123.675, 116.28, 103.53])
    assert torch.equal(model.clip.attn_mask, build_clip("tiny").attn_mask)
    assert "load_state_dict" not in vars(model.clip)  # the loader's instance override is gone
    # The same masks as a model whose weights were copied in (the way before).
    copied = load_tiny()
    copied.sam.load_state_dict(sam_state, strict=False)  # the adapters are not in SAM's file
    copied.clip.load_state_dict(clip_state)
    image = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    from napari_clipsam import ClipSamPredictor

    outputs = []
    for each in (model, copied):
        predictor = ClipSamPredictor(each)
        predictor.set_image(image)
        predictor.set_concept("nucleus")
        outputs.append(predictor.predict(point_coords=[[40, 40]])[2])
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_a_float16_file_loads_as_float32_weights(tmp_path):
    sam_path, sam_state, _, _ = _files(tmp_path, sam_dtype=torch.float16)
    model = load_tiny(sam_checkpoint=sam_path)
    weights = model.sam.state_dict()
    assert {value.dtype for value in weights.values() if value.is_floating_point()} == {torch.float32}
    key = "image_encoder.patch_embed.proj.weight"
    assert torch.equal(weights[key], sam_state[key].float())
    assert weights[key].is_contiguous()


def test_freed_weights_take_no_memory_until_assigned():
    sam = build_sam("tiny")
    state = {key: value.clone() for key, value in sam.state_dict().items()}
    requires_grad = {name: p.requires_grad for name, p in sam.named_parameters()}
    dtypes = _free_weights(sam)
    assert all(value.is_meta for value in sam.state_dict().values())
    assert not sam.pixel_mean.is_meta  # not saved in checkpoints: kept
    load_state_dict_checked(sam, state, what="test", assign=True)
    _restore_dtypes(sam, dtypes)
    assert all(torch.equal(sam.state_dict()[key], value) for key, value in state.items())
    assert {name: p.requires_grad for name, p in sam.named_parameters()} == requires_grad


@pytest.mark.skipif(torch.cuda.is_available(), reason="triton is kept where CUDA can use it")
def test_the_segment_command_and_load_model_leave_triton_out_without_cuda(tmp_path):
    script = (
        "import importlib.util, sys, numpy as np\n"
        "installed = importlib.util.find_spec('triton') is not None\n"
        "from napari_clipsam.cli import main\n"
        f"np.save({str(tmp_path / 'image.npy')!r}, np.zeros((64, 64), np.uint8))\n"
        f"code = main(['segment', {str(tmp_path / 'image.npy')!r}, '--concept', 'nucleus', '--preset', 'demo',\n"
        f"             '--device', 'cpu', '-o', {str(tmp_path / 'labels.tif')!r}])\n"
        "print(installed, code, sys.modules.get('triton', 'absent'))\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    installed, code, triton = completed.stdout.split()[-3:]
    if installed != "True":
        pytest.skip("triton is not installed")
    assert code == "0" and triton == "None"  # import blocked: torch treats triton as not installed
