"""``napari-clipsam train`` and ``evaluate``: few-shot adaptation on labelled images, and its score."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..training.config import MODES
from ..training.run_files import file_state
from .common import check_outputs, job_progress, load_model, model_arguments


def add_parsers(commands, parents) -> None:
    train = commands.add_parser(
        "train",
        parents=parents,
        help="fine-tune adapters, prompt encoder and mask decoder on labelled images",
        description=(
            "Few-shot training on a folder of images and a folder of label images with matching names. "
            "A part of the samples is set aside for validation; the best validated state is saved."
        ),
    )
    _data_arguments(train)
    train.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE", help="adapters file to write (.safetensors)"
    )
    training = train.add_argument_group("training")
    training.add_argument("--steps", type=int, metavar="N", help="optimiser steps (default 200)")
    training.add_argument("--batch-size", type=int, metavar="N", help="samples per step (default 1)")
    training.add_argument("--lr", type=float, metavar="X", help="learning rate of adapters and decoder (default 5e-5)")
    training.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                          help="part of each concept's samples kept for validation (default 0.2)")
    training.add_argument("--eval-every", type=int, metavar="N", help="validate every N steps (default 25)")
    training.add_argument("--patience", type=int, metavar="N",
                          help="stop after N validations without improvement; 0 never stops early (default 4)")
    training.add_argument("--seed", type=int, default=0, metavar="N",
                          help="for the split, sampling, augmentation and prompts (default 0)")
    training.add_argument("--no-augment", action="store_true", help="no flips, rotations, crops, intensity jitter")
    training.add_argument("--no-checkpointing", action="store_true",
                          help="no gradient checkpointing: faster steps, much more memory")
    training.add_argument("--train-clip-attention", action="store_true",
                          help="also train CLIP's vision attention, at its own learning rate (--clip-lr)")
    training.add_argument("--clip-lr", type=float, metavar="LR",
                          help="learning rate of CLIP's attention with --train-clip-attention (default 1e-7)")
    training.add_argument("--log-every", type=int, default=10, metavar="N",
                          help="print the loss every N steps, or sooner once 5 s have passed (default 10)")
    training.add_argument("--resume", action="store_true",
                          help="continue from the training state kept beside --output (<output>.resume.pt)")
    training.add_argument("--keep-resume-state", action="store_true",
                          help="keep the training state beside --output when the run ends (finished or Ctrl+C), "
                               "so that --resume can continue it; without this it is removed then")
    training.add_argument("--overwrite", action="store_true",
                          help="replace an existing --output (and its training state) and start afresh")
    model_arguments(train)
    train.set_defaults(run=run_train)

    evaluate = commands.add_parser(
        "evaluate",
        parents=parents,
        help="IoU and Dice per concept on labelled images",
        description="Segment each labelled image as the chosen mode would and score it against its labels.",
    )
    _data_arguments(evaluate)
    evaluate.add_argument("--json", type=Path, metavar="FILE", help="also write the report to this JSON file")
    evaluate.add_argument("--seed", type=int, default=0, metavar="N", help="for the manual mode's prompts (default 0)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    model_arguments(evaluate)
    evaluate.set_defaults(run=run_evaluate)


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--images", type=Path, required=True, metavar="DIR", help="folder of images")
    group.add_argument(
        "--labels", type=Path, required=True, metavar="DIR",
        help="folder of label images with matching names, optionally with a suffix: cell1.tif, cell1_labels.tif",
    )
    concepts = group.add_mutually_exclusive_group(required=True)
    concepts.add_argument(
        "-c", "--concept", dest="concepts", metavar="NAME", type=lambda text: _concepts(text, mapping=False),
        help="every non-zero label is this concept, e.g. 'nucleus'",
    )
    concepts.add_argument(
        "--concepts", dest="concepts", metavar="LABEL=NAME,...", type=lambda text: _concepts(text, mapping=True),
        help="label value -> concept, e.g. '1=nucleus, 2=mitochondria'; one sample per class present",
    )
    group.add_argument("--channel", type=int, help="channel to use in multi-channel images")
    group.add_argument(
        "--mode", choices=MODES, default="text",
        help="the inference mode the model is (to be) used in: text-only (target: every object of the concept), "
        "manual (clicks and a box drawn from one object, target: that object), or both (default text)",
    )


def _concepts(text: str, mapping: bool) -> str | dict[int, str]:
    """``--concept NAME`` (``mapping=False``) or ``--concepts "1=nucleus, 2=mitochondria"``."""
    from ..training.data import parse_concepts

    try:
        concepts = parse_concepts(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if mapping and isinstance(concepts, str):
        raise argparse.ArgumentTypeError(
            f"write label=concept pairs, e.g. '1=nucleus, 2=mitochondria', not {text!r}; "
            "for one concept on every non-zero label use --concept"
        )
    if not mapping and not isinstance(concepts, str):
        raise argparse.ArgumentTypeError(f"{text!r} maps label values to concepts: use --concepts")
    return concepts


def _dataset(args: argparse.Namespace):
    from ..training.data import ConceptDataset

    return ConceptDataset.from_folders(args.images, args.labels, args.concepts, channel=args.channel)


def _concept_scores(report) -> str:
    return ", ".join(f"{concept} {scores['iou']:.3f}" for concept, scores in report.per_concept.items())


class _TrainingPrinter:
    """One line per validation; a line for the first and last steps, and for a step once
    ``every`` steps or 5 s have passed since the last line (slow steps each get one)."""

    seconds = 5.0

    def __init__(self, every: int, mark_best: bool) -> None:
        self.every = every
        # A resumed run's best so far is in the saved state, unknown here: no mark then.
        self.mark_best = mark_best
        self.best_iou: float | None = None
        self.last_step = 0
        self.printed_step: int | None = None
        self.printed_at = time.monotonic()
        self.step_seconds: list[float] = []

    def show(self, event, seconds: float) -> None:
        if event.stage == "training":
            self.last_step = event.step
            self.step_seconds.append(seconds)
            now = time.monotonic()
            if (self.printed_step is None or event.step == event.total or event.step - self.printed_step >= self.every
                    or now - self.printed_at >= self.seconds):
                mean = sum(self.step_seconds) / len(self.step_seconds)
                print(f"step {event.step:>{len(str(event.total))}}/{event.total}  loss {event.loss:.4f}  "
                      f"lr {event.learning_rate:.2e}  {mean:.2f} s/step", flush=True)
                self.printed_step, self.printed_at, self.step_seconds = event.step, now, []
        elif event.validation is not None:
            report = event.validation
            better = self.mark_best and (self.best_iou is None or report.iou > self.best_iou)
            if better:
                self.best_iou = report.iou
            print(f"validation at step {event.step}: IoU {report.iou:.3f} ({_concept_scores(report)})"
                  + ("  best so far" if better else ""), flush=True)


def _interrupted_message(output: Path, output_before, state: Path, state_before, args) -> str:
    """One truthful line about the files after Ctrl+C."""
    after = file_state(output)
    if after == output_before:
        kept = f"{output} left as it was" if after is not None else f"{output} not written"
    else:  # the interrupt came during the final save, which completed (files are written whole)
        kept = f"the training had finished: {output} was written"
    if state.is_file() and (args.resume or file_state(state) != state_before):
        return f"{kept}; --resume continues from the state kept in {state}"
    if after == output_before and not args.keep_resume_state:
        return f"{kept}; with --keep-resume-state a run keeps a state that --resume can continue after Ctrl+C"
    return kept


def run_train(args: argparse.Namespace) -> int:
    from ..errors import OutputExistsError
    from ..training.config import TrainingConfig
    from ..training.run_files import resume_path

    output, state = args.output, resume_path(args.output)
    if output.suffix.lower() != ".safetensors":
        raise ValueError(f"The adapters file needs the .safetensors suffix, got {output}.")
    if args.resume:
        if not state.is_file():
            raise FileNotFoundError(
                f"Nothing to resume: {state} does not exist (a run keeps it with --keep-resume-state, "
                "or when it was killed)."
            )
    elif not args.overwrite:
        existing = [str(p) for p in (output, state) if p.exists()]
        if existing:
            raise OutputExistsError(
                f"Output exists: {', '.join(existing)}. Choose another --output, add --overwrite to start "
                "afresh, or --resume to continue that training."
            )
    if not 0 <= args.val_fraction < 1:
        raise ValueError(f"--val-fraction must be at least 0 and below 1, got {args.val_fraction}.")
    if args.log_every < 1:
        raise ValueError(f"--log-every must be at least 1, got {args.log_every}.")
    given = {
        "mode": args.mode, "steps": args.steps, "batch_size": args.batch_size, "learning_rate": args.lr,
        "eval_every": args.eval_every, "patience": args.patience, "seed": args.seed,
        "augment": not args.no_augment, "gradient_checkpointing": not args.no_checkpointing,
        "image_size": args.image_size, "clip_learning_rate": args.clip_lr,
    }
    config = TrainingConfig(**{name: value for name, value in given.items() if value is not None})

    train_set, val_set = _dataset(args).split(args.val_fraction, seed=args.seed)
    print(f"data: {len(train_set)} training and {len(val_set)} validation samples of "
          f"{', '.join(train_set.concepts)}", flush=True)
    if not val_set:
        print("no validation samples (setting one aside needs two or more samples of a concept and "
              "--val-fraction above 0): the last state will be saved", flush=True)
    model = load_model(args)
    # The model code after load_model, which first keeps triton out of CPU-only processes (model/build.py).
    from ..training.engine import iter_train

    if args.train_clip_attention:
        model.set_clip_attention_trainable(True)
    print(f"training: {config.steps} steps of {config.batch_size}, {config.mode} mode, lr {config.learning_rate:g}, "
          f"SAM input {config.image_size or model.image_size}, on {model.device} ({model.precision})"
          + (f", CLIP attention trained at lr {config.clip_learning_rate:g}" if args.train_clip_attention else ""),
          flush=True)

    output_before, state_before = file_state(output), file_state(state)
    job = iter_train(model, train_set, val_set or None, config, output=output, resume=args.resume,
                     replace=args.overwrite, keep_resume_state=args.keep_resume_state)
    printer = _TrainingPrinter(args.log_every, mark_best=not args.resume)
    try:
        while True:
            begin = time.monotonic()
            try:
                event = next(job)
            except StopIteration as stop:
                result = stop.value
                break
            printer.show(event, time.monotonic() - begin)
    except KeyboardInterrupt:
        job.close()  # the engine writes no adapters file when closed, and removes its state unless kept
        print(f"napari-clipsam: training interrupted at step {printer.last_step}; "
              + _interrupted_message(output, output_before, state, state_before, args),
              file=sys.stderr)
        return 130
    finally:
        job.close()

    if result.best is not None:
        before = f"{result.initial.iou:.3f} before training, " if result.initial is not None else ""
        print(f"validation IoU: {before}best {result.best.iou:.3f} at step {result.best_step} "
              f"({_concept_scores(result.best)})")
    else:
        print(f"no validation: saved the state after step {result.best_step}")
    if result.stopped_early:
        print(f"stopped early after {result.steps_run} of {config.steps} steps: "
              f"{config.patience} validations without improvement")
    print(f"adapters ({', '.join(train_set.concepts)}): {result.output}")
    if state.is_file():
        print(f"resumable state: {state}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    import json

    from .._io import write_atomically

    if args.json is not None:
        check_outputs([args.json], overwrite=args.overwrite, option="--json")
    dataset = _dataset(args)
    model = load_model(args)
    from ..training.evaluate import iter_evaluate  # after load_model: see run_train

    job = iter_evaluate(model, dataset, args.mode, seed=args.seed, image_size=args.image_size)
    report = job_progress(job, "evaluating", unit="sample")

    image_size = args.image_size or model.preferred_image_size or model.image_size
    print(f"{len(dataset)} samples, {args.mode} mode, SAM input {image_size}, "
          f"adapters: {args.adapters or 'none (untrained)'}")
    rows = [(concept, scores["count"], scores["iou"], scores["dice"]) for concept, scores in report.per_concept.items()]
    rows.append(("overall", len(dataset), report.iou, report.dice))
    width = max(len("concept"), *(len(row[0]) for row in rows))
    print(f"{'concept':<{width}}  samples    IoU   Dice")
    for concept, count, iou, dice in rows:
        print(f"{concept:<{width}}  {count:>7}  {iou:.3f}  {dice:.3f}")
    print(f"mean IoU over concepts: {report.mean_concept_iou:.3f}")
    if args.json is not None:
        settings = {
            "images": str(args.images), "labels": str(args.labels), "mode": args.mode, "seed": args.seed,
            "sam": args.sam, "clip": args.clip, "adapters": str(args.adapters) if args.adapters else None,
            "image_size": image_size,
        }
        text = json.dumps({**report.to_dict(), "settings": settings}, indent=2)
        write_atomically(args.json, lambda path: Path(path).write_text(text + "\n", encoding="utf-8"),
                         replace=args.overwrite)
        print(f"report: {args.json}")
    return 0


