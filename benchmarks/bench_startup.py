"""Start-up benchmark: from a command's start to its first mask, each run in a fresh process.

Prints wall time and the child's peak resident memory for
- ``python -c "import napari_clipsam"`` (what every script pays);
- ``napari-clipsam --help``;
- ``napari-clipsam segment`` of a small generated image with the demo model (``--preset demo``);
- the same with random weights for ``--sam``/``--clip`` (default vit_b + ViT-B-16:
  ``--sam-checkpoint none --clip-pretrained none``, the full-size model's imports and build
  with no download; its first mask includes one encoder pass at 1024 px);
then, in one more fresh process per model, where a segment's time goes (imports, model build and
weights, first mask), and the slowest imports of the segment command (``python -X importtime``).
A command's wall time includes the interpreter's exit after the labels are written (torch's
teardown: about a second here); the stages end when the labels are written.

    python benchmarks/bench_startup.py                      # demo x3, vit_b x1
    python benchmarks/bench_startup.py --sam tiny --clip tiny --repeats 1   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The ``napari-clipsam`` console script's code: the command runs under this interpreter (and
# its -X options) whether or not the script is on PATH.
_CLI = "import sys; from napari_clipsam.cli import main; sys.exit(main())"
# Packages the segment command does not need; the import-time run reports which it loaded.
_NOT_NEEDED = ("napari", "qtpy", "PyQt5", "PyQt6", "dask", "distributed", "matplotlib", "triton", "skimage")
# The command, then the packages of _NOT_NEEDED really loaded (an import blocked with
# ``sys.modules[name] = None``, as triton's, still shows in -X importtime's list).
_CLI_REPORTING = ("import sys; from napari_clipsam.cli import main; code = main(); "
                  f"print('loaded:', *[n for n in {_NOT_NEEDED!r} if sys.modules.get(n) is not None]); "
                  "sys.exit(code)")


def run_child(args: list[str], folder: Path, env: dict | None = None) -> tuple[float, float, str, str]:
    """Run ``python ARGS`` to its end: wall seconds, the child's own peak resident set (GB), stdout, stderr."""
    out, err = folder / "stdout.txt", folder / "stderr.txt"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        start = time.perf_counter()
        pid = os.posix_spawn(sys.executable, [sys.executable, *args], env if env is not None else os.environ,
                             file_actions=[(os.POSIX_SPAWN_DUP2, stdout.fileno(), 1),
                                           (os.POSIX_SPAWN_DUP2, stderr.fileno(), 2)])
        # wait4 on this one child: its ru_maxrss (KiB on Linux) is its own peak, not the largest
        # of every child this process ever waited for (RUSAGE_CHILDREN).
        _, status, usage = os.wait4(pid, 0)
        seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    stdout_text, stderr_text = out.read_text(errors="replace"), err.read_text(errors="replace")
    if code:
        raise RuntimeError(f"python {' '.join(args)} failed ({code}):\n{stderr_text[-3000:]}")
    return seconds, usage.ru_maxrss * 1024 / 1e9, stdout_text, stderr_text


def _segment_args(image: Path, output: Path, model: list[str], device: str) -> list[str]:
    return ["segment", str(image), "--concept", "nucleus", "-o", str(output), "--overwrite", "--device", device,
            *model]


def stages_part(argv: list[str]) -> dict:
    """In this (fresh) process: the segment command of ``argv`` with a time stamp at each stage.

    The stages are the command's own: its module imported, then ``run`` (its imports, the input
    checks), ``load_model`` (the model code's imports, build, weights), and the rest up to the
    labels written (reading the image, the encoder, the first mask).
    """
    launched = float(os.environ["BENCH_STARTUP_LAUNCHED"])
    from napari_clipsam import cli
    from napari_clipsam.cli import segment

    stamps = {"cli imported": time.time()}
    load_model = segment.load_model

    def timed_load_model(args):
        stamps["run's imports and input checks"] = time.time()
        model = load_model(args)
        stamps["load_model (model imports, build, weights)"] = time.time()
        return model

    segment.load_model = timed_load_model  # this throwaway process only
    if cli.main(argv) != 0:
        raise SystemExit(1)
    stamps["first mask (read, encode, decode, write)"] = time.time()
    stages, previous = {}, launched
    for name, stamp in stamps.items():
        stages[name] = stamp - previous
        previous = stamp
    return stages


