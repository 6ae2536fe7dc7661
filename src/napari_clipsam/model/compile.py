"""Opt-in ``torch.compile`` of SAM's prompt decoder (faster clicks) and image encoder (faster passes on a GPU)."""

from __future__ import annotations

import logging

import torch


def compile_decoder(model, warm_up: bool = True) -> bool:
    """Compile SAM's prompt decoder with ``torch.compile`` for faster clicks.

    Both ways a prompt is decoded: a predictor's clicks (``model/decoder.py``: the
    image's share prepared once, :func:`~.decoder.run_decoder` compiled as
    ``model.decoder_runner``) and SAM's own decoder module (``model.decode``). On a
    2-core CPU this cut the latency of a point prompt by 8 to 32 % in our benchmark
    runs (docs/benchmarks.md), but compiling takes tens of seconds (once per process),
    so call it in the background. Shapes are dynamic, so any number of points reuses one
    compilation; ``warm_up`` runs the point, box and mask-prompt variants once to
    compile them all now. Parameter names do not change. Returns False, leaving the
    eager decoder in place, where compilation fails (e.g. no C++ compiler).
    """
    from .decoder import decode_prepared, prepare_image, run_decoder

    decoder = model.sam.mask_decoder
    decoder.compile(dynamic=True)
    runner = torch.compile(run_decoder, dynamic=True)
    model.decoder_runner = runner
    if not warm_up:
        return True
    try:
        with torch.no_grad():
            embedding = torch.zeros(
                1, model.sam.prompt_encoder.embed_dim, *model.sam.prompt_encoder.image_embedding_size,
                device=model.device,
            )
            points = (torch.zeros(1, 2, 2, device=model.device), torch.ones(1, 2, dtype=torch.int, device=model.device))
            box = torch.tensor([[0.0, 0.0, 8.0, 8.0]], device=model.device)
            mask = torch.zeros(1, 1, *model.mask_input_size, device=model.device)
            for prompts in ((points, None, None), (points, box, None), (None, box, None), (points, None, mask)):
                image = prepare_image(model, embedding, prompts[2])
                for multimask in (False, True):
                    model.decode(embedding, *prompts, multimask_output=multimask)
                    decode_prepared(model, image, *prompts[:2], multimask, runner)
    except Exception as err:  # a missing compiler shows up here, at the first call
        logging.getLogger(__name__).warning("torch.compile of the decoder failed, staying eager: %s", err)
        decoder._compiled_call_impl = None
        del model.decoder_runner
        return False
    return True


def compile_image_encoder(encoder: torch.nn.Module) -> None:
    """Compile a SAM image encoder's patch embedding, blocks and neck, each with ``torch.compile``.

    Module by module, not the encoder's forward as one graph: CLIP-guided SAM runs the
    blocks itself (``encoder_prefix``, ``encoder_suffix``), each called with the CLIP
    signals as tensor arguments. A guided block's forward is
    :func:`~.guided_block.guided_block_forward`, which compiles into one graph with no
    break, the adapters and conditioning included; blocks of one kind (windowed or global
    attention, with or without a semantic adapter) share one compilation. Use the same on
    segment_anything's own encoder to compare like with like. Compilation happens at the
    first call of each input shape (tens of seconds on a GPU); parameter names do not
    change. Undo with :func:`uncompile_image_encoder`.
    """
    for module in _encoder_parts(encoder):
        module.compile()


def uncompile_image_encoder(encoder: torch.nn.Module) -> None:
    """Return the modules :func:`compile_image_encoder` compiled to eager execution."""
    for module in _encoder_parts(encoder):
        module._compiled_call_impl = None


def _encoder_parts(encoder: torch.nn.Module) -> list[torch.nn.Module]:
    return [encoder.patch_embed, *encoder.blocks, encoder.neck]
