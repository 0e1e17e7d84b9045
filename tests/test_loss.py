"""SSD matching, hard negative mining, box coding and the inference that decodes boxes."""

import math

import pytest
import torch
import torchvision

from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from helpers import network_outputs, tiny_ssd300_cfg, training_input


def _model():
    return build_model(tiny_ssd300_cfg(num_classes=3))


def _gt(boxes, classes, size=300):
    gt = Instances((size, size))
    gt.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    gt.gt_classes = torch.tensor(classes)
    return gt


def test_ground_truth_forced_onto_its_best_prior():
    model = _model()
    anchors = [Boxes(torch.tensor([[0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60.0]]))]
    # gts 0 and 1 match priors 0 and 1 at IoU 1.0; gt 2 overlaps prior 2 only at IoU 0.25
    # (< 0.5) yet still owns it, because every ground truth gets its best prior.
    gt = _gt([[0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 55, 55]], [0, 1, 2])
    labels, boxes = model.label_anchors(anchors, [gt])
    assert labels[0].tolist() == [0, 1, 2]
    torch.testing.assert_close(boxes[0][2], torch.tensor([50, 50, 55, 55.0]))

    # A prior that is both ground truths' best goes to the pair of highest IoU (gt 0, 0.91);
    # gt 1 would take its next best prior, and here overlaps no other (MODEL.SSD.MATCHER
    # "caffe", the default; both rules in test_matcher.py).
    anchors = [Boxes(torch.tensor([[0, 0, 10, 10.0], [100, 100, 110, 110.0]]))]
    gt = _gt([[0, 0, 10, 11], [0, 0, 20, 20]], [0, 1])
    labels, _ = model.label_anchors(anchors, [gt])
    assert labels[0].tolist() == [0, 3]  # prior 1 is background (class index 3 == NUM_CLASSES)


def test_unmatched_priors_are_background_and_empty_image_has_no_positives():
    model = _model()
    anchors = [Boxes(torch.tensor([[0, 0, 10, 10], [200, 200, 260, 260.0]]))]
    labels, _ = model.label_anchors(anchors, [_gt([[0, 0, 10, 10]], [1]), _gt([], [])])
    assert labels[0].tolist() == [1, 3]
    assert labels[1].tolist() == [3, 3]


def test_hard_negative_ratio():
    model = _model()
    torch.manual_seed(0)
    cls_loss = torch.rand(2, 100)
    pos_mask = torch.zeros(2, 100, dtype=torch.bool)
    pos_mask[0, :5] = True
    pos_mask[1, :40] = True  # 3 * 40 > 60 negatives available: all negatives are kept
    negatives = model.hard_negatives(cls_loss, pos_mask)
    assert negatives[0].sum() == 15 and negatives[1].sum() == 60
    assert not (negatives & pos_mask).any()
    # The kept negatives of image 0 are the 15 of highest loss among its negatives.
    expected = cls_loss[0, 5:].topk(15).indices + 5
    assert set(negatives[0].nonzero().flatten().tolist()) == set(expected.tolist())
    model.neg_pos_ratio = 1.0
    assert model.hard_negatives(cls_loss, pos_mask)[0].sum() == 5


def test_box_coding_round_trip_with_ssd_variances():
    transform = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    priors = torch.tensor([[10, 10, 40, 50], [100, 80, 130, 200.0]])
    boxes = torch.tensor([[12, 8, 45, 55], [90, 90, 140, 190.0]])
    deltas = transform.get_deltas(priors, boxes)
    # SSD encoding: ((cx - pcx) / pw) / 0.1 and log(w / pw) / 0.2.
    torch.testing.assert_close(deltas[0, 0], torch.tensor((28.5 - 25) / 30 / 0.1))
    torch.testing.assert_close(deltas[0, 2], torch.log(torch.tensor(33 / 30)) / 0.2)
    torch.testing.assert_close(transform.apply_deltas(deltas, priors), boxes)


