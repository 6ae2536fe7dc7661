"""The features of the last few images a predictor saw, so that revisiting one costs nothing.

A z-stack's planes, a time series' frames and the widget's "previous plane" come back to
images already encoded. :class:`RecentImages` keeps, per image (its content digest), what
the predictor computed for it: SAM's input, CLIP's patch features, the encoder prefix and
the embedding per concept, similarity maps. Each bundle remembers the model's weights
version and the SAM input size it was computed at, and is used only while both are still
the same. The oldest image goes first when more than ``size`` are kept.

Memory: for vit_b at 1024 px an image costs about 30 MB plus 4 MB per concept; for the demo
model well under 1 MB.

With an :class:`~napari_clipsam.inference.embedding_store.EmbeddingStore` the features also
go to disk, as soon as the predictor computes an embedding (:meth:`RecentImages.persist`),
and come back from it when the predictor lacks them (:meth:`RecentImages.load`): an image
reopened in a later session, or one that left memory, skips the encoders. On disk: CLIP's
patch features, per concept the embedding and similarity grid, and the encoder prefix where
it runs encoder blocks (concept-conditioned blocks that start later). Not SAM's input:
12.6 MB per image at 1024 px, recomputed in ~10 ms (``benchmarks/bench_embedding_store.py``).
"""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import torch
import xxhash

from .embedding_store import EmbeddingStore, StoreLike, model_fingerprint, open_store
from .features import ImageFeatures

# Images whose features a predictor keeps besides the current one, by default.
DEFAULT_IMAGES_KEPT = 4


def _current(predictor) -> bool:
    """Whether the predictor's features hold for its model's weights and its size now."""
    return predictor.features.valid_for(predictor.model.weights_version, predictor.image_size)