def parse_importtime(stderr: str) -> list[tuple[str, int, int]]:
    """``(module, self us, cumulative us)`` per line of ``python -X importtime``, with the nesting
    depth kept as leading spaces in the module name."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        own, cumulative, name = line[len("import time:"):].split("|", 2)
        rows.append((name[1:], int(own), int(cumulative)))  # one space follows the bar
    return rows


def print_imports(rows: list[tuple[str, int, int]], top: int) -> None:
    top_level = [(name, cumulative) for name, _, cumulative in rows if not name.startswith(" ")]
    total = sum(cumulative for _, cumulative in top_level)
    print(f"  all imports: {total / 1e6:.2f} s")
    print("  slowest imports as the command's code asked for them (cumulative):")
    for name, cumulative in sorted(top_level, key=lambda row: -row[1])[:top]:
        print(f"    {cumulative / 1e6:7.3f} s  {name}")
    packages: dict[str, int] = {}
    for name, own, _ in rows:
        root = name.strip().split(".")[0]
        packages[root] = packages.get(root, 0) + own
    print("  by package, its own modules' time summed:")
    for root, own in sorted(packages.items(), key=lambda item: -item[1])[:top]:
        print(f"    {own / 1e6:7.3f} s  {root}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each light command (median printed)")
    parser.add_argument("--model-repeats", type=int, default=1, help="runs of the random-weights segment")
    parser.add_argument("--sam", default="vit_b", help="SAM variant of the random-weights run (tiny: a smoke test)")
    parser.add_argument("--clip", default="ViT-B-16", help="CLIP model of the random-weights run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, default=256, help="side of the generated image, pixels")
    parser.add_argument("--top", type=int, default=12, help="imports listed")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.part == "stages":
        print(json.dumps(stages_part(rest)))
        return 0

    import tifffile

    from napari_clipsam._machine import cpu_description
    from napari_clipsam.synthetic.scenes import generate_scene

    print(f"machine: {cpu_description()}; python {sys.version.split()[0]}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    random_model = ["--sam", args.sam, "--clip", args.clip, "--sam-checkpoint", "none", "--clip-pretrained", "none"]
    models = {"demo preset": ["--preset", "demo"], f"random {args.sam} + {args.clip}": random_model}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as name:
        folder = Path(name)
        image = folder / "image.tif"
        scene = generate_scene(0, size=args.image_size)
        tifffile.imwrite(image, scene.image)
        commands = {
            "import napari_clipsam": (["-c", "import napari_clipsam"], args.repeats),
            "napari-clipsam --help": (["-c", _CLI, "--help"], args.repeats),
        }
        for label, model in models.items():
            repeats = args.repeats if label == "demo preset" else args.model_repeats
            commands[f"segment, {label}"] = (["-c", _CLI, *_segment_args(image, folder / "labels.tif", model,
                                                                            args.device)], repeats)
        print(f"\n{'command (fresh process each run)':44} {'wall s':>8} {'peak GB':>8}  runs")
        for label, (child_args, repeats) in commands.items():
            runs = [run_child(child_args, folder)[:2] for _ in range(repeats)]
            print(f"{label:44} {statistics.median(r[0] for r in runs):8.2f} "
                  f"{max(r[1] for r in runs):8.2f}  {repeats} (median time, largest peak)")

        print("\nwhere a segment's time goes (one run each, seconds from the process's launch)")
        for label, model in models.items():
            env = {**os.environ, "BENCH_STARTUP_LAUNCHED": repr(time.time())}
            _, _, stdout, _ = run_child([__file__, "--part", "stages", *_segment_args(
                image, folder / "labels.tif", model, args.device)], folder, env)
            stages = json.loads(stdout.strip().splitlines()[-1])
            total = sum(stages.values())
            print(f"  {label}: {total:.2f} s")
            for stage, seconds in stages.items():
                print(f"    {stage:46} {seconds:7.2f} s")

        print("\nimports of `napari-clipsam segment --preset demo` (python -X importtime, one run)")
        _, _, stdout, stderr = run_child(["-X", "importtime", "-c", _CLI_REPORTING,
                                     *_segment_args(image, folder / "labels.tif", models["demo preset"],
                                                    args.device)], folder)
        print_imports(parse_importtime(stderr), args.top)
        loaded = next(line for line in stdout.splitlines() if line.startswith("loaded:")).split()[1:]
        print(f"  not needed by the command, loaded anyway: {', '.join(loaded) or 'none'} "
              f"(of {', '.join(_NOT_NEEDED)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
