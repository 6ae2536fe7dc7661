"""Few-shot fine-tuning of the adapters, prompt encoder and mask decoder; and evaluation.

The engine is a generator (:func:`iter_train`) that yields :class:`TrainProgress`
events and returns a :class:`TrainResult`; :func:`train` drains it for scripts, and
the napari panel runs the same generator in a worker thread. No Qt here.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._adapters import conditioned
from ._image import to_rgb_uint8
from ._io import write_atomically
from ._jobs import Job, relay, run
from ._model import ClipSamModel
from ._predictor import ClipSamPredictor
from ._prompts import mask_prompt_from_similarity, points_from_mask, text_mode_points

MODES = ("text", "manual")
_IMAGE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".bmp"}
_LABEL_SUFFIXES = ("_labels", "_label", "_masks", "_mask", "_gt")


# ------------------------------------------------------------------- data
@dataclass
class Sample:
    """One training example: an RGB image, one concept and its binary mask.

    Attributes:
        image: (H, W, 3) uint8 RGB (see :func:`to_rgb_uint8`).
        mask: (H, W) bool, True where the concept is.
        concept: the text naming what the mask shows.
        source: where the sample came from (file name or layer name), for reports.
    """

    image: np.ndarray
    mask: np.ndarray
    concept: str
    source: str = ""


def _binary_samples(image, labels, concepts: str | Mapping[int, str], source: str, channel: int | None) -> list[Sample]:
    rgb = to_rgb_uint8(image, channel=channel)
    labels = np.asarray(labels)
    if labels.shape != rgb.shape[:2]:
        raise ValueError(
            f"{source or 'A sample'}: the label image has shape {labels.shape}, the image {rgb.shape[:2]}; "
            "they must have the same height and width."
        )
    if isinstance(concepts, str):
        mask = labels > 0
        return [Sample(rgb, mask, concepts, source)] if mask.any() else []
    samples = []
    for value, concept in sorted(concepts.items()):
        mask = labels == int(value)
        if mask.any():  # one binary sample per class present
            samples.append(Sample(rgb, mask, concept, source))
    return samples


def parse_concepts(text: str) -> str | dict[int, str]:
    """Read a concept specification: ``"nucleus"`` (every non-zero label) or
    ``"1=nucleus, 2=mitochondria"`` (label value -> concept).

    Raises:
        ValueError: empty text, a value that is not a positive integer, an empty
            concept, or a value given twice.
    """
    text = text.strip()
    if not text:
        raise ValueError("Name the concept, e.g. 'nucleus', or map label values: '1=nucleus, 2=mitochondria'.")
    if "=" not in text:
        return " ".join(text.split())
    mapping: dict[int, str] = {}
    for part in text.replace(";", ",").split(","):
        if not part.strip():
            continue
        value, separator, concept = part.partition("=")
        concept = " ".join(concept.split())
        if not separator or not value.strip().isdigit() or int(value) < 1 or not concept:
            raise ValueError(
                f"Cannot read {part.strip()!r}: write label=concept pairs with positive integer labels, "
                "e.g. '1=nucleus, 2=mitochondria'."
            )
        if int(value) in mapping:
            raise ValueError(f"Label {int(value)} is given twice in {text!r}.")
        mapping[int(value)] = concept
    return mapping


class ConceptDataset(Sequence[Sample]):
    """Binary (image, concept, mask) samples built from images and label images."""

    def __init__(self, samples: Iterable[Sample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]

    @property
    def concepts(self) -> list[str]:
        return sorted({sample.concept for sample in self.samples})

    @classmethod
    def from_arrays(
        cls,
        items: Iterable[tuple[np.ndarray, np.ndarray, str | Mapping[int, str]]],
        channel: int | None = None,
    ) -> ConceptDataset:
        """Samples from (image, label image, concept) triples, e.g. napari layers' data.

        The concept is a string (every non-zero label is that concept) or a mapping from
        label value to concept (a multi-class label image gives one sample per class
        present).
        """
        samples = []
        for index, (image, labels, concepts) in enumerate(items):
            samples += _binary_samples(image, labels, concepts, f"item {index}", channel)
        return cls(samples)

    @classmethod
    def from_folders(
        cls,
        images: str | os.PathLike,
        labels: str | os.PathLike,
        concepts: str | Mapping[int, str],
        channel: int | None = None,
    ) -> ConceptDataset:
        """Samples from a folder of images and a folder of label images with matching names.

        A label file matches an image by name, optionally with a suffix such as
        ``_labels`` or ``_mask`` (``cell1.tif`` and ``cell1_labels.tif``).
        """
        from ._io import read_image

        images, labels = Path(images), Path(labels)
        for folder in (images, labels):
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder} is not a folder.")
        label_files = {}
        for path in sorted(labels.iterdir()):
            if path.suffix.lower() in _IMAGE_SUFFIXES:
                stem = path.stem
                for suffix in _LABEL_SUFFIXES:
                    if stem.endswith(suffix):
                        stem = stem[: -len(suffix)]
                        break
                label_files[stem] = path
        samples, unmatched = [], []
        for path in sorted(images.iterdir()):
            if path.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            match = label_files.get(path.stem)
            if match is None:
                unmatched.append(path.name)
                continue
            samples += _binary_samples(read_image(path), read_image(match), concepts, path.name, channel)
        if not samples:
            raise ValueError(
                f"No image in {images} has a matching, non-empty label image in {labels}"
                + (f" (unmatched: {', '.join(unmatched[:5])})" if unmatched else "")
                + "."
            )
        return cls(samples)

    def split(self, val_fraction: float, seed: int = 0) -> tuple[ConceptDataset, ConceptDataset]:
        """Split per concept; each concept with at least two samples gets one or more for validation."""
        rng = np.random.default_rng(seed)
        train, val = [], []
        for concept in self.concepts:
            members = [s for s in self.samples if s.concept == concept]
            order = rng.permutation(len(members))
            count = int(round(len(members) * val_fraction))
            if val_fraction > 0 and len(members) >= 2:
                count = min(max(count, 1), len(members) - 1)
            else:
                count = 0
            val += [members[i] for i in order[:count]]
            train += [members[i] for i in order[count:]]
        return ConceptDataset(train), ConceptDataset(val)


# ----------------------------------------------------------- augmentation
def _dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/90-degree rotations (k in 0..7) of the first two axes."""
    out = np.rot90(array, k % 4, axes=(0, 1))
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def _random_crop(shape: tuple[int, int], mask: np.ndarray, rng: np.random.Generator) -> tuple[slice, slice] | None:
    """A random crop of 40-100% of the area that keeps part of the mask; None if none found."""
    height, width = shape
    for _ in range(8):
        area = rng.uniform(0.4, 1.0) * height * width
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        h = int(round(min(height, math.sqrt(area / aspect))))
        w = int(round(min(width, math.sqrt(area * aspect))))
        if h < 16 or w < 16:
            continue
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        crop = (slice(top, top + h), slice(left, left + w))
        if mask[crop].any():
            return crop
    return None