class RecentImages:
    """Feature bundles of recently set images, newest last."""

    def __init__(self, size: int = DEFAULT_IMAGES_KEPT, store: StoreLike = None) -> None:
        """Args:
            size: images kept in memory besides the predictor's current one.
            store: where features are also kept on disk (a folder or an open store); None: memory only.
        """
        if size < 0:
            raise ValueError(f"The number of images to keep must be 0 or more, got {size}.")
        self.size = size
        self._bundles: OrderedDict[str, tuple[np.ndarray, ImageFeatures]] = OrderedDict()
        self.store = open_store(store)

    def __len__(self) -> int:
        return len(self._bundles)

    def keep(self, digest: str | None, image: np.ndarray, features: ImageFeatures) -> None:
        """Keep an image (its content ``digest``) and its features, if any were computed."""
        if self.size == 0 or digest is None or features.sam_input is None:
            return
        self._bundles[digest] = (image, features)
        self._bundles.move_to_end(digest)
        while len(self._bundles) > self.size:
            self._bundles.popitem(last=False)

    def take(self, digest: str, weights_version: int, image_size: int | None
             ) -> tuple[np.ndarray, ImageFeatures] | None:
        """Remove and return image ``digest`` and its features; None when not kept or stale
        (computed with other weights or at another size)."""
        kept = self._bundles.pop(digest, None)
        if kept is None or not kept[1].valid_for(weights_version, image_size):
            return None
        return kept

    def clear(self) -> None:
        """Forget the images kept in memory (the store keeps its own)."""
        self._bundles.clear()

    # ------------------------------------------------------------------ disk
    def load(self, predictor, digest: str | None, concept: str | None) -> bool:
        """Give the predictor what the store holds of image ``digest`` that it lacks for ``concept``.

        The concept's embedding and similarity grid, CLIP's patch features (a predictor
        with a concept wants them, 2.1 MB for ViT-B-16) and, only when the embedding is not
        stored, the encoder prefix (a later concept comes back here for it).
        Only features of the predictor's current weights and size are looked up; a damaged
        or mismatched piece is a miss. SAM's input is never stored: the predictor recomputes
        it (its cheap first stage). Returns whether the embedding was loaded.
        """
        features = predictor.features
        if self.store is None or digest is None or not _current(predictor):
            return False
        entry, expected = self._entry(predictor, digest), _expected_shapes(predictor)
        device = predictor.model.device
        if concept is not None and features.clip_patches is None:
            clip = self._read(entry, "clip", expected)
            if clip is not None:
                features.clip_patches = clip["patches"].to(device)
        if concept in features.embeddings:
            return False
        stored = self._read(entry, _concept_piece(concept), expected, concept)
        if stored is not None:
            features.add_embedding(concept, stored["embedding"].to(device))
            if concept is not None:
                features.similarity[concept] = stored["similarity"].to(device)
            return True
        if features.prefix is None:
            prefix = self._read(entry, "base", expected)
            if prefix is not None:
                features.prefix = prefix["prefix"].to(device)
        return False

    def persist(self, predictor, digest: str | None) -> None:
        """Write to the store what the predictor computed of image ``digest`` and the store lacks.

        Call it whenever the predictor computes an embedding: what a process computed then
        outlives it, even for the last image it saw.
        """
        store, features = self.store, predictor.features
        if store is None or not store.writable or digest is None or not _current(predictor):
            return  # features of weights (or a size) since replaced must not be filed under the new ones
        entry = self._entry(predictor, digest)
        # With adapters from the first block on (the default) the prefix is the patch embedding
        # alone: 12 MB for vit_b that its 0.3 s of compute do not justify.
        if features.prefix is not None and predictor.model.first_semantic_block > 0:
            store.write(entry, "base", {"prefix": features.prefix})
        if features.clip_patches is not None:
            store.write(entry, "clip", {"patches": features.clip_patches})
        for concept, embedding in list(features.embeddings.items()):
            arrays = {"embedding": embedding}
            if concept is not None:
                if concept not in features.similarity:
                    continue
                arrays["similarity"] = features.similarity[concept]
            store.write(entry, _concept_piece(concept), arrays, {"concept": concept})

    @staticmethod
    def _entry(predictor, digest: str) -> dict:
        return EmbeddingStore.entry(digest, model_fingerprint(predictor.model), _input_side(predictor))

    def _read(self, entry: dict, piece: str, expected: dict[str, tuple], concept: str | None = None
              ) -> dict[str, torch.Tensor] | None:
        """A piece's arrays if they are the ones this model expects at this size, else None."""
        stored = self.store.read(entry, piece)
        if stored is None:
            return None
        arrays, extra = stored
        names = {"base": ("prefix",), "clip": ("patches",)}.get(
            piece, ("embedding",) if concept is None else ("embedding", "similarity"))
        if piece.startswith("concept-") and extra.get("concept") != concept:
            return None  # two concepts whose names hash alike
        for name in names:
            tensor = arrays.get(name)
            if tensor is None or not tensor.is_floating_point() or not _fits(tuple(tensor.shape), expected[name]):
                self.store.discard(entry, piece, f"{name}: not the {expected[name]} floating-point array expected")
                return None
        return arrays


def _concept_piece(concept: str | None) -> str:
    return "concept-" + xxhash.xxh3_64_hexdigest(json.dumps(concept).encode())


def _input_side(predictor) -> int:
    """The SAM input side the predictor's features are computed at (its own, else SAM's native)."""
    return predictor.image_size or predictor.model.sam.image_encoder.img_size


def _expected_shapes(predictor) -> dict[str, tuple]:
    """Per stored array, its shape for this model and size (None: any length on that axis)."""
    encoder = predictor.model.sam.image_encoder
    grid = _input_side(predictor) // encoder.patch_embed.proj.kernel_size[0]
    return {
        "prefix": (1, grid, grid, encoder.patch_embed.proj.out_channels),
        "embedding": (1, predictor.model.sam.prompt_encoder.embed_dim, grid, grid),
        "patches": (1, None, None, predictor.model.surgery.output_dim),
        "similarity": (1, None, None),
    }


def _fits(shape: tuple[int, ...], expected: tuple) -> bool:
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))


__all__ = ["DEFAULT_IMAGES_KEPT", "RecentImages", "StoreLike"]
