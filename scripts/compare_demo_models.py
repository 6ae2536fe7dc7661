"""Compare demo-model files on validation scenes that no training run selects on, with one set of prompts.

    python scripts/compare_demo_models.py demo /tmp/stage6.safetensors /tmp/stage7.safetensors

Each run of ``train_demo_model.py`` validates on the first ``--validation-scenes`` scenes from
its ``--validation-seed`` with manual-mode prompts drawn from its own ``--seed``, and keeps its
best file by them: its figures compare neither across runs nor with fresh scenes. This script
scores every file on the same other scenes (``--scenes`` from ``--first-scene``, 1,060,000:
in the validation range, which no training run may draw from since stage 6 trained on
1,000,000 to 1,002,999; never the quality benchmark's held-out scenes from 2,000,000) with
the same prompts (``--prompt-seed``), in the text and manual modes as training's "both"
validation does, and prints the mean IoU overall and per concept. ``demo`` names the
shipped file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_demo_model import VALIDATION_SEED, scenes_dataset  # noqa: E402 (the script's own folder, just added)

# Past the scenes stage 6 trained on (1,000,000 + 3000) and those later runs validate on (1,050,000 + 20).
FIRST_SCENE = VALIDATION_SEED + 60_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="demo-model files of every weight, or 'demo' for the shipped one")
    parser.add_argument("--scenes", type=int, default=48)
    parser.add_argument("--first-scene", type=int, default=FIRST_SCENE,
                        help="the first scene's seed (1000100 gives the comparison stages 6 and 7 were chosen on)")
    parser.add_argument("--prompt-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    import napari_clipsam as nc
    from napari_clipsam._machine import cpu_description
    from napari_clipsam.training.evaluate import evaluate
    from napari_clipsam.weights.adapters_file import read_adapters_metadata

    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_description()}, torch {torch.__version__}, {args.threads} threads; scenes "
          f"{args.first_scene}..{args.first_scene + args.scenes - 1}, prompt seed {args.prompt_seed}", flush=True)
    scenes = scenes_dataset(args.scenes, args.first_scene, 256)
    for name in args.files:
        if name == "demo":
            model = nc.load_model(preset="demo", device="cpu", precision="fp32")
        else:  # each file with its own architecture (demo, or demo-deep grown from it)
            metadata = read_adapters_metadata(name)
            model = nc.load_model(sam=metadata["sam"], clip=metadata["clip"], sam_checkpoint=None, clip_pretrained=None,
                                  adapters=name, device="cpu", precision="fp32")
        report = evaluate(model, scenes, "both", seed=args.prompt_seed, image_size=256)
        per_concept = {concept: round(values["iou"], 3) for concept, values in sorted(report.per_concept.items())}
        print(f"{name}: IoU {report.iou:.3f} {json.dumps(per_concept)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