def _photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma, contrast and brightness jitter, and sometimes a slight blur (microscopy-like)."""
    from scipy.ndimage import gaussian_filter

    values = image.astype(np.float32) / 255.0
    values = values ** rng.uniform(0.7, 1.4)
    values = (values - values.mean()) * rng.uniform(0.75, 1.3) + values.mean() + rng.uniform(-0.1, 0.1)
    if rng.random() < 0.3:
        values = gaussian_filter(values, sigma=(rng.uniform(0.3, 1.2),) * 2 + (0,))
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Augmented:
    """A sample after geometric augmentation; ``key`` identifies its CLIP input for caching."""

    image: np.ndarray
    mask: np.ndarray
    key: tuple | None


def augment(sample: Sample, index: int, rng: np.random.Generator, enabled: bool) -> Augmented:
    """Flips, 90-degree rotations and random resized crops (microscopy has no up or down)."""
    if not enabled:
        return Augmented(sample.image, sample.mask, (index, 0))
    k = int(rng.integers(0, 8))
    image, mask = _dihedral(sample.image, k), _dihedral(sample.mask, k)
    crop = _random_crop(mask.shape, mask, rng) if rng.random() < 0.5 else None
    if crop is None:
        return Augmented(image, mask, (index, k))
    return Augmented(np.ascontiguousarray(image[crop]), np.ascontiguousarray(mask[crop]), None)


# ------------------------------------------------------------------- losses
def _low_res_target(mask: np.ndarray, input_size: tuple[int, int], frame: int, size: tuple[int, int], device) -> torch.Tensor:
    """The ground truth in SAM's padded input frame at the low-resolution logits' size."""
    tensor = torch.as_tensor(mask, dtype=torch.float32, device=device)[None, None]
    tensor = F.interpolate(tensor, size=input_size, mode="bilinear", align_corners=False)
    tensor = F.pad(tensor, (0, frame - input_size[1], 0, frame - input_size[0]))
    return (F.interpolate(tensor, size=size, mode="area") > 0.5).float()


def segmentation_loss(logits: torch.Tensor, predicted_iou: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """BCE + Dice on the mask logits, plus MSE of SAM's IoU prediction against the true IoU."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probability = torch.sigmoid(logits)
    dims = tuple(range(1, logits.ndim))
    dice = 1 - (2 * (probability * target).sum(dims) + 1) / (probability.sum(dims) + target.sum(dims) + 1)
    with torch.no_grad():
        hard = (logits > 0).float()
        union = ((hard + target) > 0).float().sum(dims)
        true_iou = torch.where(union > 0, (hard * target).sum(dims) / union.clamp_min(1), torch.ones_like(union))
    iou = F.mse_loss(predicted_iou.reshape(-1).float(), true_iou.reshape(-1))
    total = bce + dice.mean() + iou
    return {"loss": total, "bce": bce.detach(), "dice": dice.mean().detach(), "iou": iou.detach()}


