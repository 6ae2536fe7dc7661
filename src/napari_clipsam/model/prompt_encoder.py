"""SAM's prompt encoder at a model's current input size (see ``ClipSamModel.at_resolution``).

The image encoder reads no size, but SAM's prompt encoder reads its input and embedding
sizes from attributes: a decode at another input size sets them to its own for the few
milliseconds the prompt encoder takes, under one lock for all models, and puts SAM's back.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from torch import nn

if TYPE_CHECKING:
    from .clipsam import ClipSamModel

_SIZES = threading.Lock()


@contextmanager
def sized_prompt_encoder(model: ClipSamModel) -> Iterator[nn.Module]:
    """``model.sam.prompt_encoder`` set to ``model.image_size`` of this thread, held for the block."""
    encoder, size = model.sam.prompt_encoder, model.image_size
    grid = size // model.sam.image_encoder.patch_embed.proj.kernel_size[0]
    with _SIZES:
        native = encoder.input_image_size, encoder.image_embedding_size
        encoder.input_image_size, encoder.image_embedding_size = (size, size), (grid, grid)
        try:
            yield encoder
        finally:
            encoder.input_image_size, encoder.image_embedding_size = native
