"""SSD priors (default boxes) on top of Detectron2's DefaultAnchorGenerator."""

import math
from typing import List, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import (
    ANCHOR_GENERATOR_REGISTRY,
    BufferList,
    DefaultAnchorGenerator,
)
from detectron2.structures import Boxes

__all__ = ["SSDAnchorGenerator", "ssd_cell_anchors"]


def ssd_cell_anchors(min_size: float, max_size: float, aspect_ratios: Sequence[float], flip: bool):
    """XYXY priors of one location centred at 0, in SSD's order.

    A square of side ``min_size``, a square of side sqrt(min_size * max_size) (skipped when
    ``max_size`` is 0), then for each ratio r a box of area min_size^2 with w / h = r and, with
    ``flip``, one with w / h = 1 / r (the SSD reference's order and ratio convention). Unlike
    Detectron2's size x ratio product, only the min size gets the ratios: that is what makes
    SSD's 4 and 6 priors per location.
    """
    sides = [(min_size, min_size)]
    if max_size:
        side = math.sqrt(min_size * max_size)
        sides.append((side, side))
    for ratio in aspect_ratios:
        if ratio == 1.0:
            continue
        ratios = (ratio, 1.0 / ratio) if flip else (ratio,)
        for r in ratios:
            sides.append((min_size * math.sqrt(r), min_size / math.sqrt(r)))  # (w, h)
    return torch.tensor([[-w / 2, -h / 2, w / 2, h / 2] for w, h in sides], dtype=torch.float32)


def _per_level(values, num_levels: int, key: str):
    """Check that a per-level config list has one entry per level (or one for all)."""
    values = list(values)
    if len(values) == 1 and num_levels > 1:
        values = values * num_levels
    if len(values) != num_levels:
        raise ValueError(
            f"MODEL.ANCHOR_GENERATOR.{key} has {len(values)} entries but the head predicts from "
            f"{num_levels} feature maps (MODEL.SSD.IN_FEATURES); give one entry per map."
        )
    return values


@ANCHOR_GENERATOR_REGISTRY.register()
class SSDAnchorGenerator(DefaultAnchorGenerator):
    """SSD priors: per level a min size, a max size, aspect ratios with flips, and a step.

    Keeps DefaultAnchorGenerator's grid and forward (centres at (i + offset) * step); only the
    cell anchors differ, plus two options for priors that reach past the fixed square input:
    clipping the boxes to it, or clamping each prior's width and height to its side while
    keeping the prior's centre (torchvision's ``DefaultBoxGenerator(clip=True)``).
    """

    @configurable
    def __init__(
        self,
        *,
        min_sizes: Sequence[float],
        max_sizes: Sequence[float],
        aspect_ratios: Sequence[Sequence[float]],
        steps: Sequence[float],
        offset: float = 0.5,
        flip: bool = True,
        clip_size: int = 0,
        clamp_size: int = 0,
        offsets: Sequence[float] = (),
    ):
        """
        Args:
            min_sizes, max_sizes: per level, in input pixels (max size 0: no extra square).
            aspect_ratios: per level, ratios w / h (1 / r added when ``flip``); a flat list
                is used for every level.
            steps: per level, distance between prior centres in input pixels.
            clip_size: when > 0, clip priors to the square [0, clip_size].
            clamp_size: when > 0, clamp every prior's width and height to at most
                ``clamp_size`` (centres unchanged).
            offsets: per level, centres at (i + offset) * step instead of ``offset`` on every
                level; any value >= 0 (DSSD513's Caffe priors start 2.5 pixels in at step 8).
        """
        nn.Module.__init__(self)
        self.strides = list(steps)
        self.num_features = len(self.strides)
        min_sizes = _per_level(min_sizes, self.num_features, "MIN_SIZES")
        max_sizes = _per_level(max_sizes, self.num_features, "MAX_SIZES")
        if aspect_ratios and not isinstance(aspect_ratios[0], Sequence):
            aspect_ratios = [aspect_ratios]
        aspect_ratios = _per_level(aspect_ratios, self.num_features, "ASPECT_RATIOS")
        cells = [
            ssd_cell_anchors(lo, hi, ratios, flip)
            for lo, hi, ratios in zip(min_sizes, max_sizes, aspect_ratios)
        ]
        if clamp_size:  # cells are centred at 0: half of the side on each side of the centre
            cells = [cell.clamp(-clamp_size / 2, clamp_size / 2) for cell in cells]
        self.cell_anchors = BufferList(cells)
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"MODEL.ANCHOR_GENERATOR.OFFSET must be in [0, 1), got {offset}")
        self.offset = offset
        self.offsets = list(_per_level(offsets, self.num_features, "OFFSETS")) if offsets else []
        if any(o < 0 for o in self.offsets):
            raise ValueError(f"MODEL.ANCHOR_GENERATOR.OFFSETS must be >= 0, got {self.offsets}")
        self.clip_size = clip_size

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        anchor_cfg = cfg.MODEL.ANCHOR_GENERATOR
        steps = anchor_cfg.STEPS or [shape.stride for shape in input_shape]
        return {
            "min_sizes": anchor_cfg.MIN_SIZES,
            "max_sizes": anchor_cfg.MAX_SIZES,
            "aspect_ratios": anchor_cfg.ASPECT_RATIOS,
            "steps": _per_level(steps, len(input_shape), "STEPS"),
            "offset": anchor_cfg.OFFSET,
            "flip": anchor_cfg.FLIP,
            "clip_size": cfg.INPUT.FIXED_SIZE if anchor_cfg.CLIP else 0,
            "clamp_size": cfg.INPUT.FIXED_SIZE if anchor_cfg.CLAMP_SIZES else 0,
            "offsets": anchor_cfg.OFFSETS,
        }

    def _grid_anchors(self, grid_sizes: List[List[int]]):
        if not self.offsets:
            return super()._grid_anchors(grid_sizes)
        anchors = []
        buffers = [x[1] for x in self.cell_anchors.named_buffers()]
        for size, stride, offset, base in zip(grid_sizes, self.strides, self.offsets, buffers):
            # (i + offset) * stride for every i < size, also for offsets >= 1.
            ys, xs = [(torch.arange(n, device=base.device) + offset) * stride for n in size]
            shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            anchors.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4))
        return anchors

    def forward(self, features: List[torch.Tensor]) -> List[Boxes]:
        anchors = super().forward(features)
        if self.clip_size:
            for boxes in anchors:
                boxes.clip((self.clip_size, self.clip_size))
        return anchors
