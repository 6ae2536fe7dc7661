"""Few-shot fine-tuning of the adapters, prompt encoder and mask decoder.

The engine is a generator (:func:`iter_train`) that yields :class:`TrainProgress`
events and returns a :class:`TrainResult`; :func:`train` drains it for scripts, and
the napari panel runs the same generator in a worker thread. No Qt here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .._jobs import Job, relay, run
from ..errors import OutputExistsError, TrainingDivergedError
from ..inference.prompts import check_prompts
from ..inference.sam_frame import logits_in_frame, mask_prompt_from_similarity, text_mode_points, to_sam_frame
from ..model.clipsam import ClipSamModel
from ..model.refine import has_refiner, refine_logits
from .augment import Augmented, augment, photometric
from .batched_decode import decode_batch
from .config import TrainingConfig
from .data import Sample
from .evaluate import choose_object, iter_evaluate, manual_prompts
from .losses import pixel_weights, segmentation_loss, similarity_loss, target_in_frame
from .optimizer import learning_rate_factor, make_optimizer
from .results import EvaluationReport, TrainProgress, TrainResult
from .resume import ResumeState, read_resume_state, restore_optimizer, write_resume_state
from .run_files import resume_path


class _FeatureCache:
    """CLIP patch features per augmented view, reused while CLIP is frozen."""

    def __init__(self, model: ClipSamModel, clip_trains: bool) -> None:
        self.model = model
        self.frozen = not clip_trains
        self.features: dict[tuple, torch.Tensor] = {}

    def patches(self, views: Sequence[Augmented]) -> torch.Tensor:
        """(B, g, g, D) patch features of the views; those not cached come from one CLIP call."""
        # A view's name: its key while CLIP is frozen (views of one key computed once), else its place.
        names = [view.key if self.frozen and view.key is not None else i for i, view in enumerate(views)]
        missing = {name: names.index(name) for name in names if name not in self.features}
        found = {}
        if missing:
            inputs = torch.cat([self.model.clip_input(views[i].image) for i in missing.values()])
            with torch.set_grad_enabled(not self.frozen):
                _, computed = self.model.clip_features(inputs)
            if not self.frozen:
                return computed  # every view its own row, in order; nothing kept
            found = {name: computed[row : row + 1] for row, name in enumerate(missing)}
            # Copies: a kept row would otherwise hold the whole batch's storage.
            self.features.update((name, rows.clone()) for name, rows in found.items() if isinstance(name, tuple))
        return torch.cat([found[name] if name in found else self.features[name] for name in names])


class _NonFinite(Exception):
    """A training step met a non-finite loss or gradient (the step was not taken)."""


class _ResumeStateFile:
    """The resume state of one run: written at evaluation steps, removed when the run ends unless kept.

    A run that resumed from the file keeps it when interrupted (it holds that training's
    progress); any other run removes what it wrote, so a Cancel leaves no file of its own.
    """

    def __init__(self, output: Path | None, resumed: bool, replace: bool, keep: bool) -> None:
        self.path = resume_path(output) if output is not None else None
        self.resumed, self.replace, self.keep = resumed, replace, keep
        self.written = False

    def write(self, state: ResumeState) -> None:
        if self.path is not None:
            write_resume_state(self.path, state, replace=self.written or self.replace or self.resumed)
            self.written = True

    def finish(self, completed: bool) -> None:
        if self.path is not None and not self.keep and (completed or (self.written and not self.resumed)):
            self.path.unlink(missing_ok=True)


def iter_train(
    model: ClipSamModel,
    train_set: Sequence[Sample],
    val_set: Sequence[Sample] | None = None,
    config: TrainingConfig | None = None,
    output: str | os.PathLike | None = None,
    resume: bool = False,
    *,
    replace: bool = False,
    keep_resume_state: bool = False,
) -> Job[TrainResult]:
    """Fine-tune ``model`` in place; yields :class:`TrainProgress`, returns :class:`TrainResult`.

    The best state on the validation set (or the last, without one) is loaded into the
    model at the end and, with ``output``, saved there atomically with the concepts.

    Files (docs/training.md, "Files, interruptions and resuming"):

    - ``output`` is written once, when the run finishes, after a ``"saving"`` event:
      closing the generator at that event or earlier (a Cancel) writes nothing. A file
      already there is replaced only with ``replace`` or ``resume``; else
      :class:`OutputExistsError` before training starts.
    - The resumable state (:func:`resume_path`) is written at each evaluation step, so a
      killed process can be resumed. It is removed when the run ends (finished, closed,
      failed) unless ``keep_resume_state``; a resumed run that does not finish keeps it.

    Raises:
        TrainingDivergedError: a non-finite loss, gradient or weight; the message names the
            step and what was saved. The model then holds the best validated state, or
            without validation the weights it had when the run began.
        UnsafeCheckpointError, CorruptFileError, CheckpointMismatchError: a resume state
            that cannot be used (nothing of it is loaded).
    """
    config = config or TrainingConfig()
    if len(train_set) == 0:
        raise ValueError("Nothing to train on: the training set is empty.")
    output = Path(output) if output is not None else None
    if resume and output is None:
        raise ValueError("Resuming needs the output whose training state to continue.")
    if output is not None and not (replace or resume):
        existing = [str(path) for path in (output, resume_path(output)) if path.exists()]
        if existing:
            raise OutputExistsError(
                f"{' and '.join(existing)} exist, and replacing them was not allowed; they were left as they are. "
                "To start afresh over them allow replacing (replace=True, --overwrite, or the panel's 'Replace "
                "an existing adapters file'), or resume that training (resume=True, --resume)."
            )
    concepts = sorted({s.concept for s in train_set if s.mask.any()}) or sorted({s.concept for s in train_set})
    model.freeze_base()
    if config.train_base:
        model.requires_grad_(True)
    trainable = dict(model.trainable_parameters())
    optimizer = make_optimizer(model, config)
    saved = None
    if resume:
        saved = read_resume_state(resume_path(output), trainable, clip_trained=model.config.train_clip_attention)
        if saved.step > config.steps:
            raise ValueError(f"The training state at {resume_path(output)} is at step {saved.step}, beyond the "
                             f"{config.steps} steps asked for: ask for more steps to train on.")
        restore_optimizer(optimizer, saved.optimizer, resume_path(output))
    # Nothing was refused: the model changes from here on.
    files = _ResumeStateFile(output, resume, replace, keep_resume_state)
    try:
        result = yield from _run(model, train_set, val_set, config, output, concepts, optimizer, trainable, saved,
                                 files, replace or resume)
    except BaseException:
        files.finish(completed=False)
        raise
    files.finish(completed=True)
    return result


def _run(model: ClipSamModel, train_set, val_set, config: TrainingConfig, output: Path | None, concepts,
         optimizer, trainable, saved: ResumeState | None, files: _ResumeStateFile, replace: bool):
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    start_step, losses = 0, []
    best_state, best_report, best_step, initial = None, None, 0, None
    if saved is not None:
        model.assign_trainable(saved.trainable)
        start_step, losses = saved.step, list(saved.losses)
        best_state, best_step, best_report = saved.best_state, saved.best_step, saved.best_report
        rng = np.random.default_rng([config.seed, start_step])
    # Validation, and predictors made afterwards, segment at the training size (as they
    # do when the saved file is loaded).
    model.preferred_image_size = config.image_size if config.image_size != model.image_size else None
    # What a diverged run without a validated state falls back to, kept off the accelerator.
    start_state = {name: p.detach().to("cpu", copy=True) for name, p in trainable.items()}
    extra = {"training_mode": config.mode}
    if config.image_size is not None:
        extra["training_image_size"] = str(config.image_size)  # segment at this size too

    if val_set and start_step == 0:
        initial = yield from _validate(model, val_set, config, 0)
        best_report, best_state = initial, _snapshot(trainable)
    cache = _FeatureCache(model, model.config.train_clip_attention or config.train_base)
    stale_evaluations = 0
    stopped_early = False
    model.eval()  # SAM and CLIP have no dropout or batch norm: eval mode trains the same
    for step in range(start_step, config.steps):
        factor = learning_rate_factor(step, config.steps, config.warmup_fraction)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        indices = rng.integers(0, len(train_set), size=config.batch_size)
        try:
            with model.at_resolution(config.image_size):
                loss = _train_step(model, optimizer, [train_set[i] for i in indices], [int(i) for i in indices],
                                   cache, config, rng)
            _check_finite(trainable)
        except _NonFinite as problem:
            validated = bool(val_set) and best_report is not None and best_state is not None
            fallback = best_state if validated else start_state
            model.assign_trainable(fallback)
            raise _diverged(model, step + 1, str(problem), config, output, concepts, extra, replace,
                            (best_step, best_report) if validated else None) from None
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
            if not last or files.keep:  # a finished run's state is kept only when asked for
                files.write(ResumeState(_snapshot(trainable), optimizer.state_dict(), step + 1, list(losses),
                                        best_state, best_step, best_report))
            if config.patience and stale_evaluations >= config.patience and not last:
                stopped_early = True
                break
    if best_state is not None and val_set:
        model.assign_trainable(best_state)
    else:
        best_step = len(losses)
    if output is not None:
        # The last point where a Cancel is honoured: past it, the save completes.
        yield TrainProgress("saving", len(losses), config.steps)
        model.save_adapters(output, concepts=concepts, extra_metadata=extra, replace=replace,
                                every_weight=config.train_base)
    return TrainResult(initial, best_report, best_step, len(losses), stopped_early, losses, output)


def train(model: ClipSamModel, train_set, val_set=None, config: TrainingConfig | None = None,
          output=None, resume: bool = False, *, replace: bool = False, keep_resume_state: bool = False) -> TrainResult:
    """Fine-tune and return the result (scripts); see :func:`iter_train`."""
    return run(iter_train(model, train_set, val_set, config, output, resume, replace=replace,
                          keep_resume_state=keep_resume_state))


def _snapshot(trainable: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainable.items()}


def _check_finite(trainable: dict[str, torch.nn.Parameter]) -> None:
    # One check and one synchronisation for all parameters (a few kernels, not two per parameter);
    # the names are looked up only on failure.
    if bool(torch.isfinite(torch.cat([p.detach().reshape(-1) for p in trainable.values()])).all()):
        return
    name = next(name for name, p in trainable.items() if not bool(torch.isfinite(p).all()))
    raise _NonFinite(f"the weight {name} became NaN or infinite")


def _diverged(model: ClipSamModel, step: int, problem: str, config: TrainingConfig, output: Path | None, concepts,
              extra: dict[str, str], replace: bool, best: tuple[int, EvaluationReport] | None) -> TrainingDivergedError:
    """The error of a run that diverged at ``step``, after saving the best trained, validated state (if any)."""
    message = f"Training diverged at step {step}: {problem}. Lower the learning rate (it is {config.learning_rate:g})."
    if best is not None and best[0] > 0:
        best_step, report = best
        where = "no output file was given"
        if output is not None:
            model.save_adapters(output, concepts=concepts, extra_metadata=extra, replace=replace,
                                every_weight=config.train_base)
            where = f"it was saved to {output}"
        return TrainingDivergedError(f"{message} The model holds the best validated state (step {best_step}, "
                                     f"validation IoU {report.iou:.3f}); {where}.")
    kept = "" if output is None else (f"; {output} was left as it was" if output.exists() else
                                      f"; {output} was not written")
    state = ("its best validated state, the one before any training" if best is not None
             else "the weights it had when this run began")
    return TrainingDivergedError(f"{message} Nothing was saved{kept}. The model holds {state}.")


def _validate(model: ClipSamModel, val_set, config: TrainingConfig, step: int):
    job = iter_evaluate(model, val_set, config.mode, seed=config.seed, image_size=config.image_size)
    report = yield from relay(job, lambda event: TrainProgress(event.stage, step, config.steps))
    yield TrainProgress("validated", step, config.steps, validation=report)
    return report


def _train_step(model: ClipSamModel, optimizer, batch: list[Sample], indices: list[int],
                cache: _FeatureCache, config: TrainingConfig, rng: np.random.Generator) -> float:
    """One optimiser step; the loss is the mean of the samples' losses, as if each were decoded alone.

    One encoder call, few decoder calls (:func:`decode_batch`), the loss over the batch at once.
    """
    views = [augment(sample, index, rng, config.augment) for sample, index in zip(batch, indices)]
    images = [photometric(view.image, rng) if config.augment else view.image for view in views]
    sam_inputs, input_sizes = zip(*(model.sam_input(image) for image in images))
    pixels = torch.cat(sam_inputs)
    text = _text_embeddings(model, [sample.concept for sample in batch], config.train_base)
    patch_grid = cache.patches(views)
    similarity = model.similarity(patch_grid, text)
    conditioning = model.conditioning(text, patch_grid, similarity)
    # Prompts are made on the CPU; with the map there, nothing below waits for an accelerator until
    # the loss, so it encodes while the prompts and targets are made and sent without blocking.
    similarity_on_cpu = similarity.detach().cpu()

    optimizer.zero_grad(set_to_none=True)
    # encode_image carries the conditioning into every block, checkpointed recomputation in backward included.
    embeddings = model.encode_image(pixels, conditioning, config.gradient_checkpointing)
    prompts = [_training_prompts(model, view, similarity[i : i + 1], input_size, config, rng,
                                 similarity_on_cpu[i : i + 1])
               for i, (view, input_size) in enumerate(zip(views, input_sizes))]
    points, boxes, mask_prompts, target_masks, others = zip(*prompts)
    refined = has_refiner(model)  # a mask refiner works at the input's resolution: so does its loss
    size = (model.image_size,) * 2 if config.full_resolution_loss or refined else model.mask_input_size
    targets = torch.cat([target_in_frame(mask, input_size, model.image_size, size, "cpu")
                         for mask, input_size in zip(target_masks, input_sizes)]).to(model.device, non_blocking=True)
    weights = None
    if config.neighbour_weight != 1 or config.other_concept_weight != 1:  # some wrong pixels weigh more
        heavier = [[(near, config.neighbour_weight), (view.others, config.other_concept_weight)]
                   for near, view in zip(others, views)]
        weights = torch.cat([pixel_weights(masks, input_size, model.image_size, size) for masks, input_size in
                             zip(heavier, input_sizes)]).to(model.device, non_blocking=True)
    logits, predicted_iou = decode_batch(model, embeddings, points, boxes, mask_prompts, False)
    if refined:  # the logits as inference refines them, before its threshold
        logits = refine_logits(model, logits, pixels)
    elif config.full_resolution_loss:  # the logits as inference upsamples them, before its threshold
        logits = logits_in_frame(logits, model.image_size)
    loss = segmentation_loss(logits, predicted_iou, targets, weights)["loss"]  # per sample, then the batch mean
    if config.train_base:
        loss = loss + config.similarity_weight * similarity_loss(similarity, [view.mask for view in views]).mean()
    if not bool(torch.isfinite(loss)):
        raise _NonFinite(f"the loss is {float(loss.detach())}")
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_([p for _, p in model.trainable_parameters()], max_norm=1.0)
    if not bool(torch.isfinite(norm)):
        raise _NonFinite("the gradients are NaN or infinite")
    optimizer.step()
    model.weights_version += 1
    if config.train_base:
        model.forget_text_embeddings()
    return float(loss.detach())


def _text_embeddings(model: ClipSamModel, concepts: list[str], trains_text: bool) -> torch.Tensor:
    """(B, D) text embeddings; through the text tower's graph when it trains (once per concept)."""
    if not trains_text:
        return torch.stack([model.text_embedding(concept) for concept in concepts])
    by_concept = {concept: model.text_embedder(concept, model.device, grad=True) for concept in set(concepts)}
    return torch.stack([by_concept[concept] for concept in concepts])


