"""Train the demo model shipped in the package, from scratch, on generated scenes.

    python scripts/train_demo_model.py                       # the shipped file, from seed 0
    python scripts/train_demo_model.py --steps 200 --output /tmp/demo.safetensors   # a quick try

Every weight (SAM, both CLIP towers, adapters) is trained by our own engine
(``napari_clipsam.training``, ``train_base=True``, ``mode="both"``) on scenes from
``napari_clipsam.synthetic.generate_scene``: training scenes use seeds from 0, validation
scenes seeds from 1,000,000; the quality benchmark (``benchmarks/bench_quality.py``) uses
seeds from 2,000,000, which training never sees. The same seed, torch build and thread
count give the same file. The file is stored in float16 (about 5 MB).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "src/napari_clipsam/weights/files/clipsam-demo.safetensors"
VALIDATION_SEED = 1_000_000
# Scene seeds no training run may draw: validation and comparison scenes, and the quality
# benchmark's held-out scenes (benchmarks/bench_quality.py, FIRST_SEED).
RESERVED_SCENES = ((VALIDATION_SEED, VALIDATION_SEED + 100_000, "validation"),
                   (2_000_000, None, "held-out (benchmarks/bench_quality.py)"))


def reserved_overlap(first: int, count: int) -> str | None:
    """What the training scenes ``first .. first + count - 1`` share with reserved scenes, or None."""
    for low, high, name in RESERVED_SCENES:
        if first + count > low and (high is None or first < high):
            return f"{name} scenes from {low:,}" + ("" if high is None else f" to {high - 1:,}")
    return None


def demo_config():
    """The demo model's CLIP-guided SAM configuration (its CLIP sees 256 px, a 16x16 grid)."""
    from napari_clipsam.model.config import ClipSamConfig

    return ClipSamConfig(clip_image_size=256, surgery_blocks=2, templates="microscopy")


def scene_kind(seed: int, mixed_share: float) -> str | None:
    """The kind of training scene ``seed``: "mixed" with probability ``mixed_share``, else the
    seed's own draw (None; a quarter of those are mixed too). 0 gives every earlier stage's scenes."""
    import numpy as np

    if mixed_share <= 0:
        return None
    return "mixed" if np.random.default_rng([seed, 1]).random() < mixed_share else None


