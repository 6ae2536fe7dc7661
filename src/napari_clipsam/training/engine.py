"""Few-shot fine-tuning of the adapters, prompt encoder and mask decoder.

The engine is a generator (:func:`iter_train`) that yields :class:`TrainProgress`
events and returns a :class:`TrainResult`; :func:`train` drains it for scripts, and
the napari panel runs the same generator in a worker thread. No Qt here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .._io import write_atomically
from .._jobs import Job, relay, run
from ..inference.prompts import check_prompts
from ..inference.sam_frame import mask_prompt_from_similarity, text_mode_points, to_sam_frame
from ..model.adapters import conditioned
from ..model.clipsam import ClipSamModel
from .augment import Augmented, augment, photometric
from .config import TrainingConfig
from .data import Sample
from .evaluate import iter_evaluate, manual_prompts
from .losses import low_res_target, segmentation_loss
from .results import EvaluationReport, TrainProgress, TrainResult


def _learning_rate_factor(step: int, total: int, warmup_fraction: float) -> float:
    warmup = max(1, int(round(total * warmup_fraction)))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _optimizer(model: ClipSamModel, config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only, CLIP's attention in its own low-lr group."""
    clip_parameters, other = [], []
    for name, parameter in model.trainable_parameters():
        (clip_parameters if name.startswith("clip.") else other).append(parameter)
    groups = [{"params": other, "lr": config.learning_rate, "weight_decay": config.weight_decay}]
    if clip_parameters:
        groups.append({"params": clip_parameters, "lr": config.clip_learning_rate, "weight_decay": 0.0})
    for group in groups:
        group["initial_lr"] = group["lr"]
    return torch.optim.AdamW(groups)


class _FeatureCache:
    """CLIP patch features per augmented view, reused while CLIP is frozen."""

    def __init__(self, model: ClipSamModel) -> None:
        self.model = model
        self.features: dict[tuple, torch.Tensor] = {}

    def patches(self, view: Augmented) -> torch.Tensor:
        frozen = not self.model.config.train_clip_attention
        if frozen and view.key is not None and view.key in self.features:
            return self.features[view.key]
        with torch.set_grad_enabled(not frozen):
            _, patches = self.model.clip_features(self.model.clip_input(view.image))
        if frozen and view.key is not None:
            self.features[view.key] = patches.detach()
        return patches


def resume_path(output: str | os.PathLike) -> Path:
    """Where the resumable training state of ``output`` is kept."""
    output = Path(output)
    return output.with_name(output.name + ".resume.pt")