def _training_prompts(model: ClipSamModel, view: Augmented, similarity: torch.Tensor, input_size, config, rng,
                      similarity_on_cpu: torch.Tensor | None = None):
    """Prompts in SAM's input frame, made exactly as the chosen inference mode makes them, and the target mask.

    The same functions as :meth:`ClipSamPredictor.predict`: the text mode's points and
    mask prompt from the similarity map (target: every object of the concept), the manual
    mode's clicks and box drawn from one object and checked as the predictor checks a
    user's (target: that object), one conversion into SAM's frame. ``similarity_on_cpu``,
    the same (1, g, g) map already on the CPU, spares the text mode a transfer.

    Points and box are on the CPU (:func:`decode_batch` sends a batch's at once), the mask
    prompt on the model's device. Last, the concept's pixels outside the target (its other
    objects in the manual mode; none in the text mode).
    """
    original_size = view.mask.shape
    mask_prompt = None
    if model.config.similarity_mask_prompt:
        mask_prompt = mask_prompt_from_similarity(
            similarity.detach(), model.config.similarity_threshold, input_size, model.image_size, model.mask_input_size
        )
    mode = config.mode if config.mode != "both" else ("text", "manual")[int(rng.integers(0, 2))]
    if not view.mask.any():
        mode = "text"  # nothing to click on: the concept is absent, and the text mode must find nothing
    if mode == "text":
        grid = similarity.detach() if similarity_on_cpu is None else similarity_on_cpu
        coords, labels = text_mode_points(grid, original_size, model.config)
        box, target = None, view.mask
    else:
        target = choose_object(view.objects, rng)
        coords, labels, box = check_prompts(*manual_prompts(
            target, rng, lone_click_probability=config.lone_click_share, objects=view.objects,
            neighbour_negative_probability=config.neighbour_negative_share, box_only_probability=config.box_only_share))
    points, boxes = to_sam_frame(coords, labels, box, original_size, model.image_size, torch.device("cpu"))
    return points, boxes, mask_prompt, target, view.mask & ~target


__all__ = ["iter_train", "resume_path", "train"]