def scenes_dataset(count: int, first_seed: int, size: int, mixed_share: float = 0.0):
    from napari_clipsam.synthetic import DEMO_CONCEPTS, generate_scene
    from napari_clipsam.training.data import ConceptDataset

    scenes = [generate_scene(first_seed + index, size=size, kind=scene_kind(first_seed + index, mixed_share))
              for index in range(count)]
    # Concepts absent from a scene give empty samples: typed on an image without them, they find nothing.
    return ConceptDataset.from_instance_labels(
        [(scene.image, scene.labels) for scene in scenes], names=[f"scene {first_seed + i}" for i in range(count)],
        absent=DEMO_CONCEPTS,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=1200, help="training scenes (seeds seed*100000 + i)")
    parser.add_argument("--validation-scenes", type=int, default=12)
    parser.add_argument("--mixed-share", type=float, default=0.0,
                        help="share of training scenes drawn as 'mixed' (nuclei, bacteria and spots together), "
                             "besides the quarter of the others that are; validation scenes stay as drawn")
    parser.add_argument("--validation-seed", type=int, default=VALIDATION_SEED,
                        help="first validation scene (a later one validates on scenes no earlier stage trained on)")
    parser.add_argument("--allow-validation-overlap", action="store_true",
                        help="only to reproduce stage 6, whose training scenes included the validation scenes")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=6e-4)
    parser.add_argument("--similarity-weight", type=float, default=1.0,
                        help="weight of the similarity map's loss beside the mask's")
    parser.add_argument("--lone-click-share", type=float, default=0.0,
                        help="share of manual-mode prompts that are one positive click alone "
                             "(TrainingConfig.lone_click_share; stages 1-9 ran with 0)")
    parser.add_argument("--box-only-share", type=float, default=0.0,
                        help="share of manual-mode prompts (not lone clicks) that are the object's box alone "
                             "(TrainingConfig.box_only_share; stages 1-12 ran with 0: the demo model never saw a box "
                             "without a click)")
    parser.add_argument("--neighbour-negative-share", type=float, default=0.0,
                        help="share of the manual mode's usual prompts whose negative clicks lie on the target's "
                             "touching objects (TrainingConfig.neighbour_negative_share; stages 1-12 ran with 0)")
    parser.add_argument("--neighbour-weight", type=float, default=1.0,
                        help="manual mode: cross-entropy weight of the concept's other objects' pixels "
                             "(TrainingConfig.neighbour_weight; every shipped stage ran with 1)")
    parser.add_argument("--other-concept-weight", type=float, default=1.0,
                        help="cross-entropy weight of the pixels of a scene's other concepts "
                             "(TrainingConfig.other_concept_weight; every shipped stage ran with 1)")
    parser.add_argument("--full-resolution-loss", action="store_true",
                        help="mask loss on the logits upsampled to the input, as inference uses them "
                             "(TrainingConfig.full_resolution_loss; stages 1-10 ran without)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (results depend on it)")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from this file of every weight (continue an earlier run) instead of random weights")
    parser.add_argument("--deepen", action="store_true",
                        help="--init is a model with half of --sam's encoder blocks (e.g. a demo file for --sam "
                             "demo-deep): grow it (napari_clipsam.model.grow.deepen_encoder; new blocks start as the "
                             "identity, so training starts from the file's own masks)")
    parser.add_argument("--mask-refiner", type=int, default=0, metavar="WIDTH",
                        help="give the --init model a mask refiner of this width (ClipSamConfig.mask_refiner; "
                             "napari_clipsam.model.grow.add_mask_refiner: it starts as the identity)")
    parser.add_argument("--refiner-learning-rate", type=float, default=None,
                        help="learning rate of the mask refiner (TrainingConfig.refiner_learning_rate; "
                             "default: --learning-rate)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (a GPU's file differs from a CPU's in the last bits)")
    parser.add_argument("--sam", default="demo", help="SAM architecture (a variant of napari_clipsam.model.build_sam)")
    parser.add_argument("--evaluations", type=int, default=6, help="validations during the run")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop after this long; the output then holds the best state validated so far")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--save-last", type=Path, default=None,
                        help="also write the state after the last step here, or the step --max-minutes stopped at "
                             "(the output holds the best validated one)")
    args = parser.parse_args(argv)

    overlap = reserved_overlap(args.seed * 100_000, args.scenes)
    if overlap is not None and not (args.allow_validation_overlap and overlap.startswith("validation")):
        parser.error(f"--seed {args.seed} with --scenes {args.scenes} trains on scenes {args.seed * 100_000:,} to "
                     f"{args.seed * 100_000 + args.scenes - 1:,}, which include the {overlap}; choose another --seed "
                     f"(0 to 9 or 11 to 19 with up to 100,000 scenes).")
    low, high, _ = RESERVED_SCENES[0]
    if not low <= args.validation_seed <= high - args.validation_scenes:
        parser.error(f"--validation-seed {args.validation_seed} with --validation-scenes {args.validation_scenes} "
                     f"validates outside the validation scenes ({low:,} to {high - 1:,}): the held-out scenes must "
                     "not choose a file, and training scenes would flatter it; give a seed in that range.")
    if args.deepen and args.mask_refiner:
        parser.error("--deepen and --mask-refiner grow a model one way at a time; run them as two stages.")
    if (args.deepen or args.mask_refiner) and args.init is None:
        parser.error("--deepen and --mask-refiner grow the model of --init; give --init FILE.")
    if not 0 <= args.mixed_share <= 1:
        parser.error(f"--mixed-share is a share from 0 to 1, got {args.mixed_share}.")
    if args.save_last is not None and args.save_last.exists() and not args.overwrite:
        parser.error(f"{args.save_last} exists; give --overwrite to replace it, or another --save-last path.")
    import torch

    import napari_clipsam as nc
    from napari_clipsam._machine import cpu_description
    from napari_clipsam.training.config import TrainingConfig
    from napari_clipsam.training.engine import iter_train
    from napari_clipsam.weights.adapters_file import _MAX_DESCRIPTION_CHARACTERS, read_adapters_metadata

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the random initial weights
    device = f", {torch.cuda.get_device_name(args.device)}" if args.device.startswith("cuda") else ""
    print(f"CPU: {cpu_description()}{device}, torch {torch.__version__}, {args.threads} threads", flush=True)
    started = time.perf_counter()
    train_set = scenes_dataset(args.scenes, args.seed * 100_000, 256, args.mixed_share)
    val_set = scenes_dataset(args.validation_scenes, args.validation_seed, 256)
    print(f"{len(train_set)} training samples from {args.scenes} scenes, {len(val_set)} validation samples "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    grows = args.deepen or args.mask_refiner
    model = nc.load_model(sam=args.sam, clip="demo", sam_checkpoint=None, clip_pretrained=None, device=args.device,
                          precision="fp32",
                          # continuing a run: the configuration is the file's own (a refiner included)
                          config=None if args.init and not grows else demo_config().replace(mask_refiner=args.mask_refiner),
                          adapters=None if grows else args.init)
    if args.mask_refiner:
        from napari_clipsam.model.grow import add_mask_refiner

        add_mask_refiner(nc.load_model(sam=args.sam, clip="demo", sam_checkpoint=None, clip_pretrained=None,
                                       device=args.device, precision="fp32", config=demo_config(),
                                       adapters=args.init), model)
        print(f"added a mask refiner of width {args.mask_refiner} to {args.init}", flush=True)
    if args.deepen:
        from napari_clipsam.model.grow import deepen_encoder

        grown_from = read_adapters_metadata(args.init)["sam"]
        deepen_encoder(nc.load_model(sam=grown_from, clip="demo", sam_checkpoint=None, clip_pretrained=None,
                                     device=args.device, precision="fp32", config=demo_config(), adapters=args.init),
                       model)
        print(f"grown from {args.init} ({grown_from}, {len(model.sam.image_encoder.blocks) // 2} encoder blocks) to "
              f"{args.sam} ({len(model.sam.image_encoder.blocks)} blocks)", flush=True)
    config = TrainingConfig(
        mode="both", steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
        weight_decay=1e-3, warmup_fraction=0.05, eval_every=max(1, args.steps // args.evaluations), patience=0, augment=True,
        gradient_checkpointing=False, image_size=256, seed=args.seed, train_base=True,
        similarity_weight=args.similarity_weight,
        lone_click_share=args.lone_click_share,
        box_only_share=args.box_only_share,
        neighbour_weight=args.neighbour_weight,
        neighbour_negative_share=args.neighbour_negative_share,
        other_concept_weight=args.other_concept_weight,
        full_resolution_loss=args.full_resolution_loss,
        refiner_learning_rate=args.refiner_learning_rate,
    )
    concepts = sorted({sample.concept for sample in train_set if sample.mask.any()})
    command = "python scripts/train_demo_model.py " + " ".join(sys.argv[1:] if argv is None else argv)

    def describe(made_by: str, step: int, iou: float = float("nan"), last: bool = False) -> str:
        return (
            "napari-clipsam DEMO model: small CLIP-guided SAM trained from scratch on generated microscopy-like "
            f"scenes (napari_clipsam.synthetic) for the concepts {', '.join(concepts)}. For trying the plugin "
            f"offline; it knows nothing of real microscopy images. Made by: {made_by.strip()} (seed {args.seed}, "
            + (f"the state after its last step, {step})." if last else
               f"best validation step {step}, validation IoU {iou:.3f}).")
        )

    def fits(made_by: str) -> bool:
        """Whether both descriptions a run writes (best validated, last state) fit the file's limit."""
        return all(len(describe(made_by, args.steps, 1.0, last)) <= _MAX_DESCRIPTION_CHARACTERS for last in (False, True))

    if args.init is not None:
        import hashlib

        earlier = read_adapters_metadata(args.init).get("description", "")
        chain = earlier.split("Made by: ")[-1].split(" (seed")[0] + ", then " + command.strip()
        if not fits(chain):
            # The commands of every stage no longer fit the file's description: name the file continued from.
            digest = hashlib.sha256(args.init.read_bytes()).hexdigest()
            chain = f"the stages of the file of sha256 {digest} (docs/demo_model.md), then " + command.strip()
        command = chain
    if not fits(command):  # fails now, not at the first save an hour in
        parser.error(f"The file's description would pass {_MAX_DESCRIPTION_CHARACTERS} characters with this "
                     "command line; shorten its paths.")

    def save(step: int, iou: float = float("nan"), path: Path | None = None) -> None:
        """Write the model as it is now (the state just validated, or the last one to ``path``) with how it was made."""
        description = describe(command, step, iou, last=path is not None)
        model.save_adapters(path or args.output, concepts=concepts,
                            replace=args.overwrite or (saved if path is None else False), every_weight=True,
                            dtype=torch.float16,
                            extra_metadata={"training_mode": "both", "description": description})

    # The output is written at each better validation, so a stopped or killed run leaves its best state.
    saved, best, last = False, -1.0, time.perf_counter()
    deadline = started + args.max_minutes * 60 if args.max_minutes else None
    job = iter_train(model, train_set, val_set, config)
    for event in job:
        if event.stage == "training" and event.step == event.total and args.save_last is not None:
            save(event.step, path=args.save_last)  # before the run puts the best validated state back
        if event.stage == "training" and event.step % 25 == 0:
            now = time.perf_counter()
            print(f"step {event.step}/{event.total} loss {event.loss:.4f} lr {event.learning_rate:.2e} "
                  f"({(now - last) / 25:.3f} s/step)", flush=True)
            last = now
        elif event.stage == "validated":
            report = event.validation
            print(f"step {event.step}: validation IoU {report.iou:.3f} "
                  + json.dumps({c: round(v["iou"], 3) for c, v in report.per_concept.items()}), flush=True)
            if report.iou > best:
                best = report.iou
                save(event.step, report.iou)
                saved = True
        if deadline is not None and time.perf_counter() > deadline and event.stage == "training":
            if args.save_last is not None and event.step < event.total:
                save(event.step, path=args.save_last)  # the state it stopped at, before closing puts the best back
            job.close()
            print(f"stopped at step {event.step}: --max-minutes {args.max_minutes} reached", flush=True)
            break
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB, best validation IoU {best:.3f}) in "
          f"{(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
