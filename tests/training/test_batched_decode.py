"""The batched training step decodes and scores each sample exactly as it would alone."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_clipsam.inference.sam_frame import logits_in_frame
from napari_clipsam.training import engine
from napari_clipsam.training.augment import Augmented, augment, photometric
from napari_clipsam.training.batched_decode import decode_batch
from napari_clipsam.training.config import TrainingConfig
from napari_clipsam.training.data import ConceptDataset
from napari_clipsam.training.losses import segmentation_loss, target_in_frame
from tests.helpers import load_tiny, randomize_adapters, two_kinds_image


def _model():
    torch.manual_seed(0)
    model = load_tiny()
    randomize_adapters(model)
    return model


def _mixed_prompts(model, seed: int = 0):
    """Prompts in SAM's frame of every layout training makes, each with and without a mask prompt."""
    generator = torch.Generator().manual_seed(seed)
    size = float(model.image_size)

    def points(count, negatives=0):
        coords = torch.rand(1, count, 2, generator=generator) * size
        return coords, torch.tensor([[1] * (count - negatives) + [0] * negatives], dtype=torch.int)

    def box():
        corner = torch.rand(1, 2, generator=generator) * size / 2
        return torch.cat([corner, corner + size / 4], dim=1)

    def mask():
        return (torch.rand(1, 1, *model.mask_input_size, generator=generator) > 0.5).float() * 255.0

    layouts = [
        (points(5), None),  # text mode: up to num_points positives, no box (SAM appends a padding point)
        (points(2), None),
        (points(0), None),  # text mode on a map without peaks: only the padding point
        (points(3, negatives=1), box()),  # manual mode with a box
        (points(1), box()),
        (points(4, negatives=2), None),  # as many tokens as 3 points + box: one transformer call
        (None, box()),
        (None, None),  # nothing but the mask prompt
    ]
    return [(p, b, mask() if with_mask else None) for p, b in layouts for with_mask in (True, False)]


@pytest.mark.parametrize("resolution", [None, 128])
@pytest.mark.parametrize("multimask", [False, True])
def test_a_batch_decodes_each_sample_as_decode_does_alone(resolution, multimask):
    model = _model()
    with torch.no_grad(), model.at_resolution(resolution):
        prompts = _mixed_prompts(model)
        grid = model.mask_input_size[0] // 4
        embeddings = torch.randn(len(prompts), model.sam.prompt_encoder.embed_dim, grid, grid,
                                 generator=torch.Generator().manual_seed(1))
        points, boxes, masks = zip(*prompts)
        logits, iou = decode_batch(model, embeddings, points, boxes, masks, multimask)
        for i, (p, b, m) in enumerate(prompts):
            expected_logits, expected_iou = model.decode(embeddings[i : i + 1], p, b, m, multimask)
            torch.testing.assert_close(logits[i : i + 1], expected_logits, rtol=0, atol=1e-5)
            torch.testing.assert_close(iou[i : i + 1], expected_iou, rtol=0, atol=1e-5)
        assert logits.shape == (len(prompts), 3 if multimask else 1, *model.mask_input_size)
    # SAM's own prompt encoder keeps its native sizes.
    assert model.sam.prompt_encoder.input_image_size == (model.sam.image_encoder.img_size,) * 2


def test_a_batch_needs_one_prompt_set_per_embedding():
    model = _model()
    embeddings = torch.zeros(2, model.sam.prompt_encoder.embed_dim, 16, 16)
    with pytest.raises(ValueError, match="2 embeddings need as many prompts"):
        decode_batch(model, embeddings, [None], [None], [None])


def _reference_train_step(model, optimizer, batch, indices, cache, config, rng, layouts):
    """The per-sample training step the batched one replaced: CLIP, decode, target and loss per sample.

    Appends each sample's sparse prompt layout (point count, box or not) to ``layouts``.
    """
    views = [augment(sample, index, rng, config.augment) for sample, index in zip(batch, indices)]
    sam_inputs, input_sizes, patches = [], [], []
    for view in views:
        sam_input, input_size = model.sam_input(photometric(view.image, rng) if config.augment else view.image)
        sam_inputs.append(sam_input)
        input_sizes.append(input_size)
        if cache.frozen and view.key in cache.features:
            patches.append(cache.features[view.key])
            continue
        with torch.set_grad_enabled(not cache.frozen):
            patches.append(model.clip_features(model.clip_input(view.image))[1])
        if cache.frozen and view.key is not None:
            cache.features[view.key] = patches[-1].detach()
    text = engine._text_embeddings(model, [sample.concept for sample in batch], config.train_base)
    patch_grid = torch.cat(patches)
    similarity = model.similarity(patch_grid, text)
    conditioning = model.conditioning(text, patch_grid, similarity)
    optimizer.zero_grad(set_to_none=True)
    embeddings = model.encode_image(torch.cat(sam_inputs), conditioning, config.gradient_checkpointing)
    losses = []
    for i, (view, input_size) in enumerate(zip(views, input_sizes)):
        points, boxes, mask_prompt, target_mask, _ = engine._training_prompts(model, view, similarity[i : i + 1],
                                                                           input_size, config, rng)
        layouts.append((None if points is None else points[0].shape[1], boxes is not None))
        logits, predicted_iou = model.decode(embeddings[i : i + 1], points, boxes, mask_prompt, False)
        size = model.mask_input_size
        if config.full_resolution_loss:  # the logits as inference upsamples them, the truth at that size
            logits, size = logits_in_frame(logits, model.image_size), (model.image_size, model.image_size)
        target = target_in_frame(target_mask, input_size, model.image_size, size, model.device)
        losses.append(segmentation_loss(logits, predicted_iou, target)["loss"])
        if config.train_base and view.mask.any():
            share = F.interpolate(torch.as_tensor(view.mask, dtype=torch.float32)[None, None],
                                  size=tuple(similarity.shape[-2:]), mode="area")[0, 0]
            losses[-1] = losses[-1] + F.mse_loss(similarity[i], share)
    loss = torch.stack(losses).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for _, p in model.trainable_parameters()], max_norm=1.0)
    optimizer.step()
    model.weights_version += 1
    if config.train_base:
        model.forget_text_embeddings()
    return float(loss.detach())


