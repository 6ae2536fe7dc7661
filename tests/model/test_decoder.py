"""The prepared decoder (model/decoder.py) gives SAM's decoder's results, preparing each image once."""

from __future__ import annotations

import pytest
import torch

from napari_clipsam.model.decoder import PreparedDecoder, decode_prepared, prepare_image

# Prompts in SAM's input frame of the tiny model (XY): points, a box, both, none.
PROMPTS = {
    "one point": ((torch.tensor([[[40.0, 30.0]]]), torch.tensor([[1]])), None),
    "two points": ((torch.tensor([[[40.0, 30.0], [10.0, 50.0]]]), torch.tensor([[1, 0]])), None),
    "box": (None, torch.tensor([[5.0, 8.0, 50.0, 40.0]])),
    "point and box": ((torch.tensor([[[20.0, 20.0]]]), torch.tensor([[1]])), torch.tensor([[5.0, 8.0, 50.0, 40.0]])),
    "no prompt": (None, None),
}


@pytest.fixture
def embedding(tiny_model):
    encoder = tiny_model.sam.prompt_encoder
    generator = torch.Generator().manual_seed(3)
    return torch.randn(1, encoder.embed_dim, *encoder.image_embedding_size, generator=generator)


@pytest.fixture
def mask_prompt(tiny_model):
    return torch.randn(1, 1, *tiny_model.mask_input_size, generator=torch.Generator().manual_seed(4)) * 5


def _assert_same(got, expected):
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=2e-5)
    assert torch.equal(got[0] > 0, expected[0] > 0) or (got[0] > 0).ne(expected[0] > 0).float().mean() < 1e-4


@pytest.mark.parametrize("name", list(PROMPTS))
@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_prepared_decoding_equals_sams_decoder(tiny_model, embedding, mask_prompt, name, multimask, with_mask):
    points, box = PROMPTS[name]
    dense = mask_prompt if with_mask else None
    with torch.no_grad():
        expected = tiny_model.decode(embedding, points, box, dense, multimask)
        got = decode_prepared(tiny_model, prepare_image(tiny_model, embedding, dense), points, box, multimask)
    assert got[0].shape == expected[0].shape and got[1].shape == expected[1].shape
    _assert_same(got, expected)


def test_many_prompts_on_one_image_equal_their_own_decodes(tiny_model, embedding):
    generator = torch.Generator().manual_seed(5)
    coords = torch.rand(6, 3, 2, generator=generator) * 64
    labels = torch.tensor([[1, 1, 0]] * 6)
    image = prepare_image(tiny_model, embedding)
    with torch.no_grad():
        together = decode_prepared(tiny_model, image, (coords, labels), None, True)
        for i in range(6):
            alone = tiny_model.decode(embedding, (coords[i : i + 1], labels[i : i + 1]), None, None, True)
            _assert_same((together[0][i : i + 1], together[1][i : i + 1]), alone)


def test_gradients_flow_as_through_sams_decoder(tiny_model, embedding):
    points, box = PROMPTS["point and box"]
    grads = []
    for decode in (lambda: tiny_model.decode(embedding, points, box, None, False),
                   lambda: decode_prepared(tiny_model, prepare_image(tiny_model, embedding), points, box, False)):
        tiny_model.zero_grad()
        logits, iou = decode()
        (logits.mean() + iou.mean()).backward()
        grads.append(tiny_model.sam.mask_decoder.transformer.layers[0].cross_attn_token_to_image.k_proj.weight.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_the_prepared_image_is_kept_while_its_inputs_are_the_same(tiny_model, embedding, mask_prompt):
    decoder = PreparedDecoder()
    points, box = PROMPTS["one point"]
    with torch.no_grad():
        decoder.decode(tiny_model, embedding, points, box, mask_prompt, False)
        kept = decoder._image
        decoder.decode(tiny_model, embedding, PROMPTS["two points"][0], None, mask_prompt, False)
        assert decoder._image is kept  # a second click on the same image prepares nothing

        # One mask prompt expanded to a batch of prompts is still the same mask prompt.
        batch = (points[0].expand(3, -1, -1), points[1].expand(3, -1))
        decoder.decode(tiny_model, embedding, batch, None, mask_prompt.expand(3, -1, -1, -1), False)
        assert decoder._image is kept

        mask_prompt.mul_(-1)  # changed in place: the prepared image is stale
        flipped = decoder.decode(tiny_model, embedding, points, box, mask_prompt, False)
        assert decoder._image is not kept
        _assert_same(flipped, tiny_model.decode(embedding, points, box, mask_prompt, False))

        kept = decoder._image
        embedding.add_(1)  # the embedding changed in place (the tiny model's mask path ignores a sign)
        _assert_same(decoder.decode(tiny_model, embedding, points, box, mask_prompt, False),
                     tiny_model.decode(embedding, points, box, mask_prompt, False))
        assert decoder._image is not kept and not torch.equal(decoder._image.keys, kept.keys)

        kept = decoder._image
        other = embedding + 1  # another image
        _assert_same(decoder.decode(tiny_model, other, points, box, mask_prompt, False),
                     tiny_model.decode(other, points, box, mask_prompt, False))
        assert decoder._image is not kept

        kept = decoder._image
        tiny_model.weights_version += 1  # new weights (training, adapters loaded): prepared again
        decoder.decode(tiny_model, other, points, box, mask_prompt, False)
        assert decoder._image is not kept


def test_tensors_made_in_inference_mode_are_kept_too(tiny_model):
    decoder = PreparedDecoder()
    points, box = PROMPTS["one point"]
    with torch.inference_mode():
        encoder = tiny_model.sam.prompt_encoder
        embedding = torch.randn(1, encoder.embed_dim, *encoder.image_embedding_size)
        got = decoder.decode(tiny_model, embedding, points, box, None, False)
        kept = decoder._image
        decoder.decode(tiny_model, embedding, points, None, None, True)
        assert decoder._image is kept
        _assert_same(got, tiny_model.decode(embedding, points, box, None, False))


def test_a_mask_prompt_per_prompt_goes_through_sams_decoder(tiny_model, embedding):
    decoder = PreparedDecoder()
    coords, labels = torch.tensor([[[10.0, 10.0]], [[40.0, 40.0]]]), torch.ones(2, 1, dtype=torch.int)
    masks = torch.randn(2, 1, *tiny_model.mask_input_size, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        got = decoder.decode(tiny_model, embedding, (coords, labels), None, masks, False)
        expected = tiny_model.decode(embedding, (coords, labels), None, masks, False)
    assert torch.equal(got[0], expected[0]) and decoder._image is None


def test_prepare_image_refuses_a_batch_of_images(tiny_model, embedding):
    with pytest.raises(ValueError, match="one embedding"):
        prepare_image(tiny_model, embedding.expand(2, -1, -1, -1))
