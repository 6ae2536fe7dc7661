"""Few-shot training and evaluation on the tiny model and synthetic two-concept images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_clipsam as nc
from napari_clipsam.inference.sam_frame import logits_in_frame, to_sam_frame
from napari_clipsam.training import engine as engine_module
from napari_clipsam.training.augment import augment
from napari_clipsam.training.config import TrainingConfig
from napari_clipsam.training.data import ConceptDataset, Sample
from napari_clipsam.training.engine import iter_train, resume_path, train
from napari_clipsam.training.evaluate import evaluate
from tests.helpers import load_tiny, two_kinds_image

MAPPING = {1: "disc", 2: "square"}


def _model():
    torch.manual_seed(0)
    return load_tiny()


@pytest.fixture
def datasets():
    train_set = ConceptDataset.from_arrays([(*two_kinds_image(seed), MAPPING) for seed in range(6)])
    val_set = ConceptDataset.from_arrays([(*two_kinds_image(100 + seed), MAPPING) for seed in range(3)])
    return train_set, val_set


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_raises_validation_iou(datasets, tmp_path):
    train_set, val_set = datasets
    model = _model()
    config = TrainingConfig(mode="text", steps=80, batch_size=2, learning_rate=3e-3, eval_every=40, patience=0, seed=0)
    events = []
    job = iter_train(model, train_set, val_set, config, output=tmp_path / "adapters.safetensors")
    while True:
        try:
            events.append(next(job))
        except StopIteration as stop:
            result = stop.value
            break
    assert np.mean(result.losses[-10:]) < 0.7 * np.mean(result.losses[:10])
    # Untrained, the random tiny model finds almost nothing (IoU ~0.06); 80 steps reach ~0.4.
    assert result.best.iou >= result.initial.iou + 0.2
    assert set(result.best.per_concept) == {"disc", "square"}
    steps = [e.step for e in events if e.stage == "training"]
    assert steps == list(range(1, 81))
    assert [e.step for e in events if e.validation is not None] == [0, 40, 80]

    # The saved adapters reload to identical predictions.
    reloaded = _model()
    reloaded.load_adapters(result.output)
    image = val_set[0].image
    outputs = []
    for candidate in (model, reloaded):
        predictor = nc.ClipSamPredictor(candidate)
        predictor.set_image(image)
        predictor.set_concept("disc")
        outputs.append(predictor.predict())
    for a, b in zip(*outputs):
        np.testing.assert_array_equal(a, b)
    assert nc.read_adapters_metadata(result.output)["concepts"] == '["disc", "square"]'
    # The model holds the best validated state.
    assert evaluate(model, val_set, "text").iou == pytest.approx(result.best.iou)


def test_a_cancelled_run_leaves_the_previous_file_intact(datasets, tmp_path):
    train_set, val_set = datasets
    output = tmp_path / "adapters.safetensors"
    previous = _model()
    previous.save_adapters(output, concepts=["old"])
    before = output.read_bytes()
    job = iter_train(_model(), train_set, val_set, TrainingConfig(steps=50, eval_every=2), output=output,
                     replace=True)  # replacing is allowed, but only by a finished run
    for _ in range(8):  # a few steps and a validation, then the user cancels
        next(job)
    job.close()
    assert output.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [output.name]  # no temporary, no resume state


def test_training_changes_only_trainable_parameters(datasets):
    train_set, _ = datasets
    model = _model()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.trainable_parameters()}
    train(model, train_set, None, TrainingConfig(steps=3, learning_rate=1e-3, augment=True))
    for name, parameter in model.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), name
    changed = [n for n, p in model.trainable_parameters() if not torch.equal(p, trainable[n])]
    assert any(".clipsam." in n for n in changed) and any(n.startswith("sam.mask_decoder.") for n in changed)


def test_co_training_clip_attention_at_its_own_learning_rate(datasets, tmp_path):
    train_set, _ = datasets
    model = _model()
    model.set_clip_attention_trainable(True)
    names = [n for n, _ in model.trainable_parameters()]
    attention = {n for n in names if n.startswith("clip.")}
    assert attention and all(".attn." in n for n in attention)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    output = tmp_path / "co.safetensors"
    config = TrainingConfig(steps=2, learning_rate=1e-3, clip_learning_rate=1e-3, augment=False)
    train(model, train_set, None, config, output=output)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert attention & changed  # CLIP's attention learned...
    assert not {n for n in changed if n.startswith("clip.")} - attention  # ...and nothing else of CLIP
    assert not {n for n in changed if n.startswith("sam.image_encoder.") and ".clipsam." not in n}
    # The file carries CLIP's attention and the choice; loading it restores both.
    reloaded = load_tiny(adapters=output)
    assert reloaded.config.train_clip_attention
    for name in attention:
        assert torch.equal(reloaded.get_parameter(name), model.get_parameter(name)), name
    model.set_clip_attention_trainable(False)
    assert not [n for n, _ in model.trainable_parameters() if n.startswith("clip.")]


def test_gradient_checkpointing_gives_the_same_gradients(datasets):
    train_set, _ = datasets
    grads = []
    for checkpointing in (False, True):
        model = _model()
        for adapter in model.adapters:  # non-zero adapters so every branch carries gradient
            for p in adapter.parameters():
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(5))
        config = TrainingConfig(steps=1, learning_rate=0.0, augment=False, gradient_checkpointing=checkpointing)
        train(model, train_set, None, config)
        grads.append({n: p.grad.clone() for n, p in model.trainable_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


def test_resume_continues_from_the_saved_step(datasets, tmp_path):
    train_set, val_set = datasets
    output = tmp_path / "a.safetensors"
    train(_model(), train_set, val_set, TrainingConfig(steps=4, eval_every=2, patience=0), output=output,
          keep_resume_state=True)
    assert resume_path(output).is_file()
    state = torch.load(resume_path(output), map_location="cpu", weights_only=True)
    assert state["step"] == 4
    result = train(_model(), train_set, val_set, TrainingConfig(steps=6, eval_every=2, patience=0), output=output,
                   resume=True, keep_resume_state=True)
    assert result.steps_run == 6  # 4 restored + 2 new
    assert result.initial is None and result.best is not None
    # Resuming with another trainable set (CLIP attention on now) is refused, clearly.
    other = _model()
    other.set_clip_attention_trainable(True)
    with pytest.raises(nc.CheckpointMismatchError, match="CLIP attention frozen there, trained now"):
        train(other, train_set, val_set, TrainingConfig(steps=8), output=output, resume=True)


def test_a_predictor_notices_new_weights(datasets, tmp_path):
    """Features cached before loading or training adapters are never used after it."""
    train_set, _ = datasets
    model = _model()
    predictor = nc.ClipSamPredictor(model)
    predictor.set_image(train_set[0].image)
    predictor.set_concept(train_set[0].concept)
    before = predictor.predict()[2]
    assert not predictor.pending_stages()  # all cached
    train(model, train_set, None, TrainingConfig(steps=2, learning_rate=1e-2, augment=False),
          output=tmp_path / "t.safetensors")
    assert predictor.pending_stages()  # recomputed with the trained adapters
    after = predictor.predict()[2]
    fresh = nc.ClipSamPredictor(model)
    fresh.set_image(train_set[0].image)
    fresh.set_concept(train_set[0].concept)
    np.testing.assert_array_equal(after, fresh.predict()[2])
    assert not np.array_equal(before, after)
    # Loading adapters into the model does the same.
    untrained = _model()
    untrained_predictor = nc.ClipSamPredictor(untrained)
    untrained_predictor.set_image(train_set[0].image)
    untrained_predictor.set_concept(train_set[0].concept)
    untrained_predictor.predict()
    untrained.load_adapters(tmp_path / "t.safetensors")
    np.testing.assert_array_equal(untrained_predictor.predict()[2], after)


def test_dataset_from_arrays_makes_one_sample_per_class_present():
    image, labels = two_kinds_image(0)
    dataset = ConceptDataset.from_arrays([(image, labels, {1: "disc", 2: "square", 3: "absent"})])
    assert [s.concept for s in dataset] == ["disc", "square"]
    np.testing.assert_array_equal(dataset[0].mask, labels == 1)
    assert dataset[0].image.shape == (*labels.shape, 3)
    single = ConceptDataset.from_arrays([(image, labels, "object")])
    assert len(single) == 1 and single[0].mask.sum() == (labels > 0).sum()
    with pytest.raises(ValueError, match="same height and width"):
        ConceptDataset.from_arrays([(image, labels[:-1], "object")])


def test_dataset_from_folders(tmp_path):
    import tifffile

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for seed in range(3):
        image, labels = two_kinds_image(seed)
        tifffile.imwrite(tmp_path / "images" / f"img{seed}.tif", image)
        tifffile.imwrite(tmp_path / "labels" / f"img{seed}_labels.tif", labels)
    tifffile.imwrite(tmp_path / "images" / "unlabelled.tif", image)
    dataset = ConceptDataset.from_folders(tmp_path / "images", tmp_path / "labels", MAPPING)
    assert len(dataset) == 6 and dataset.concepts == ["disc", "square"]
    train_set, val_set = dataset.split(0.34, seed=0)
    assert len(val_set) == 2 and {s.concept for s in val_set} == {"disc", "square"}
    assert len(train_set) + len(val_set) == 6
    with pytest.raises(ValueError, match="matching"):
        ConceptDataset.from_folders(tmp_path / "labels", tmp_path / "images", MAPPING)


def test_augmentation_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 60), dtype=bool)
    mask[5:20, 10:30] = True
    image = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=-1)
    sample = Sample(image, mask, "thing")
    for _ in range(20):
        view = augment(sample, 0, rng, enabled=True)
        np.testing.assert_array_equal(view.image[..., 0] > 127, view.mask)
        assert view.mask.any()


def test_evaluate_reports_per_concept_and_overall(datasets):
    _, val_set = datasets
    report = evaluate(_model(), val_set, "manual", seed=0)
    assert set(report.per_concept) == {"disc", "square"}
    assert all(0 <= v["iou"] <= 1 and v["count"] == 3 for v in report.per_concept.values())
    assert report.iou == pytest.approx(np.mean([v["iou"] for v in report.per_concept.values()]))
    again = evaluate(_model(), val_set, "manual", seed=0)
    assert again.to_dict() == report.to_dict()  # same prompts every time
    with pytest.raises(ValueError, match="empty"):
        evaluate(_model(), [], "text")


def test_parse_concepts():
    from napari_clipsam.training.data import parse_concepts

    assert parse_concepts("  cell   nucleus ") == "cell nucleus"
    assert parse_concepts("1=nucleus, 2 = mitochondria;3=er") == {1: "nucleus", 2: "mitochondria", 3: "er"}
    for bad, message in (("", "Name the concept"), ("x=nucleus", "Cannot read"), ("1=", "Cannot read"),
                         ("0=bg", "Cannot read"), ("1=a, 1=b", "twice")):
        with pytest.raises(ValueError, match=message):
            parse_concepts(bad)


def test_training_at_a_smaller_sam_input_size(datasets, tmp_path):
    train_set, val_set = datasets
    model = _model()
    output = tmp_path / "small.safetensors"
    result = train(
        model, train_set, val_set, TrainingConfig(steps=3, eval_every=3, image_size=128, patience=0), output=output
    )
    assert result.steps_run == 3 and result.best is not None
    assert model.image_size == 256  # back to its own size
    # What segments with these adapters runs at the training size unless told otherwise.
    assert model.preferred_image_size == 128
    reloaded = load_tiny(adapters=output)
    assert reloaded.preferred_image_size == 128
    image = train_set[0].image
    for candidate in (model, reloaded):
        predictor = nc.ClipSamPredictor(candidate)
        predictor.set_image(image)
        predictor.set_concept(train_set[0].concept)
        assert predictor.image_size == 128 and predictor.image_embedding.shape[-2:] == (8, 8)
    explicit = nc.ClipSamPredictor(reloaded, image_size=256)
    explicit.set_image(image)
    assert explicit.image_embedding.shape[-2:] == (16, 16)
    # Changing the size of a predictor drops what it computed at the old size.
    explicit.image_size = None
    assert explicit.image_embedding.shape[-2:] == (8, 8)


def _decoded_prompts(model, monkeypatch) -> list[tuple]:
    """Record the (points, boxes, mask prompt) of every sample the training step decodes."""
    seen, decode = [], engine_module.decode_batch

    def recording(decoded_model, embeddings, points, boxes, mask_prompts, *args):
        assert decoded_model is model
        seen.extend(zip(points, boxes, mask_prompts))
        return decode(decoded_model, embeddings, points, boxes, mask_prompts, *args)

    monkeypatch.setattr(engine_module, "decode_batch", recording)
    return seen


def test_text_mode_training_decodes_the_prompts_the_predictor_uses(datasets, monkeypatch):
    sample = datasets[0][0]
    model = _model()
    seen = _decoded_prompts(model, monkeypatch)
    train(model, ConceptDataset([sample]), None, TrainingConfig(mode="text", steps=1, augment=False))
    [(points, boxes, mask_prompt)] = seen
    predictor = nc.ClipSamPredictor(_model())
    predictor.set_image(sample.image)
    predictor.set_concept(sample.concept)
    with torch.no_grad():
        expected_points, expected_box = to_sam_frame(*predictor.text_prompts(), None, predictor.original_size,
                                                     predictor.model.image_size, predictor.model.device)
        expected_mask = predictor.similarity_mask_prompt()
    assert boxes is None and expected_box is None
    torch.testing.assert_close(points[0], expected_points[0])
    torch.testing.assert_close(points[1], expected_points[1])
    torch.testing.assert_close(mask_prompt, expected_mask)


def test_manual_mode_training_prompts_land_on_one_object_in_sams_frame(datasets, monkeypatch):
    """A click means "this object": prompts come from one object, the target is that object."""
    sample = datasets[0][0]  # 96 x 96; the tiny SAM's frame is 256
    objects = sample.object_labels()
    assert objects.max() >= 2  # several objects, so that "one of them" can be told from "all"
    model = _model()
    seen = _decoded_prompts(model, monkeypatch)
    targets = []
    original_loss = engine_module.target_in_frame
    monkeypatch.setattr(engine_module, "target_in_frame", lambda mask, *a: targets.append(mask) or original_loss(mask, *a))
    train(model, ConceptDataset([sample]), None, TrainingConfig(mode="manual", steps=6, augment=False))
    scale = model.image_size / max(sample.mask.shape)
    assert len(seen) == 6 and any(boxes is not None for _, boxes, _ in seen)
    for (points, boxes, mask_prompt), target in zip(seen, targets):
        coords, labels = points[0][0].numpy() / scale, points[1][0].numpy()
        rows, cols = np.rint(coords[:, 1]).astype(int), np.rint(coords[:, 0]).astype(int)
        [value] = set(objects[rows[labels == 1], cols[labels == 1]])  # every positive on one object
        np.testing.assert_array_equal(target, objects == value)  # and the target is that object alone
        assert not (objects[rows[labels == 0], cols[labels == 0]] == value).any()  # XY order
        if boxes is not None:
            x0, y0, x1, y1 = boxes[0].numpy() / scale
            ys, xs = np.nonzero(objects == value)
            assert (x0, y0, x1, y1) == pytest.approx((xs.min(), ys.min(), xs.max(), ys.max()), abs=1e-3)
        assert mask_prompt is not None  # the similarity mask prompt stays on, as in manual segmentation


def test_the_full_resolution_loss_compares_the_upsampled_logits_with_the_truth_at_the_frames_size(
        datasets, monkeypatch):
    """``full_resolution_loss``: the loss sees the logits as inference upsamples them (before its
    threshold) and the target mask at that resolution; off, SAM's low-resolution logits."""
    sample = datasets[0][0]  # 96 x 96, resized into the tiny SAM's 256 frame
    decoded, losses = [], []
    decode, loss = engine_module.decode_batch, engine_module.segmentation_loss
    monkeypatch.setattr(engine_module, "decode_batch", lambda *a: decoded.append(decode(*a)) or decoded[-1])
    monkeypatch.setattr(engine_module, "segmentation_loss",
                        lambda logits, iou, target, *a: losses.append((logits, target)) or loss(logits, iou, target, *a))
    for full in (False, True):
        model = _model()
        train(model, ConceptDataset([sample]), None,
              TrainingConfig(mode="text", steps=1, augment=False, full_resolution_loss=full))
    frame = model.image_size
    (low_logits, low_target), (full_logits, full_target) = losses
    assert low_logits.shape[-2:] == model.mask_input_size == low_target.shape[-2:]
    assert full_logits.shape[-2:] == (frame, frame) == full_target.shape[-2:]
    torch.testing.assert_close(full_logits, logits_in_frame(decoded[1][0], frame))
    resized = torch.nn.functional.interpolate(torch.as_tensor(sample.mask, dtype=torch.float32)[None, None],
                                              size=(frame, frame), mode="bilinear", align_corners=False) > 0.5
    assert torch.equal(full_target.bool(), resized)


def test_the_training_configuration_and_results_import_no_torch():
    """The napari panel builds these on the GUI thread, before any worker has prepared torch."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from napari_clipsam.training import config, data, jobs, results\n"
        "print(sorted(m for m in ('torch', 'open_clip', 'timm', 'segment_anything') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
    # The public names are these classes, wherever the package finds them.
    from napari_clipsam.training import config, results

    assert nc.TrainingConfig is config.TrainingConfig and nc.EvaluationReport is results.EvaluationReport
    assert nc.TrainProgress is results.TrainProgress and nc.TrainResult is results.TrainResult
