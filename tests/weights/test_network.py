"""Real downloads of the published weights: deselected by default (``pytest -m network``).

These need internet access and about 1 GB of downloads into a temporary cache (the first
test only asks each host whether its files are there).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_clipsam as nc
from napari_clipsam.weights.checkpoints import load_sam_state_dict
from napari_clipsam.weights.registry import DEFAULT_CLIP_WEIGHTS, SAM_WEIGHTS, clip_file, fetch

pytestmark = pytest.mark.network


def test_every_url_the_offline_message_names_is_there(tmp_path):
    import requests

    files = [clip_file(model, tag, repo_id, tmp_path) for model, (tag, repo_id) in DEFAULT_CLIP_WEIGHTS.items()]
    urls = [entry.url for entry in SAM_WEIGHTS.values()] + [file.url for file in files]
    for url in urls:
        response = requests.head(url, allow_redirects=True, timeout=30)
        assert response.status_code == 200, url


def test_official_vit_b_checkpoint_downloads_verifies_and_loads(tmp_path):
    path = fetch(SAM_WEIGHTS["vit_b"], cache_dir=tmp_path)
    state_dict = load_sam_state_dict(path)
    assert state_dict["image_encoder.patch_embed.proj.weight"].shape == (768, 3, 16, 16)


def test_default_model_segments_coins(tmp_path):
    from skimage import data

    model = nc.load_model(device="cpu", cache_dir=tmp_path)
    coins = data.coins()
    labels = nc.segment(coins, "coin", model=model, instances=True, min_area=50)
    # The coins cover about a third of the image; pretrained CLIP-guided SAM finds most.
    assert labels.max() >= 5
    assert 0.1 < (labels > 0).mean() < 0.8
    predictor = nc.ClipSamPredictor(model)
    predictor.set_image(coins)
    masks, scores, _ = predictor.predict(point_coords=[[48, 70]], multimask_output=True)
    assert masks.any(axis=(1, 2)).all() and np.all(scores > 0)
    assert torch.is_tensor(predictor.image_embedding)