# --------------------------------------------------------------- evaluation
@dataclass
class EvaluationReport:
    """IoU and Dice per concept (mean over samples) and overall.

    Attributes:
        per_concept: concept -> {"iou", "dice", "count"}.
        iou: mean IoU over all samples; dice likewise.
        mean_concept_iou: mean over concepts of their mean IoU.
    """

    per_concept: dict[str, dict[str, float]]
    iou: float
    dice: float
    mean_concept_iou: float

    def to_dict(self) -> dict:
        return asdict(self)


def _iou_dice(prediction: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    intersection = float(np.logical_and(prediction, truth).sum())
    union = float(np.logical_or(prediction, truth).sum())
    total = float(prediction.sum() + truth.sum())
    return (intersection / union if union else 1.0), (2 * intersection / total if total else 1.0)


def manual_prompts(mask: np.ndarray, rng: np.random.Generator, max_positive: int = 3, max_negative: int = 2,
                   box_probability: float = 0.5) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Manual-mode prompts sampled from a ground-truth mask: points (XY) with labels, and maybe a box (XYXY)."""
    positives = int(rng.integers(1, max_positive + 1))
    negatives = int(rng.integers(0, max_negative + 1))
    coords, labels = points_from_mask(mask, positives, negatives, rng)
    box = None
    if rng.random() < box_probability:
        ys, xs = np.nonzero(mask)
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)
        if box[2] <= box[0] or box[3] <= box[1]:
            box = None
    return (coords if len(coords) else None), (labels if len(labels) else None), box


def iter_evaluate(
    model: ClipSamModel, dataset: Sequence[Sample], mode: str = "text", seed: int = 0, image_size: int | None = None
) -> Job[EvaluationReport]:
    """Evaluate as the chosen inference mode would run; yields per sample, returns the report.

    ``image_size`` is SAM's input side (None: the model's own), as for the predictor.
    """
    from ._jobs import Progress

    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; use one of {MODES}.")
    if len(dataset) == 0:
        raise ValueError("Nothing to evaluate: the dataset is empty.")
    predictor = ClipSamPredictor(model, image_size=image_size)
    scores: dict[str, list[tuple[float, float]]] = {}
    was_training = model.training
    model.eval()
    try:
        for index, sample in enumerate(dataset):
            yield Progress(f"evaluating {index + 1}/{len(dataset)}", index, len(dataset))
            predictor.set_image(sample.image)
            predictor.set_concept(sample.concept)
            if mode == "text":
                masks, _, _ = predictor.predict()
            else:
                # The same prompts for every evaluation of this sample: comparable runs.
                coords, labels, box = manual_prompts(sample.mask, np.random.default_rng([seed, index]))
                masks, _, _ = predictor.predict(point_coords=coords, point_labels=labels, box=box)
            scores.setdefault(sample.concept, []).append(_iou_dice(masks[0], sample.mask))
    finally:
        model.train(was_training)
    per_concept = {
        concept: {"iou": float(np.mean([s[0] for s in values])), "dice": float(np.mean([s[1] for s in values])),
                  "count": len(values)}
        for concept, values in sorted(scores.items())
    }
    every = [s for values in scores.values() for s in values]
    return EvaluationReport(
        per_concept=per_concept,
        iou=float(np.mean([s[0] for s in every])),
        dice=float(np.mean([s[1] for s in every])),
        mean_concept_iou=float(np.mean([v["iou"] for v in per_concept.values()])),
    )


def evaluate(
    model: ClipSamModel, dataset: Sequence[Sample], mode: str = "text", seed: int = 0, image_size: int | None = None
) -> EvaluationReport:
    """IoU and Dice per concept and overall, with prompts made as ``mode`` makes them."""
    return run(iter_evaluate(model, dataset, mode, seed, image_size))


# ------------------------------------------------------------------ training
@dataclass(frozen=True)
class TrainingConfig:
    """How to train. Defaults follow the paper (AdamW, lr 5e-5, weight decay 1e-3).

    Attributes:
        mode: the inference mode the model will be used in, ``"text"`` or ``"manual"``;
            training prompts are produced exactly as that mode produces them.
        steps: optimiser steps at most.
        batch_size: samples per step.
        learning_rate: for adapters, prompt encoder and mask decoder.
        clip_learning_rate: for CLIP's vision attention when the model trains it.
        weight_decay: for adapters, prompt encoder and mask decoder (none on CLIP).
        warmup_fraction: linear warm-up over this part of the steps, then cosine decay.
        eval_every: validate every this many steps (and at the end).
        patience: stop after this many validations without improvement (0: never).
        augment: flips, rotations, crops, intensity jitter, blur.
        gradient_checkpointing: recompute encoder blocks in backward to save memory.
        image_size: SAM input side for training and validation (None: the model's own,
            1024). 512 makes a CPU step several times cheaper. The size is recorded in the
            adapters file and in ``model.preferred_image_size``, so predictors made
            afterwards segment at it.
        seed: for sampling, augmentation and prompts.
    """

    mode: str = "text"
    steps: int = 200
    batch_size: int = 1
    learning_rate: float = 5e-5
    clip_learning_rate: float = 1e-7
    weight_decay: float = 1e-3
    warmup_fraction: float = 0.1
    eval_every: int = 25
    patience: int = 4
    augment: bool = True
    gradient_checkpointing: bool = True
    image_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Unknown mode {self.mode!r}; use one of {MODES}.")
        for name in ("steps", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")


@dataclass(frozen=True)
class TrainProgress:
    """One event of a training run (the ``stage`` field mirrors :class:`Progress`)."""

    stage: str
    step: int
    total: int
    loss: float | None = None
    learning_rate: float | None = None
    validation: EvaluationReport | None = None

    @property
    def done(self) -> int:
        return self.step


@dataclass
class TrainResult:
    """The outcome: validation IoU before and after, the loss history, where the adapters went."""

    initial: EvaluationReport | None
    best: EvaluationReport | None
    best_step: int
    steps_run: int
    stopped_early: bool
    losses: list[float] = field(default_factory=list)
    output: Path | None = None


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
        image = _photometric(view.image, rng) if config.augment else view.image
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
            target = _low_res_target(view.mask, input_size, model.image_size, model.mask_input_size, device)
            losses.append(segmentation_loss(logits, predicted_iou, target)["loss"])
        loss = torch.stack(losses).mean()
        loss.backward()
    torch.nn.utils.clip_grad_norm_([p for _, p in model.trainable_parameters()], max_norm=1.0)
    optimizer.step()
    model.weights_version += 1
    return float(loss.detach())


def _training_prompts(model: ClipSamModel, view: Augmented, similarity: torch.Tensor, input_size, config, rng):
    """Prompts in SAM's input frame, made exactly as the chosen inference mode makes them."""
    from segment_anything.utils.transforms import ResizeLongestSide

    device = model.device
    original_size = view.mask.shape
    transform = ResizeLongestSide(model.image_size)
    mask_prompt = None
    if model.config.similarity_mask_prompt:
        mask_prompt = mask_prompt_from_similarity(
            similarity.detach(), model.config.similarity_threshold, input_size, model.image_size, model.mask_input_size
        )
    if config.mode == "text":
        coords, labels = text_mode_points(similarity.detach(), original_size, model.config)
        box = None
    else:
        coords, labels, box = manual_prompts(view.mask, rng)
    points = None
    if coords is not None:
        points = (
            torch.as_tensor(transform.apply_coords(coords, original_size), dtype=torch.float32, device=device)[None],
            torch.as_tensor(labels, dtype=torch.int, device=device)[None],
        )
    boxes = None
    if box is not None:
        boxes = torch.as_tensor(transform.apply_boxes(box[None], original_size), dtype=torch.float32, device=device)
    return points, boxes, mask_prompt


__all__ = [
    "ConceptDataset",
    "EvaluationReport",
    "Sample",
    "TrainProgress",
    "TrainResult",
    "TrainingConfig",
    "augment",
    "evaluate",
    "iter_evaluate",
    "iter_train",
    "manual_prompts",
    "parse_concepts",
    "resume_path",
    "segmentation_loss",
    "train",
]