@pytest.mark.parametrize("train_base, full_resolution_loss", [(True, True), (False, True), (False, False)])
def test_a_batched_step_has_the_loss_and_gradients_of_per_sample_steps(train_base, full_resolution_loss):
    """Two steps (the second reuses cached CLIP features while CLIP is frozen): same loss, gradients, weights."""
    images = [two_kinds_image(seed) for seed in range(3)]
    items = [(image, {"disc": labels * (labels == 1), "square": labels * (labels == 2)}) for image, labels in images]
    items.append((images[0][0], {"disc": np.zeros_like(images[0][1])}))  # an absent concept: text mode, empty target
    dataset = ConceptDataset.from_instance_labels(items, absent=["disc"])
    config = TrainingConfig(mode="both", batch_size=12, augment=True, train_base=train_base, seed=0,
                            full_resolution_loss=full_resolution_loss)
    layouts, results = [], []
    for model, step in ((_model(), engine._train_step), (_model(), partial(_reference_train_step, layouts=layouts))):
        model.freeze_base()
        if train_base:
            model.requires_grad_(True)
        model.eval()
        # Plain SGD: Adam would magnify float noise in gradients that are zero in theory (CLIP's key biases).
        optimizer = torch.optim.SGD([p for _, p in model.trainable_parameters()], lr=0.1)
        cache = engine._FeatureCache(model, clip_trains=train_base)
        rng = np.random.default_rng(3)
        steps = []
        for _ in range(2):
            indices = [int(i) for i in rng.integers(0, len(dataset), size=config.batch_size)]
            loss = step(model, optimizer, [dataset[i] for i in indices], indices, cache, config, rng)
            gradients = {name: p.grad.clone() for name, p in model.trainable_parameters() if p.grad is not None}
            steps.append((loss, gradients))
        results.append((steps, dict(model.trainable_parameters())))
    (batched_steps, batched_weights), (reference_steps, reference_weights) = results
    assert len(set(layouts)) >= 3  # the batches mixed sparse layouts (text points, clicks with and without a box)
    for (loss, gradients), (reference_loss, reference_gradients) in zip(batched_steps, reference_steps):
        assert loss == pytest.approx(reference_loss, rel=1e-5)
        assert gradients.keys() == reference_gradients.keys()
        for name, gradient in gradients.items():
            torch.testing.assert_close(gradient, reference_gradients[name], rtol=1e-4, atol=1e-6, msg=name)
    for name, weight in batched_weights.items():
        torch.testing.assert_close(weight, reference_weights[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_feature_cache_computes_the_views_it_lacks_in_one_call_each_key_once(monkeypatch):
    model = _model()
    image, labels = two_kinds_image(0)
    turned = [np.ascontiguousarray(np.rot90(np.repeat(image[..., None], 3, axis=2), k)) for k in range(3)]
    view = lambda k, key: Augmented(turned[k], labels > 0, key, labels)  # noqa: E731
    calls, clip_features = [], model.clip_features
    monkeypatch.setattr(model, "clip_features", lambda inputs: calls.append(len(inputs)) or clip_features(inputs))
    cache = engine._FeatureCache(model, clip_trains=False)
    with torch.no_grad():
        for views, computed in (([view(0, (0, 0)), view(1, (0, 1)), view(0, (0, 0)), view(2, None)], 3),
                                ([view(1, (0, 1)), view(2, (0, 2)), view(2, None)], 2)):
            patches = cache.patches(views)
            assert calls.pop() == computed and not calls
            for row, one in enumerate(views):
                torch.testing.assert_close(patches[row : row + 1], clip_features(model.clip_input(one.image))[1],
                                           rtol=0, atol=1e-5)
    assert set(cache.features) == {(0, 0), (0, 1), (0, 2)}  # views without a key (crops) are not kept
