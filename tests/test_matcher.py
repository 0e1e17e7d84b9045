"""Prior matching rules (MODEL.SSD.MATCHER): Caffe's greedy bipartite matching (default) and
torchvision's SSDMatcher, as matchers and through the SSD model's label_anchors."""

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from dssd_d2.modeling.matcher import BipartiteMatcher, TorchvisionSSDMatcher, build_ssd_matcher

from helpers import make_cfg, tiny_ssd300_cfg

torchvision_utils = pytest.importorskip("torchvision.models.detection._utils")


def _match(matcher, iou):
    """Per prior: the matched ground truth, or -1 for background."""
    matched, labels = matcher(torch.as_tensor(iou))
    return torch.where(labels == 1, matched, -1).tolist()


def test_bipartite_matches_stay_and_the_threshold_matches_the_rest():
    iou = [[0.9, 0.85, 0.75, 0.1], [0.8, 0.3, 0.7, 0.0]]
    # Bipartite: (prior 0, gt 0) at 0.9, then gt 1's best free prior, prior 2 (0.7), which
    # stays with gt 1 although it overlaps gt 0 more; then prior 1 by threshold.
    assert _match(BipartiteMatcher(0.5), iou) == [0, 0, 1, -1]
    # torchvision: prior 2 goes to gt 0 by threshold; gt 1 takes its best, prior 0, from gt 0.
    assert _match(TorchvisionSSDMatcher(0.5), iou) == [1, 0, 0, -1]


def test_shared_best_prior_caffe_gives_each_ground_truth_a_prior():
    """Two ground truths share their best prior and only it reaches the threshold."""
    iou = [[0.95, 0.41, 0.0], [0.9, 0.37, 0.0]]
    assert _match(BipartiteMatcher(0.5), iou) == [0, 1, -1]  # gt 1 gets its next best
    assert _match(TorchvisionSSDMatcher(0.5), iou) == [1, -1, -1]  # gt 0 has no prior at all


def test_bipartite_ties_and_ground_truths_without_overlap():
    # Ties go to the lowest prior, then the lowest ground truth, as in Caffe's loop.
    assert _match(BipartiteMatcher(0.5), [[0.3, 0.3], [0.3, 0.3]]) == [0, 1]
    # A ground truth that overlaps no prior gets none (torchvision forces one on prior 0).
    assert _match(BipartiteMatcher(0.5), [[0.0, 0.0], [0.0, 0.6]]) == [-1, 1]
    assert _match(TorchvisionSSDMatcher(0.5), [[0.0, 0.0], [0.0, 0.6]]) == [0, 1]


def _caffe_match(iou, threshold):
    """The SSD reference's MatchBBox (bipartite, then per prediction), loop for loop."""
    num_gt, num_priors = len(iou), len(iou[0])
    match = [-1] * num_priors
    pool = list(range(num_gt))
    while pool:
        best, best_prior, best_gt = -1.0, -1, -1
        for i in range(num_priors):
            if match[i] != -1:
                continue
            for j in pool:
                if iou[j][i] > 1e-6 and iou[j][i] > best:
                    best, best_prior, best_gt = iou[j][i], i, j
        if best_prior == -1:
            break
        match[best_prior] = best_gt
        pool.remove(best_gt)
    for i in range(num_priors):
        if match[i] == -1:
            best = -1.0
            for j in range(num_gt):
                if iou[j][i] >= threshold and iou[j][i] > best:
                    best, match[i] = iou[j][i], j
    return match


def test_bipartite_equals_the_reference_loop_with_ties():
    generator = torch.Generator().manual_seed(0)
    for trial in range(40):
        num_gt = 1 + trial % 8
        # IoUs on a 0.1 grid, many zero: lots of exact ties
        iou = (torch.rand(num_gt, 30, generator=generator) * 12 - 2).clamp(min=0).floor() / 10
        assert _match(BipartiteMatcher(0.5), iou) == _caffe_match(iou.tolist(), 0.5)


def test_torchvision_rule_equals_torchvision_ssd_matcher():
    generator = torch.Generator().manual_seed(0)
    reference = torchvision_utils.SSDMatcher(0.5)
    for num_gt in (1, 3, 20):
        iou = torch.rand(num_gt, 500, generator=generator) * 0.6
        iou[:, 7] = 0.69  # every ground truth's best prior is 7: they all share it
        iou[: num_gt // 2, 8] = 0.68
        expected = reference(iou.clone())
        assert (
            _match(TorchvisionSSDMatcher(0.5), iou)
            == torch.where(expected >= 0, expected, -1).tolist()
        )


def _gt(boxes, classes):
    gt = Instances((300, 300))
    gt.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    gt.gt_classes = torch.tensor(classes)
    return gt


@pytest.mark.parametrize("rule, expected", [("caffe", [0, 1, 3]), ("torchvision", [1, 3, 3])])
def test_shared_best_prior_through_the_model(rule, expected):
    """Prior A is both ground truths' best (IoU 0.95 and 0.91); B overlaps them below 0.5.
    Caffe's rule gives gt 0 prior A and gt 1 prior B; torchvision's gives A to gt 1 and gt 0
    (class 0) is left with no positive prior: it would not be trained on at all."""
    cfg = tiny_ssd300_cfg(num_classes=3)
    cfg.MODEL.SSD.MATCHER = rule
    model = build_model(cfg)
    anchors = [Boxes(torch.tensor([[0, 0, 10, 10], [0, 0, 16, 16], [200, 200, 210, 210.0]]))]
    gt = _gt([[0, 0, 10, 10.5], [0, 0, 10, 9.1]], [0, 1])
    labels, _ = model.label_anchors(anchors, [gt])
    assert labels[0].tolist() == expected  # 3 == NUM_CLASSES: background


def test_matcher_from_config():
    cfg = make_cfg()
    assert cfg.MODEL.SSD.MATCHER == "caffe"
    assert isinstance(build_ssd_matcher(cfg), BipartiteMatcher)
    cfg.MODEL.SSD.MATCHER = "torchvision"
    cfg.MODEL.SSD.IOU_THRESHOLD = 0.4
    matcher = build_ssd_matcher(cfg)
    assert isinstance(matcher, TorchvisionSSDMatcher) and matcher.thresholds[1] == 0.4
    cfg.MODEL.SSD.MATCHER = "hungarian"
    with pytest.raises(KeyError, match="MODEL.SSD.MATCHER='hungarian' is not registered"):
        build_ssd_matcher(cfg)
