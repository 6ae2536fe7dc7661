"""Embedding store benchmark: a revisited image read from disk against computing it.

In one process, with random weights (speed does not depend on their values), a 1024 x 1024
image at SAM's own input size, text-only mode (concept "nucleus"):
- the model fingerprint that keys the store: first call (hashes the weights) and later ones;
- session 1: set_image + predict computing everything, features written to the store as they
  are computed (the time of the writes is shown apart);
- session 2: a new predictor on a new store object over the same folder, as a later session
  opening the image again: set_image + predict with the features read from disk;
- the same image revisited in memory (``images_kept``), for reference;
- what the store holds per image, what SAM's input (not stored) costs to recompute, and what
  compressing the features would save.
A warm-up image runs first, uncounted. Ratios are against session 1 in this run.

    python benchmarks/bench_embedding_store.py                          # vit_b + ViT-B-16
    python benchmarks/bench_embedding_store.py --sam tiny --clip tiny   # a smoke test in seconds
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def _image(seed: int, size: int = 1024):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def _segment(predictor, image, concept: str) -> tuple[float, dict[str, float], tuple]:
    """Seconds of set_image + set_concept + text-only predict, seconds per stage run, and the result."""
    stages: dict[str, float] = {}
    start = time.perf_counter()
    predictor.set_image(image)
    predictor.set_concept(concept)
    stage, stage_start = None, time.perf_counter()
    for next_stage in predictor.iter_prepare():
        now = time.perf_counter()
        if stage is not None:
            stages[stage] = now - stage_start
        stage, stage_start = next_stage, now
    if stage is not None:
        stages[stage] = time.perf_counter() - stage_start
    result = predictor.predict()
    return time.perf_counter() - start, stages, result


def _timed_writes(store) -> list[float]:
    """Record the seconds of each ``store.write``."""
    seconds, write = [], store.write

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return write(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    store.write = timed
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam", default="vit_b", help="SAM variant (tiny: a smoke test)")
    parser.add_argument("--clip", default="ViT-B-16", help="CLIP model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16 or auto")
    parser.add_argument("--store", default=None, help="the store's folder (default: a temporary one)")
    args = parser.parse_args(argv)

    import numcodecs
    import numpy as np
    import torch

    import napari_clipsam as nc
    from napari_clipsam._machine import cpu_description
    from napari_clipsam.inference import embedding_store
    from napari_clipsam.inference.embedding_store import EmbeddingStore, model_fingerprint

    torch.manual_seed(0)
    model = nc.load_model(sam=args.sam, clip=args.clip, sam_checkpoint=None, clip_pretrained=None,
                          device=args.device, precision=args.precision)
    image = _image(0)
    print(f"machine: {cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"models: SAM {args.sam} + CLIP {args.clip}, random weights, {model.precision} on {model.device}, "
          f"SAM input {model.image_size} px, image {image.shape[1]}x{image.shape[0]}")

    hashed = sum(tensor.numel() * tensor.element_size() for name, tensor in model.state_dict().items()
                 if not name.startswith(embedding_store._DECODER_WEIGHTS))
    start = time.perf_counter()
    model_fingerprint(model)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(100):
        model_fingerprint(model)
    warm = (time.perf_counter() - start) / 100

    with tempfile.TemporaryDirectory() as temporary, torch.inference_mode():
        folder = args.store or os.path.join(temporary, "store")
        warm_up = nc.ClipSamPredictor(model)  # kernels and allocators; not counted, not stored
        _segment(warm_up, _image(1), "warm-up")
        del warm_up

        store = EmbeddingStore(folder)
        writes = _timed_writes(store)
        first = nc.ClipSamPredictor(model, embedding_cache=store)
        computed, computed_stages, computed_result = _segment(first, image, "nucleus")
        first.set_image(_image(2))  # leave the image, then come back to it in memory
        in_memory, _, _ = _segment(first, image, "nucleus")

        second = nc.ClipSamPredictor(model, embedding_cache=EmbeddingStore(folder))
        stored, stored_stages, stored_result = _segment(second, image, "nucleus")
        identical = all(np.array_equal(a, b) for a, b in zip(computed_result, stored_result))
        per_image = EmbeddingStore(folder).size_bytes()
        sam_input_mb = second.features.sam_input.numel() * second.features.sam_input.element_size() / 1e6
        raw = second.features.embeddings["nucleus"].cpu().contiguous().numpy().tobytes()
        start = time.perf_counter()
        compressed = len(numcodecs.Zstd(level=1).encode(raw))
        zstd_seconds = time.perf_counter() - start

    print(f"\nweights hashed for the fingerprint: {hashed / 1e6:.0f} MB")
    print(f"{'model fingerprint, first call (s)':52} {cold:8.3f}")
    print(f"{'model fingerprint, later calls (ms)':52} {warm * 1000:8.3f}")
    print(f"\n{'':52} {'seconds':>8} {'/ computed':>10}")
    rows = [("session 1: set + predict, computed and stored", computed, computed_stages),
            ("session 2: set + predict, read from the store", stored, stored_stages),
            ("session 1: set + predict, revisited in memory", in_memory, {})]
    for label, seconds, stages in rows:
        print(f"{label:52} {seconds:8.3f} {seconds / computed:10.4f}")
        for stage, stage_seconds in stages.items():
            print(f"    {stage:48} {stage_seconds:8.3f}")
    print(f"{'  of session 1: writing to the store':52} {sum(writes):8.3f} {sum(writes) / computed:10.4f}")
    print(f"{'session 2 with the fingerprint (a new process)':52} {stored + cold:8.3f} "
          f"{(stored + cold) / computed:10.4f}")
    print(f"\nspeed-up from the store: {computed / stored:.0f}x "
          f"({computed / (stored + cold):.0f}x with the fingerprint)")
    print(f"identical masks, scores and logits: {identical}")
    print(f"store per image and concept: {per_image / 1e6:.1f} MB; SAM input (not stored): {sam_input_mb:.1f} MB, "
          f"recomputed in {stored_stages.get(nc.ClipSamPredictor.STAGE_IMAGE, 0.0) * 1000:.0f} ms")
    print(f"zstd (level 1) would store an embedding in {compressed / len(raw):.0%} of its size, "
          f"for {zstd_seconds * 1000:.0f} ms more per write (stored raw)")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
