"""The training loss, term by term, checked by hand on small tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_clipsam.training.losses import dice_loss, pixel_weights, segmentation_loss, soft_iou_loss, target_in_frame

LOGITS = [[0.0, 2.0], [-1.0, 3.0]]
TARGET = [[1.0, 0.0], [0.0, 1.0]]


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _by_hand(logits, target) -> float:
    """1 - sum(p*g) / sum(p + g - p*g), written out pixel by pixel."""
    p = [_sigmoid(x) for row in logits for x in row]
    g = [y for row in target for y in row]
    intersection = sum(a * b for a, b in zip(p, g))
    union = sum(a + b - a * b for a, b in zip(p, g))
    return 1 - intersection / union


def _tensor(values, grad: bool = False) -> torch.Tensor:
    return torch.tensor([[values]], dtype=torch.float32, requires_grad=grad)  # (1, 1, h, w)


def test_soft_iou_matches_the_formula_and_averages_over_the_batch():
    value = soft_iou_loss(_tensor(LOGITS), _tensor(TARGET))
    assert value.item() == pytest.approx(_by_hand(LOGITS, TARGET), rel=1e-6)
    other_logits, other_target = [[-2.0, 1.0], [4.0, 0.5]], [[0.0, 1.0], [1.0, 1.0]]
    batch = soft_iou_loss(torch.cat([_tensor(LOGITS), _tensor(other_logits)]),
                          torch.cat([_tensor(TARGET), _tensor(other_target)]))
    expected = (_by_hand(LOGITS, TARGET) + _by_hand(other_logits, other_target)) / 2
    assert batch.item() == pytest.approx(expected, rel=1e-6)
    # A confident, right mask costs almost nothing; a confident, wrong one almost 1.
    right = _tensor([[20.0, -20.0], [-20.0, 20.0]])
    assert soft_iou_loss(right, _tensor(TARGET)).item() < 1e-6
    assert soft_iou_loss(-right, _tensor(TARGET)).item() > 1 - 1e-6


def test_soft_iou_gradient_reaches_the_logits_in_the_right_direction():
    logits = _tensor(LOGITS, grad=True)
    soft_iou_loss(logits, _tensor(TARGET)).backward()
    grad = logits.grad[0, 0]
    # Raising an object pixel's logit lowers the loss; raising a background pixel's raises it.
    assert grad[0, 0] < 0 and grad[1, 1] < 0
    assert grad[0, 1] > 0 and grad[1, 0] > 0
    # The analytic gradient of 1 - I/U at pixel (0, 1), where g = 0: I/U^2 * dp/dx.
    p = [_sigmoid(x) for row in LOGITS for x in row]
    intersection, union = p[0] + p[3], p[0] + p[1] + p[2] + p[3] + 2 - p[0] - p[3]
    assert grad[0, 1].item() == pytest.approx(intersection / union**2 * p[1] * (1 - p[1]), rel=1e-5)


def test_the_total_is_the_sum_of_the_named_terms():
    logits = _tensor(LOGITS, grad=True)
    predicted_iou = torch.tensor([[0.3]], requires_grad=True)
    target = _tensor(TARGET)
    terms = segmentation_loss(logits, predicted_iou, target)
    assert set(terms) == {"loss", "bce", "dice", "soft_iou", "iou_prediction"}
    named = [terms[name] for name in ("bce", "dice", "soft_iou", "iou_prediction")]
    assert terms["loss"].item() == pytest.approx(sum(t.item() for t in named), rel=1e-6)
    assert terms["soft_iou"].item() == pytest.approx(_by_hand(LOGITS, TARGET), rel=1e-6)
    assert terms["dice"].item() == pytest.approx(dice_loss(logits, target).item())
    # The thresholded mask is pixels (0, 1) and (1, 1): IoU 1/3 with the target.
    assert terms["iou_prediction"].item() == pytest.approx((0.3 - 1 / 3) ** 2, rel=1e-5)

    terms["loss"].backward()
    # The IoU head's regression trains the head only: the mask logits get BCE + Dice + soft IoU.
    assert predicted_iou.grad.item() == pytest.approx(2 * (0.3 - 1 / 3), rel=1e-5)
    reference = _tensor(LOGITS, grad=True)
    mask_terms = (torch.nn.functional.binary_cross_entropy_with_logits(reference, target)
                  + dice_loss(reference, target) + soft_iou_loss(reference, target))
    mask_terms.backward()
    torch.testing.assert_close(logits.grad, reference.grad)
    without_soft_iou = _tensor(LOGITS, grad=True)
    (torch.nn.functional.binary_cross_entropy_with_logits(without_soft_iou, target)
     + dice_loss(without_soft_iou, target)).backward()
    assert not torch.allclose(logits.grad, without_soft_iou.grad)  # the soft-IoU term pulls on the mask


def test_loss_is_lower_for_better_predictions():
    target = torch.zeros(1, 1, 16, 16)
    target[..., 4:12, 4:12] = 1
    good = segmentation_loss(target * 20 - 10, torch.tensor([[1.0]]), target)
    bad = segmentation_loss(-target * 20 + 10, torch.tensor([[1.0]]), target)
    assert good["loss"] < 0.1 < bad["loss"]
    assert good["soft_iou"] < 1e-3 and bad["soft_iou"] > 0.99


def test_the_bce_weight_makes_a_weighted_mean_of_the_pixels():
    """A per-pixel weight (the manual mode's heavier neighbours) weighs the BCE term only."""
    logits, target = _tensor(LOGITS), _tensor(TARGET)
    predicted_iou = torch.tensor([[0.5]])
    plain = segmentation_loss(logits, predicted_iou, target)
    ones = segmentation_loss(logits, predicted_iou, target, torch.ones_like(target))
    assert float(ones["bce"]) == pytest.approx(float(plain["bce"]))
    weight = _tensor([[1.0, 3.0], [1.0, 1.0]])  # the wrong pixel (logit 2, target 0) three times
    weighted = segmentation_loss(logits, predicted_iou, target, weight)
    bce = [-math.log(_sigmoid(0.0)), -math.log(1 - _sigmoid(2.0)), -math.log(1 - _sigmoid(-1.0)),
           -math.log(_sigmoid(3.0))]
    assert float(weighted["bce"]) == pytest.approx((bce[0] + 3 * bce[1] + bce[2] + bce[3]) / 6, rel=1e-5)
    assert float(weighted["bce"]) > float(plain["bce"])  # the heavier pixel is the worst one
    for term in ("dice", "soft_iou", "iou_prediction"):
        assert float(weighted[term]) == pytest.approx(float(plain[term]))
    # A batch is the mean of its samples' losses, each weighted within itself, as if decoded alone.
    other_logits, other_target = _tensor([[1.0, -2.0], [0.5, 0.0]]), _tensor([[1.0, 1.0], [0.0, 0.0]])
    other = segmentation_loss(other_logits, predicted_iou, other_target, torch.ones_like(other_target))
    both = segmentation_loss(torch.cat([logits, other_logits]), torch.tensor([[0.5], [0.5]]),
                             torch.cat([target, other_target]), torch.cat([weight, torch.ones_like(weight)]))
    assert float(both["bce"]) == pytest.approx((float(weighted["bce"]) + float(other["bce"])) / 2, rel=1e-5)


def test_a_thin_line_vanishes_from_the_target_in_frame_but_not_from_the_full_resolution_one():
    """Why ``full_resolution_loss``: averaged down 4x, a 3-px line straddling two blocks covers
    half of one and a quarter of the other, so neither is foreground; at the frame's own
    resolution the target is the mask itself."""
    mask = np.zeros((64, 64), dtype=bool)
    mask[:, 10:13] = True
    low = target_in_frame(mask, (64, 64), 64, (16, 16), "cpu")
    assert low.shape == (1, 1, 16, 16) and not low.any()
    full = target_in_frame(mask, (64, 64), 64, (64, 64), "cpu")
    np.testing.assert_array_equal(full[0, 0].numpy().astype(bool), mask)
    wider = np.zeros((64, 64), dtype=bool)
    wider[:, 8:12] = True  # a line filling whole blocks stays in both
    np.testing.assert_array_equal(target_in_frame(wider, (64, 64), 64, (16, 16), "cpu")[0, 0, 0].numpy(),
                                  [0, 0, 1, 0] + [0] * 12)


def test_pixel_weights_put_each_masks_weight_on_its_pixels_in_the_frame():
    """1 everywhere, a mask's weight on its pixels (the later mask's where two meet), placed
    in the padded frame as the target is; None and weight 1 change nothing."""
    near = np.zeros((48, 64), dtype=bool)
    near[0:10, 0:20] = True
    other = np.zeros((48, 64), dtype=bool)
    other[5:20, 10:30] = True  # overlaps near on rows 5-9, columns 10-19
    weights = pixel_weights([(near, 4.0), (other, 0.5), (None, 9.0), (np.ones_like(near), 1.0)],
                            (48, 64), 64, (64, 64))[0, 0].numpy()
    expected = np.ones((64, 64), dtype=np.float32)
    expected[0:10, 0:20] = 4.0
    expected[5:20, 10:30] = 0.5
    np.testing.assert_array_equal(weights, expected)  # the padding (rows 48-63) weighs 1
    assert pixel_weights([(None, 3.0)], (48, 64), 64, (16, 16)).shape == (1, 1, 16, 16)