def test_losses_finite_with_an_empty_image_and_normalised_by_positives():
    model = _model()
    model.train()
    batch = [
        training_input(300, [[30, 40, 120, 150], [200, 180, 260, 290]], [0, 2], seed=1),
        training_input(300, [], [], seed=2),
    ]
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    for value in losses.values():
        assert torch.isfinite(value)
    sum(losses.values()).backward()
    with EventStorage():
        only_empty = model([training_input(300, [], [], seed=3)])
    assert all(torch.isfinite(v) and v == 0 for v in only_empty.values())


def test_fresh_head_starts_near_uniform_so_the_first_loss_is_bounded():
    """With SSD's Xavier-initialised predictors the first hard-mined loss here is ~50 (about 9x
    the uniform-prediction loss) and training from scratch diverges; the head starts near-uniform
    instead (hard mining still picks the tail, hence the margin)."""
    torch.manual_seed(0)
    model = _model()
    model.train()
    with EventStorage():
        losses = model([training_input(300, [[30, 40, 120, 150], [200, 180, 260, 290]], [0, 2])])
    uniform = math.log(model.num_classes + 1) * (1 + model.neg_pos_ratio)
    assert uniform <= losses["loss_cls"] < 2 * uniform


def test_focal_loss_weighs_every_prior_by_its_error():
    """MODEL.SSD.CLS_LOSS "focal": sum over all priors of (1 - p_true) ** gamma * cross-entropy,
    divided by the positives; with gamma 0 it is the cross-entropy of every prior, unmined."""
    cfg = tiny_ssd300_cfg(num_classes=3)
    cfg.MODEL.SSD.CLS_LOSS = "focal"
    model = build_model(cfg)
    torch.manual_seed(0)
    num_priors = 50
    anchors = [Boxes(torch.rand(num_priors, 2).repeat(1, 2) * 100 + torch.tensor([0, 0, 20, 20]))]
    logits = torch.randn(1, num_priors, 4)
    labels = torch.full((num_priors,), 3)
    labels[:4] = torch.tensor([0, 1, 2, 0])
    deltas, boxes = torch.zeros(1, num_priors, 4), anchors[0].tensor.clone()
    ce = torch.nn.functional.cross_entropy(logits[0], labels, reduction="none")
    with EventStorage():
        for gamma in (0.0, 2.0):
            model.focal_loss_gamma = gamma
            loss = model.losses(anchors, [logits], [labels], [deltas], [boxes])["loss_cls"]
            expected = ((1 - torch.exp(-ce)) ** gamma * ce).sum() / 4
            torch.testing.assert_close(loss, expected)


def test_giou_box_loss_on_decoded_boxes():
    """MODEL.SSD.BBOX_REG_LOSS_TYPE "giou": sum over positives of 1 - GIoU(decoded box, ground
    truth), divided by the positives (torchvision's GIoU as the reference); background priors
    add nothing. An unknown type is refused by name."""
    cfg = tiny_ssd300_cfg(num_classes=3)
    cfg.MODEL.SSD.BBOX_REG_LOSS_TYPE = "giou"
    model = build_model(cfg)
    priors = torch.tensor([[10, 10, 40, 50], [100, 80, 130, 200], [0, 0, 5, 5.0]])
    gt_boxes = torch.tensor([[12, 8, 45, 55], [90, 90, 140, 190], [50, 50, 60, 60.0]])
    deltas = torch.tensor([[[1.0, -0.5, 0.3, 0.2], [0.0, 0.0, 0.0, 0.0], [5.0, 5.0, 1.0, 1.0]]])
    labels = torch.tensor([0, 2, 3])  # the third prior is background
    with EventStorage():
        loss = model.losses([Boxes(priors)], [torch.zeros(1, 3, 4)], [labels], [deltas], [gt_boxes])
    decoded = model.box2box_transform.apply_deltas(deltas[0, :2], priors[:2])
    giou = torchvision.ops.generalized_box_iou(decoded, gt_boxes[:2]).diagonal()
    torch.testing.assert_close(loss["loss_box_reg"], (1 - giou).sum() / 2)

    cfg.MODEL.SSD.BBOX_REG_LOSS_TYPE = "iou"
    with pytest.raises(ValueError, match="MODEL.SSD.BBOX_REG_LOSS_TYPE='iou'"):
        build_model(cfg)


