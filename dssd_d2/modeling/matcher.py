"""Prior-to-ground-truth matching of the SSD meta-architecture, an injected part (as Detectron2's
RetinaNet takes its Matcher and torchvision's SSD its SSDMatcher), chosen by MODEL.SSD.MATCHER."""

import torch
from torch import Tensor

from detectron2.modeling.matcher import Matcher
from detectron2.utils.registry import Registry

__all__ = [
    "SSD_MATCHER_REGISTRY",
    "BipartiteMatcher",
    "TorchvisionSSDMatcher",
    "build_ssd_matcher",
]

SSD_MATCHER_REGISTRY = Registry("SSD_MATCHER")
SSD_MATCHER_REGISTRY.__doc__ = """
Matching rules of the SSD meta-architecture, registered by name (MODEL.SSD.MATCHER) and called
as ``fn(iou_threshold)``. The matcher they return takes the (G, R) IoU matrix of G >= 1 ground
truths and R priors and returns, like Detectron2's ``Matcher``, the (R,) index of the ground
truth each prior is matched to and (R,) labels: 1 foreground, 0 background.
"""


class BipartiteMatcher:
    """The SSD reference's (Caffe's) matching: greedy bipartite, then per prior.

    First, repeatedly take the highest-IoU pair among the ground truths and priors not matched
    yet and match it, so that every ground truth gets a prior of its own, even when two ground
    truths share their best prior (the second takes its next best). A ground truth that overlaps
    no free prior at all gets none. Then every other prior whose best IoU is >= ``threshold`` is
    matched to that ground truth. Ties go to the lowest prior, then the lowest ground truth, as
    in Caffe's loop.
    """

    def __init__(self, threshold: float):
        self.threshold = threshold

    def __call__(self, iou: Tensor):
        best_iou, matched_idxs = iou.max(dim=0)
        labels = (best_iou >= self.threshold).to(torch.int8)
        free = iou.clone()  # pairs still available; a matched prior or ground truth becomes -1
        # Each ground truth's best free prior (the first on ties), updated only when taken:
        # about G x R work in all rather than G x R per ground truth.
        row_best, row_prior = free.max(dim=1)
        for _ in range(iou.shape[0]):
            value = row_best.max()
            if value <= 0:  # the remaining ground truths overlap no free prior
                break
            tied = row_best == value
            prior = row_prior[tied].min()
            gt = (tied & (row_prior == prior)).nonzero()[0, 0]
            matched_idxs[prior] = gt
            labels[prior] = 1
            free[gt] = -1.0
            free[:, prior] = -1.0
            stale = row_prior == prior  # includes gt itself, whose row is now all -1
            row_best[stale], row_prior[stale] = free[stale].max(dim=1)
        return matched_idxs, labels


class TorchvisionSSDMatcher(Matcher):
    """torchvision's ``SSDMatcher``: IoU >= ``threshold``, then each ground truth forced onto its
    best prior, in order, with the same indexed write, so that a later ground truth takes a best
    prior it shares with an earlier one (which may then have no prior at all)."""

    def __init__(self, threshold: float):
        super().__init__([threshold], [0, 1], allow_low_quality_matches=False)

    def __call__(self, iou: Tensor):
        matched_idxs, labels = super().__call__(iou)
        best_prior = iou.max(dim=1).indices
        matched_idxs[best_prior] = torch.arange(len(best_prior), device=iou.device)
        labels[best_prior] = 1
        return matched_idxs, labels


@SSD_MATCHER_REGISTRY.register()
def caffe(iou_threshold: float):
    """The SSD reference's rule (default): :class:`BipartiteMatcher`."""
    return BipartiteMatcher(iou_threshold)


@SSD_MATCHER_REGISTRY.register()
def torchvision(iou_threshold: float):
    """torchvision's rule, for exact equivalence with its ``ssd300_vgg16``."""
    return TorchvisionSSDMatcher(iou_threshold)


def build_ssd_matcher(cfg):
    """The matcher named by MODEL.SSD.MATCHER, at MODEL.SSD.IOU_THRESHOLD."""
    name = cfg.MODEL.SSD.MATCHER
    if name not in SSD_MATCHER_REGISTRY:
        raise KeyError(
            f"MODEL.SSD.MATCHER={name!r} is not registered; choose from "
            f"{sorted(n for n, _ in SSD_MATCHER_REGISTRY)}"
        )
    return SSD_MATCHER_REGISTRY.get(name)(cfg.MODEL.SSD.IOU_THRESHOLD)
