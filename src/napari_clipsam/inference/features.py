"""What a predictor computes from one image: :class:`ImageFeatures`.

One object holds it, so that the predictor, its recent images (``recent_images.py``) and
the batched encoders (``encode_ahead.py``) hand features over whole instead of setting a
predictor's attributes one by one. Features are valid for one version of the model's
weights and one SAM input size; :meth:`ImageFeatures.valid_for` tells.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from ..model.decoder import PreparedDecoder

# Image embeddings kept per concept for one image (4 MB each for vit_b).
EMBEDDINGS_KEPT = 8


@dataclass(eq=False)
class ImageFeatures:
    """Features of one image, filled stage by stage (None: not computed yet).

    weights_version: the model's ``weights_version`` they were computed with.
    image_size: the predictor's SAM input side they were computed at (None: the model's own).
    input_size: the image's (H, W) once resized for SAM.
    sam_input: SAM's padded, normalised input (1, 3, S, S).
    clip_patches: CLIP's patch features (1, g, g, D), for every concept.
    prefix: the encoder's output before its first concept-conditioned block.
    embeddings: SAM's image embedding per concept (None: no concept), newest last.
    similarity: the (1, g, g) similarity grid per concept.
    mask_prompts: the text-only mode's dense prompt per concept.
    decoder: the decoder's share of the image, made at the first click.
    objects: the text mode's objects per concept (``neighbours.py``), made at the first click.
    view_logits: the text mode's (H, W) logits per concept averaged over the image's views (``views.py``).
    """

    weights_version: int
    image_size: int | None
    input_size: tuple[int, int] | None = None
    sam_input: torch.Tensor | None = None
    clip_patches: torch.Tensor | None = None
    prefix: torch.Tensor | None = None
    embeddings: OrderedDict[str | None, torch.Tensor] = field(default_factory=OrderedDict)
    similarity: dict[str, torch.Tensor] = field(default_factory=dict)
    mask_prompts: dict[str, torch.Tensor] = field(default_factory=dict)
    decoder: PreparedDecoder = field(default_factory=PreparedDecoder)
    objects: dict[str, np.ndarray] = field(default_factory=dict)
    view_logits: dict[str, np.ndarray] = field(default_factory=dict)

    def valid_for(self, weights_version: int, image_size: int | None) -> bool:
        """Whether these features hold for the model's weights and the predictor's size now."""
        return self.weights_version == weights_version and self.image_size == image_size

    def add_embedding(self, concept: str | None, embedding: torch.Tensor) -> None:
        """Keep ``concept``'s embedding, forgetting the oldest beyond :data:`EMBEDDINGS_KEPT`."""
        self.embeddings[concept] = embedding
        self.embeddings.move_to_end(concept)
        while len(self.embeddings) > EMBEDDINGS_KEPT:
            self.embeddings.popitem(last=False)


__all__ = ["EMBEDDINGS_KEPT", "ImageFeatures"]