def test_prior_prob_starts_every_predictor_at_background():
    """MODEL.SSD_HEAD.PRIOR_PROB sets the background logit's bias (a BatchNorm's shift in the
    "conv_bn" predictors) so that every prior starts at that foreground probability."""
    for predictor in ("conv", "conv_bn", "separable"):
        cfg = tiny_ssd300_cfg(num_classes=3)
        cfg.MODEL.SSD_HEAD.PREDICTOR = predictor
        cfg.MODEL.SSD_HEAD.PRIOR_PROB = 0.01
        model = build_model(cfg).eval()
        num_levels = len(model.head_in_features)
        logits = network_outputs(model, 300)[num_levels : 2 * num_levels]
        for level in logits:
            probs = level.view(level.shape[0], -1, 4, *level.shape[-2:]).softmax(dim=2)
            background = probs[:, :, -1]
            assert background.min() > 0.9 and background.max() < 1, predictor
            assert abs(background.mean().item() - 0.99) < 0.02, predictor


def test_box_voting_averages_the_overlapping_candidates_of_the_class():
    """MODEL.SSD.BOX_VOTING_IOU_TEST: after NMS the kept box becomes the score-weighted mean of
    its class's candidates overlapping it by at least the threshold; a candidate of another
    class or below the overlap is left out, and the scores and classes are NMS's. 0 is NMS."""
    cfg = tiny_ssd300_cfg(num_classes=3)
    cfg.MODEL.SSD.BOX_VOTING_IOU_TEST = 0.7
    model = build_model(cfg)
    priors = torch.tensor(
        [[100, 100, 200, 200], [104, 100, 204, 200], [100, 100, 200, 260], [102, 100, 202, 200.0]]
    )
    # prior 0 (class 0, 0.9) is kept; prior 1 (class 0, 0.6, IoU 0.92) votes; prior 2 (class 0,
    # IoU 0.63) does not; prior 3 (IoU 0.96) is class 1 (and its own detection).
    scores = torch.tensor([[0.9, 0.0, 0.0], [0.6, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.8, 0.0]])
    result = model.inference_single_image(priors, scores, torch.zeros(4, 4), (300, 300))
    by_class = {int(c): b for c, b in zip(result.pred_classes, result.pred_boxes.tensor)}
    torch.testing.assert_close(by_class[0], (0.9 * priors[0] + 0.6 * priors[1]) / 1.5)
    torch.testing.assert_close(by_class[1], priors[3])
    assert sorted(result.scores.tolist(), reverse=True) == pytest.approx([0.9, 0.8])

    # A kept box clipped to zero area (here outside the image) keeps its own coordinates.
    outside = torch.tensor([[310, 10, 330, 30.0]])
    result = model.inference_single_image(outside, scores[:1], torch.zeros(1, 4), (300, 300))
    torch.testing.assert_close(result.pred_boxes.tensor, torch.tensor([[300, 10, 300, 30.0]]))

    model.test_box_voting_iou = 0.0
    result = model.inference_single_image(priors, scores, torch.zeros(4, 4), (300, 300))
    torch.testing.assert_close(result.pred_boxes.tensor[0], priors[0])

    cfg.MODEL.SSD.BOX_VOTING_IOU_TEST = 1.5
    with pytest.raises(ValueError, match="MODEL.SSD.BOX_VOTING_IOU_TEST=1.5"):
        build_model(cfg)