def iter_train(
    model: ClipSamModel,
    train_set: Sequence[Sample],
    val_set: Sequence[Sample] | None = None,
    config: TrainingConfig | None = None,
    output: str | os.PathLike | None = None,
    resume: bool = False,
) -> Job[TrainResult]:
    """Fine-tune ``model`` in place; yields :class:`TrainProgress`, returns :class:`TrainResult`.

    The best state on the validation set (or the last, without one) is loaded into the
    model at the end and, with ``output``, saved there atomically with the concepts;
    the resumable state goes beside it (:func:`resume_path`). Closing the generator
    early (a Cancel) writes nothing: a previous file at ``output`` stays as it was.
    """
    config = config or TrainingConfig()
    if len(train_set) == 0:
        raise ValueError("Nothing to train on: the training set is empty.")
    output = Path(output) if output is not None else None
    concepts = sorted({s.concept for s in train_set})
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    model.freeze_base()
    # Validation, and predictors made afterwards, segment at the training size (as they
    # do when the saved file is loaded).
    model.preferred_image_size = config.image_size if config.image_size != model.image_size else None
    optimizer = _optimizer(model, config)
    trainable = dict(model.trainable_parameters())
    start_step, losses = 0, []
    best_state, best_report, best_step, initial = None, None, 0, None

    if resume:
        if output is None or not resume_path(output).is_file():
            raise FileNotFoundError(f"No training state to resume at {resume_path(output) if output else '(no output)'}.")
        state = torch.load(resume_path(output), map_location="cpu", weights_only=True)
        if set(state["trainable"]) != set(trainable):
            clip_saved = any(name.startswith("clip.") for name in state["trainable"])
            raise ValueError(
                f"The training state at {resume_path(output)} was saved for another set of trainable "
                f"weights (CLIP attention {'trained' if clip_saved else 'frozen'} there, "
                f"{'trained' if model.config.train_clip_attention else 'frozen'} now, or another base "
                "model). Resume with the same model and options, or start afresh."
            )
        model.assign_trainable(state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        start_step, losses = int(state["step"]), list(state["losses"])
        best_state, best_step = state.get("best_state"), int(state.get("best_step", 0))
        if state.get("best_report"):
            best_report = EvaluationReport(**state["best_report"])
        rng = np.random.default_rng([config.seed, start_step])

    if val_set and start_step == 0:
        initial = yield from _validate(model, val_set, config, 0)
        best_report, best_state = initial, _snapshot(trainable)
    cache = _FeatureCache(model)
    stale_evaluations = 0
    stopped_early = False
    step = start_step
    model.eval()  # SAM and CLIP have no dropout or batch norm: eval mode trains the same
    for step in range(start_step, config.steps):
        factor = _learning_rate_factor(step, config.steps, config.warmup_fraction)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        indices = rng.integers(0, len(train_set), size=config.batch_size)
        with model.at_resolution(config.image_size):
            loss = _train_step(model, optimizer, [train_set[i] for i in indices], [int(i) for i in indices],
                               cache, config, rng)
        losses.append(loss)
        yield TrainProgress("training", step + 1, config.steps, loss, optimizer.param_groups[0]["lr"])
        last = step + 1 == config.steps
        if (step + 1) % config.eval_every == 0 or last:
            if val_set:
                report = yield from _validate(model, val_set, config, step + 1)
                if best_report is None or report.iou > best_report.iou:
                    best_report, best_state, best_step = report, _snapshot(trainable), step + 1
                    stale_evaluations = 0
                else:
                    stale_evaluations += 1
            if output is not None:
                _save_resume(output, trainable, optimizer, step + 1, losses, best_state, best_step, best_report)
            if config.patience and stale_evaluations >= config.patience and not last:
                stopped_early = True
                break
    if best_state is not None and val_set:
        model.assign_trainable(best_state)
    else:
        best_step = step + 1
    if output is not None:
        extra = {"training_mode": config.mode}
        if config.image_size is not None:
            extra["training_image_size"] = str(config.image_size)  # segment at this size too
        model.save_adapters(output, concepts=concepts, extra_metadata=extra)
    return TrainResult(initial, best_report, best_step, len(losses), stopped_early, losses, output)


def train(model: ClipSamModel, train_set, val_set=None, config: TrainingConfig | None = None,
          output=None, resume: bool = False) -> TrainResult:
    """Fine-tune and return the result (scripts); see :func:`iter_train`."""
    return run(iter_train(model, train_set, val_set, config, output, resume))


def _snapshot(trainable: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainable.items()}


def _save_resume(output: Path, trainable, optimizer, step: int, losses: list[float], best_state, best_step: int,
                 best_report: EvaluationReport | None) -> None:
    state = {
        "trainable": _snapshot(trainable),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "losses": losses,
        "best_state": best_state,
        "best_step": best_step,
        "best_report": best_report.to_dict() if best_report is not None else None,
    }
    write_atomically(resume_path(output), lambda path: torch.save(state, path))


def _validate(model: ClipSamModel, val_set, config: TrainingConfig, step: int):
    job = iter_evaluate(model, val_set, config.mode, seed=config.seed, image_size=config.image_size)
    report = yield from relay(job, lambda event: TrainProgress(event.stage, step, config.steps))
    yield TrainProgress("validated", step, config.steps, validation=report)
    return report


def _train_step(model: ClipSamModel, optimizer, batch: list[Sample], indices: list[int],
                cache: _FeatureCache, config: TrainingConfig, rng: np.random.Generator) -> float:
    device = model.device
    views = [augment(sample, index, rng, config.augment) for sample, index in zip(batch, indices)]
    sam_inputs, input_sizes, texts, patches = [], [], [], []
    for view, sample in zip(views, batch):
        image = photometric(view.image, rng) if config.augment else view.image
        sam_input, input_size = model.sam_input(image)
        sam_inputs.append(sam_input)
        input_sizes.append(input_size)
        texts.append(model.text_embedding(sample.concept))
        patches.append(cache.patches(view))
    text = torch.stack(texts)
    patch_grid = torch.cat(patches)
    similarity = model.similarity(patch_grid, text)
    conditioning = model.conditioning(text, patch_grid, similarity)

    optimizer.zero_grad(set_to_none=True)
    with conditioned(model.adapters, conditioning):
        embeddings = model.encode_image(torch.cat(sam_inputs), conditioning, config.gradient_checkpointing)
        losses = []
        for i, (view, input_size) in enumerate(zip(views, input_sizes)):
            points, boxes, mask_prompt = _training_prompts(model, view, similarity[i : i + 1], input_size, config, rng)
            logits, predicted_iou = model.decode(embeddings[i : i + 1], points, boxes, mask_prompt, False)
            target = low_res_target(view.mask, input_size, model.image_size, model.mask_input_size, device)
            losses.append(segmentation_loss(logits, predicted_iou, target)["loss"])
        loss = torch.stack(losses).mean()
        loss.backward()
    torch.nn.utils.clip_grad_norm_([p for _, p in model.trainable_parameters()], max_norm=1.0)
    optimizer.step()
    model.weights_version += 1
    return float(loss.detach())


def _training_prompts(model: ClipSamModel, view: Augmented, similarity: torch.Tensor, input_size, config, rng):
    """Prompts in SAM's input frame, made exactly as the chosen inference mode makes them.

    The same functions as :meth:`ClipSamPredictor.predict`: the text mode's points and
    mask prompt from the similarity map, the manual mode's clicks checked as the
    predictor checks a user's, one conversion into SAM's frame.
    """
    original_size = view.mask.shape
    mask_prompt = None
    if model.config.similarity_mask_prompt:
        mask_prompt = mask_prompt_from_similarity(
            similarity.detach(), model.config.similarity_threshold, input_size, model.image_size, model.mask_input_size
        )
    if config.mode == "text":
        coords, labels = text_mode_points(similarity.detach(), original_size, model.config)
        box = None
    else:
        coords, labels, box = check_prompts(*manual_prompts(view.mask, rng))
    points, boxes = to_sam_frame(coords, labels, box, original_size, model.image_size, model.device)
    return points, boxes, mask_prompt


__all__ = ["iter_train", "resume_path", "train"]
