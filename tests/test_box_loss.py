"""MODEL.SSD.BBOX_REG_LOSS_TYPE ("smooth_l1", "giou", "diou", "ciou", through Detectron2's
_dense_box_regression_loss) and MODEL.SSD.BBOX_REG_LOSS_WEIGHT in the SSD loss."""

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from helpers import tiny_ssd300_cfg

LOSS_TYPES = ("smooth_l1", "giou", "diou", "ciou")


def _model(loss_type="smooth_l1", weight=None):
    cfg = tiny_ssd300_cfg(num_classes=3)
    cfg.MODEL.SSD.BBOX_REG_LOSS_TYPE = loss_type
    if weight is not None:
        cfg.MODEL.SSD.BBOX_REG_LOSS_WEIGHT = weight
    return build_model(cfg)


def _fixed_input():
    """Two images of 20 priors each, their matched ground truth, deltas, logits and labels
    (class 3 is background)."""
    g = torch.Generator().manual_seed(0)
    corners = torch.rand(40, 2, generator=g) * 200
    priors = torch.cat([corners, corners + 10 + torch.rand(40, 2, generator=g) * 60], dim=1)
    gt = priors + (torch.rand(40, 4, generator=g) - 0.5) * 16
    gt[:, 2:] = torch.maximum(gt[:, 2:], gt[:, :2] + 2)
    deltas = torch.randn(2, 20, 4, generator=g)
    logits = torch.randn(2, 20, 4, generator=g)
    labels = torch.randint(0, 4, (2, 20), generator=g)
    return Boxes(priors[:20]), logits, labels, deltas, gt.view(2, 20, 4)


def _losses(model, anchors, logits, labels, deltas, gt):
    with EventStorage():
        return model.losses([anchors], [logits], list(labels), [deltas], list(gt))


def test_default_box_loss_is_unchanged_smooth_l1():
    """The default is SSD's smooth L1 on the encoded offsets over the positives, divided by
    them: bit for bit Detectron2's dense loss over the positive count (the loss before the
    weight key existed, whose value on this input is pinned too)."""
    model = _model()
    assert (model.box_reg_loss_type, model.box_reg_loss_weight) == ("smooth_l1", 1.0)
    anchors, logits, labels, deltas, gt = _fixed_input()
    loss = _losses(model, anchors, logits, labels, deltas, gt)["loss_box_reg"]
    pos_mask = labels != 3
    expected = (
        _dense_box_regression_loss(
            [anchors], model.box2box_transform, [deltas], list(gt), pos_mask, "smooth_l1", 1.0
        )
        / pos_mask.sum().item()
    )
    assert torch.equal(loss, expected)
    assert loss.item() == pytest.approx(25.925779342651367, rel=1e-6)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_box_loss_is_zero_for_perfect_boxes_and_falls_as_they_get_closer(loss_type):
    model = _model(loss_type)
    anchors, logits, labels, _, gt = _fixed_input()
    labels[:] = 0  # every prior positive
    previous = None
    for shift in (16.0, 8.0, 4.0, 2.0, 1.0, 0.0):
        # Predictions that decode to the ground truth moved by ``shift`` pixels right and down
        # and grown by ``shift`` on the right.
        predicted = gt + torch.tensor([shift, shift, 2 * shift, shift])
        deltas = torch.stack(
            [model.box2box_transform.get_deltas(anchors.tensor, boxes) for boxes in predicted]
        )
        loss = _losses(model, anchors, logits, labels, deltas, gt)["loss_box_reg"]
        if previous is not None:
            assert loss < previous, (shift, loss, previous)
        previous = loss
    assert loss.item() == pytest.approx(0.0, abs=1e-5)


def test_the_weight_scales_the_box_loss_alone():
    inputs = _fixed_input()
    for loss_type in ("smooth_l1", "giou"):
        plain = _losses(_model(loss_type), *inputs)
        weighted = _losses(_model(loss_type, weight=2.5), *inputs)
        assert torch.equal(weighted["loss_cls"], plain["loss_cls"])
        torch.testing.assert_close(weighted["loss_box_reg"], 2.5 * plain["loss_box_reg"])
