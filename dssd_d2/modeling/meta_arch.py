"""The SSD meta-architecture: a Detectron2 DenseDetector with SSD's matching, loss and inference."""

import logging
from typing import Dict, List, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import FrozenBatchNorm2d, batched_nms, cat
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.modeling.box_regression import Box2BoxTransform, _dense_box_regression_loss
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, ImageList, Instances, pairwise_iou
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..checks import check_input_size, check_prior_steps
from .backbone.layers import guard_single_pixel_strides
from .heads import build_ssd_head
from .matcher import build_ssd_matcher

__all__ = ["SSD", "freeze_parameters"]

logger = logging.getLogger(__name__)

# Detectron2's dense-detector box losses (_dense_box_regression_loss).
BOX_REG_LOSS_TYPES = ("smooth_l1", "giou", "diou", "ciou")


def freeze_parameters(model: nn.Module, prefixes: Sequence[str]):
    """Freeze every parameter whose name starts with one of ``prefixes``; BatchNorm layers under
    them become FrozenBatchNorm2d so their running statistics stop moving too."""
    for prefix in prefixes:
        path = prefix.rstrip(".")
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"MODEL.SSD.FREEZE has {prefix!r}, which names no module") from None
        for p in module.parameters():
            p.requires_grad_(False)
        frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(module)
        if frozen is not module:  # the prefix names a BatchNorm layer itself
            parent, _, name = path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, name, frozen)
    return model


def _positives_normalizer(pos_mask: Tensor, num_images: int) -> float:
    """What each process divides its losses by: the positives of the whole batch (over all
    processes) / the number of processes. DDP averages the processes' gradients, so the result
    is the gradient of one process holding the whole batch, divided by its positives as SSD
    does; dividing by each process's own count would weigh images by how crowded their share of
    the batch is. (Detectron2's RetinaNet instead divides by a per-process moving average.)"""
    num_pos, world_size = pos_mask.sum(), comm.get_world_size()
    if world_size > 1:
        dist.all_reduce(num_pos)
    num_pos = num_pos.item()
    get_event_storage().put_scalar("num_pos_anchors", num_pos / (num_images * world_size))
    return max(num_pos, 1) / world_size


