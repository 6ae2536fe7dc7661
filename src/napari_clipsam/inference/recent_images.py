"""The features of the last few images a predictor saw, so that revisiting one costs nothing.

A z-stack's planes, a time series' frames and the widget's "previous plane" come back to
images already encoded. :class:`RecentImages` keeps, per image (its content digest), what
the predictor computed for it: SAM's input, CLIP's patch features, the encoder prefix and
the embedding per concept, similarity maps. Each bundle remembers the model's weights
version and the SAM input size it was computed at, and is used only while both are still
the same. The oldest image goes first when more than ``size`` are kept.

Memory: for vit_b at 1024 px an image costs about 30 MB plus 4 MB per concept; for the demo
model well under 1 MB.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

# What a predictor computes from one image (and keeps while that image is set).
FEATURES = ("image", "original_size", "input_size", "_sam_input", "_clip_patches", "_prefix", "_embeddings",
            "_similarity", "_mask_prompts", "_weights_version")

# Images whose features a predictor keeps besides the current one, by default.
DEFAULT_IMAGES_KEPT = 4


class RecentImages:
    """Feature bundles of recently set images, newest last."""

    def __init__(self, size: int = DEFAULT_IMAGES_KEPT) -> None:
        if size < 0:
            raise ValueError(f"The number of images to keep must be 0 or more, got {size}.")
        self.size = size
        self._bundles: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._bundles)

    def stash(self, predictor, digest: str | None) -> None:
        """Keep the predictor's features of its current image (``digest``), if any were computed."""
        if self.size == 0 or digest is None or predictor.image is None or predictor._sam_input is None:
            return
        bundle = {name: getattr(predictor, name) for name in FEATURES}
        bundle["image_size"] = predictor.image_size
        self._bundles[digest] = bundle
        self._bundles.move_to_end(digest)
        while len(self._bundles) > self.size:
            self._bundles.popitem(last=False)

    def switch(self, predictor, current: str | None, new: str) -> bool:
        """Keep the features of image ``current`` and give the predictor those kept of image ``new``.

        Returns False when none of ``new`` are kept (or they are stale); the predictor's
        features are then left for the caller to reset.
        """
        bundle = self._bundles.pop(new, None)  # taken first: keeping ``current`` must not push it out
        self.stash(predictor, current)
        if bundle is None:
            return False
        if bundle["_weights_version"] != predictor.model.weights_version or bundle["image_size"] != predictor.image_size:
            return False  # computed with other weights or at another size: stale
        for name in FEATURES:
            setattr(predictor, name, bundle[name])
        return True

    def clear(self) -> None:
        self._bundles.clear()


__all__ = ["DEFAULT_IMAGES_KEPT", "RecentImages"]