@META_ARCH_REGISTRY.register()
class SSD(DenseDetector):
    """Single-shot detector (Liu et al. 2016) over any Detectron2 backbone.

    Training matches priors to ground truth with an injected matcher (``anchor_matcher``, from
    MODEL.SSD.MATCHER: IoU >= threshold plus a prior for every ground truth), applies softmax
    cross-entropy with hard negatives mined at NEG:POS (or a softmax focal loss on every prior,
    MODEL.SSD.CLS_LOSS) and smooth L1 on encoded offsets (or an IoU loss, BBOX_REG_LOSS_TYPE), both
    divided by the number of positives (the box loss times BBOX_REG_LOSS_WEIGHT). Inference takes
    softmax scores above a threshold, the top k per class, class-wise NMS (optionally box voting)
    and the best detections.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: List[str],
        anchor_generator: nn.Module,
        box2box_transform: Box2BoxTransform,
        num_classes: int,
        anchor_matcher,
        neg_pos_ratio: float = 3.0,
        cls_loss: str = "hard_negative_mining",
        focal_loss_gamma: float = 2.0,
        smooth_l1_beta: float = 1.0,
        box_reg_loss_type: str = "smooth_l1",
        box_reg_loss_weight: float = 1.0,
        test_score_thresh: float = 0.01,
        test_topk_candidates: int = 400,
        test_nms_thresh: float = 0.45,
        test_box_voting_iou: float = 0.0,
        test_clip_before_nms: bool = True,
        max_detections_per_image: int = 200,
        freeze: Sequence[str] = (),
        freeze_all_bn: bool = False,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        input_format: str = "BGR",
    ):
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        guard_single_pixel_strides(self)  # bfloat16 weight gradients on a CPU
        # A head built for other priors or classes would still run, with predictions silently
        # paired with the wrong priors: refuse it (heads that say what they predict).
        head_anchors = list(getattr(head, "num_anchors", anchor_generator.num_anchors))
        if head_anchors != list(anchor_generator.num_anchors):
            raise ValueError(
                f"The head predicts {head_anchors} boxes per location but the anchor generator "
                f"makes {anchor_generator.num_anchors} priors per location; check "
                "MODEL.ANCHOR_GENERATOR.{MIN_SIZES, MAX_SIZES, ASPECT_RATIOS, FLIP}"
            )
        head_classes = getattr(head, "num_classes", num_classes)
        if head_classes != num_classes:
            raise ValueError(
                f"The head predicts {head_classes} classes but MODEL.SSD.NUM_CLASSES is "
                f"{num_classes}"
            )
        self.anchor_generator = anchor_generator
        self.box2box_transform = box2box_transform
        self.num_classes = num_classes
        # (G, R) IoU -> per prior, matched ground truth and label (1 foreground, 0 background).
        self.anchor_matcher = anchor_matcher
        if cls_loss not in ("hard_negative_mining", "focal"):
            raise ValueError(
                f"MODEL.SSD.CLS_LOSS={cls_loss!r}: choose 'hard_negative_mining' or 'focal'"
            )
        self.neg_pos_ratio = neg_pos_ratio
        self.cls_loss = cls_loss
        self.focal_loss_gamma = focal_loss_gamma
        self.smooth_l1_beta = smooth_l1_beta
        if box_reg_loss_type not in BOX_REG_LOSS_TYPES:
            raise ValueError(
                f"MODEL.SSD.BBOX_REG_LOSS_TYPE={box_reg_loss_type!r}: choose one of "
                f"{BOX_REG_LOSS_TYPES}"
            )
        self.box_reg_loss_type = box_reg_loss_type
        self.box_reg_loss_weight = box_reg_loss_weight
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        if not 0.0 <= test_box_voting_iou <= 1.0:
            raise ValueError(
                f"MODEL.SSD.BOX_VOTING_IOU_TEST={test_box_voting_iou} must lie in [0, 1] (0: off)"
            )
        self.test_box_voting_iou = test_box_voting_iou
        self.test_clip_before_nms = test_clip_before_nms
        self.max_detections_per_image = max_detections_per_image
        self.input_format = input_format
        freeze_parameters(self, freeze)
        if freeze_all_bn:
            FrozenBatchNorm2d.convert_frozen_batchnorm(self)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        backbone_shape = backbone.output_shape()
        in_features = list(cfg.MODEL.SSD.IN_FEATURES)
        missing = [f for f in in_features if f not in backbone_shape]
        if missing:
            raise ValueError(
                f"MODEL.SSD.IN_FEATURES has {missing}, which the backbone "
                f"{cfg.MODEL.BACKBONE.NAME} does not output (it has {list(backbone_shape)})"
            )
        size = cfg.INPUT.FIXED_SIZE
        map_sizes = check_input_size(backbone, size, len(cfg.MODEL.PIXEL_MEAN), in_features)
        feature_shapes = [backbone_shape[f] for f in in_features]
        anchor_generator = build_anchor_generator(cfg, feature_shapes)
        anchor_cfg = cfg.MODEL.ANCHOR_GENERATOR
        if anchor_cfg.NAME == "SSDAnchorGenerator" and anchor_cfg.CHECK_STEPS:
            check_prior_steps(anchor_generator.strides, map_sizes, size)
        return {
            "backbone": backbone,
            "head": build_ssd_head(cfg, feature_shapes, anchor_generator.num_anchors),
            "head_in_features": in_features,
            "anchor_generator": anchor_generator,
            "box2box_transform": Box2BoxTransform(weights=cfg.MODEL.SSD.BBOX_REG_WEIGHTS),
            "num_classes": cfg.MODEL.SSD.NUM_CLASSES,
            "anchor_matcher": build_ssd_matcher(cfg),
            "neg_pos_ratio": cfg.MODEL.SSD.NEG_POS_RATIO,
            "cls_loss": cfg.MODEL.SSD.CLS_LOSS,
            "focal_loss_gamma": cfg.MODEL.SSD.FOCAL_LOSS_GAMMA,
            "smooth_l1_beta": cfg.MODEL.SSD.SMOOTH_L1_BETA,
            "box_reg_loss_type": cfg.MODEL.SSD.BBOX_REG_LOSS_TYPE,
            "box_reg_loss_weight": cfg.MODEL.SSD.BBOX_REG_LOSS_WEIGHT,
            "test_score_thresh": cfg.MODEL.SSD.SCORE_THRESH_TEST,
            "test_topk_candidates": cfg.MODEL.SSD.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": cfg.MODEL.SSD.NMS_THRESH_TEST,
            "test_box_voting_iou": cfg.MODEL.SSD.BOX_VOTING_IOU_TEST,
            "test_clip_before_nms": cfg.MODEL.SSD.CLIP_BEFORE_NMS_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "freeze": cfg.MODEL.SSD.FREEZE,
            "freeze_all_bn": cfg.MODEL.SSD.FREEZE_ALL_BN,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
        }

    # ------------------------------------------------------------------ training
    def forward_training(self, images: ImageList, features, predictions, gt_instances):
        pred_logits, pred_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes + 1, 4]
        )
        # The losses in float32, also when the network runs under bf16 autocast (SOLVER.AMP).
        pred_logits = [x.float() for x in pred_logits]
        pred_deltas = [x.float() for x in pred_deltas]
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes)

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """
        Returns:
            list[Tensor]: per image, (R,) class of each prior; ``num_classes`` is background.
            list[Tensor]: per image, (R, 4) the matched ground-truth box of each prior.
        """
        anchors = Boxes.cat(anchors)
        gt_labels, matched_gt_boxes = [], []
        for gt in gt_instances:
            if len(gt) == 0:
                gt_labels.append(torch.full_like(anchors.tensor[:, 0], self.num_classes).long())
                matched_gt_boxes.append(torch.zeros_like(anchors.tensor))
                continue
            iou = pairwise_iou(gt.gt_boxes, anchors)  # (G, R)
            matched_idxs, anchor_labels = self.anchor_matcher(iou)
            labels = gt.gt_classes[matched_idxs].clone()
            labels[anchor_labels == 0] = self.num_classes
            gt_labels.append(labels)
            matched_gt_boxes.append(gt.gt_boxes.tensor[matched_idxs])
        return gt_labels, matched_gt_boxes

    def losses(self, anchors, pred_logits, gt_labels, pred_deltas, gt_boxes) -> Dict[str, Tensor]:
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = gt_labels != self.num_classes
        normalizer = _positives_normalizer(pos_mask, gt_labels.shape[0])

        logits = cat(pred_logits, dim=1)  # (N, R, K + 1)
        cls_loss = F.cross_entropy(
            logits.flatten(0, 1), gt_labels.flatten(), reduction="none"
        ).view_as(gt_labels)
        if self.cls_loss == "focal":
            p_true = torch.exp(-cls_loss)
            loss_cls = ((1 - p_true) ** self.focal_loss_gamma * cls_loss).sum() / normalizer
        else:
            keep = pos_mask | self.hard_negatives(cls_loss.detach(), pos_mask)
            loss_cls = cls_loss[keep].sum() / normalizer

        loss_box_reg = (
            _dense_box_regression_loss(
                anchors,
                self.box2box_transform,
                pred_deltas,
                gt_boxes,
                pos_mask,
                box_reg_loss_type=self.box_reg_loss_type,
                smooth_l1_beta=self.smooth_l1_beta,
            )
            / normalizer
        )
        # x * 1.0 is x bit for bit: the default weight leaves the loss and its gradient unchanged.
        return {"loss_cls": loss_cls, "loss_box_reg": self.box_reg_loss_weight * loss_box_reg}

    def hard_negatives(self, cls_loss: Tensor, pos_mask: Tensor) -> Tensor:
        """Per image, the ``neg_pos_ratio * #positives`` background priors of highest loss."""
        num_neg = (pos_mask.sum(dim=1, keepdim=True) * self.neg_pos_ratio).long()
        num_neg = num_neg.clamp(max=pos_mask.shape[1] - 1)
        neg_loss = cls_loss.masked_fill(pos_mask, float("-inf"))
        rank = neg_loss.argsort(dim=1, descending=True).argsort(dim=1)
        return (rank < num_neg) & ~pos_mask

    # ------------------------------------------------------------------ inference
    def forward_inference(self, images: ImageList, features: List[Tensor], predictions):
        pred_logits, pred_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes + 1, 4]
        )
        anchors = Boxes.cat(self.anchor_generator(features)).tensor
        # float32 from here on: under bf16 autocast the network's outputs are bf16, too coarse
        # for box coordinates; softmax, decoding and NMS are a small part of the time.
        scores = F.softmax(cat(pred_logits, dim=1).float(), dim=-1)[..., : self.num_classes]
        deltas = cat(pred_deltas, dim=1).float()
        return [
            self.inference_single_image(anchors, scores[i], deltas[i], image_size)
            for i, image_size in enumerate(images.image_sizes)
        ]

    def vote(self, boxes: Boxes, scores: Tensor, classes: Tensor, keep: Tensor) -> Boxes:
        """Each kept box as the score-weighted mean of the candidates of its class that overlap
        it by at least ``test_box_voting_iou``, itself always included (a box clipped to zero
        area overlaps nothing, not even itself)."""
        overlaps = pairwise_iou(boxes[keep], boxes) >= self.test_box_voting_iou
        overlaps[torch.arange(len(keep)), keep] = True
        weights = (overlaps & (classes[keep, None] == classes[None])) * scores[None]
        return Boxes(weights @ boxes.tensor / weights.sum(dim=1, keepdim=True))

    def inference_single_image(
        self, anchors: Tensor, scores: Tensor, deltas: Tensor, image_size: Tuple[int, int]
    ) -> Instances:
        """Per class: scores above the threshold, top k; then class-wise NMS over all classes."""
        topk = min(self.test_topk_candidates, scores.shape[0])
        class_scores, anchor_idxs = scores.t().topk(topk, dim=1)  # (K, topk)
        keep = class_scores > self.test_score_thresh
        classes = torch.arange(self.num_classes, device=scores.device)[:, None].expand_as(keep)
        class_scores, anchor_idxs, classes = class_scores[keep], anchor_idxs[keep], classes[keep]

        boxes = self.box2box_transform.apply_deltas(deltas[anchor_idxs], anchors[anchor_idxs])
        boxes = Boxes(boxes)
        if self.test_clip_before_nms:
            boxes.clip(image_size)
        keep = batched_nms(boxes.tensor, class_scores, classes, self.test_nms_thresh)
        keep = keep[: self.max_detections_per_image]
        result = Instances(image_size)
        result.pred_boxes = (
            self.vote(boxes, class_scores, classes, keep)
            if self.test_box_voting_iou > 0
            else boxes[keep]
        )
        result.pred_boxes.clip(image_size)
        result.scores = class_scores[keep]
        result.pred_classes = classes[keep]
        return result
