"""Mosaic (YOLOv4, Ultralytics YOLO): four training images tiled into one (INPUT.MOSAIC).

:class:`SSDMosaicMapper` is the box-aware mapper with, per sample and with probability
INPUT.MOSAIC.PROB, three more images drawn at random from the same training set: each is resized
to the output size on its longer side (aspect kept) and the four meet at a random centre of an
output-sized square, one per quadrant, each showing its corner nearest that centre (the canvas
is filled with the pixel mean where a tile does not reach). Boxes are cut to what stays visible
and dropped when less than INPUT.MOSAIC.MIN_AREA_FRACTION of their area, or less than 2 pixels
of width or height, is left. The SSD augmentations (INPUT.SSD_AUG, flip) then run on the mosaic
as on any image. A mapper needs the dataset to draw from, so it is built with it:
:func:`build_train_mapper`.

"Close mosaic" (Ultralytics trains its last epochs without it): :class:`CloseMosaicHook`
replaces the training loader by one without mosaic once INPUT.MOSAIC.CLOSE_FRACTION of the run
is left, by iterations or by the training clock (SOLVER.MAX_TRAINING_MINUTES), whichever says
later. The switch is made in the trainer, not in the mapper, because the mapper runs in the
loader's worker processes, which do not see the trainer's progress; the new loader starts its
own workers once.
"""

import logging
import random
from typing import Callable, List, Sequence, Tuple

import cv2
import numpy as np

from detectron2.config import configurable
from detectron2.engine import HookBase
from detectron2.structures import BoxMode

from .dataset_mapper import SSDDatasetMapper

__all__ = [
    "CloseMosaicHook",
    "SSDMosaicMapper",
    "build_train_mapper",
    "close_mosaic_hooks",
    "mosaic",
]

logger = logging.getLogger(__name__)

# A box keeps at least this many pixels of width and height in the mosaic (Ultralytics': 2).
MIN_BOX_SIDE = 2.0


def mosaic(
    tiles: Sequence[Tuple[np.ndarray, np.ndarray]],
    size: int,
    centre: Tuple[int, int],
    fill: Sequence[float],
    min_area_fraction: float,
) -> Tuple[np.ndarray, List[Tuple[np.ndarray, np.ndarray]]]:
    """Tile four (image, XYXY boxes) into a ``size`` square around ``centre`` (x, y): top-left,
    top-right, bottom-left, bottom-right. Returns the image and, per tile, the indices of the
    boxes kept and their boxes in the mosaic."""
    if len(tiles) != 4:
        raise ValueError(f"a mosaic takes 4 images, got {len(tiles)}")
    cx, cy = centre
    channels = tiles[0][0].shape[2] if tiles[0][0].ndim == 3 else 1
    fill = np.broadcast_to(np.asarray(fill, dtype=np.float64), (channels,))
    canvas = np.empty((size, size, channels), dtype=tiles[0][0].dtype)
    canvas[...] = np.round(fill).astype(canvas.dtype)
    # Each quadrant as (x0, y0, x1, y1), and which corner of its tile sits at the centre.
    quadrants = [(0, 0, cx, cy), (cx, 0, size, cy), (0, cy, cx, size), (cx, cy, size, size)]
    kept = []
    for (image, boxes), (qx0, qy0, qx1, qy1), (right, bottom) in zip(
        tiles, quadrants, [(True, True), (False, True), (True, False), (False, False)]
    ):
        h, w = image.shape[:2]
        scale = size / max(h, w)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        resized = resized.reshape(new_h, new_w, channels)
        # The tile's top-left corner in the mosaic; its part inside the quadrant is pasted.
        ox, oy = (cx - new_w if right else cx), (cy - new_h if bottom else cy)
        x0, y0 = max(qx0, ox), max(qy0, oy)
        x1, y1 = min(qx1, ox + new_w), min(qy1, oy + new_h)
        if x1 > x0 and y1 > y0:
            canvas[y0:y1, x0:x1] = resized[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        sx, sy = new_w / w, new_h / h
        moved = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * [sx, sy, sx, sy]
        moved += [ox, oy, ox, oy]
        clipped = np.clip(moved, [x0, y0, x0, y0], [max(x0, x1), max(y0, y1)] * 2)
        widths, heights = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
        areas = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
        keep = (
            (widths >= MIN_BOX_SIDE)
            & (heights >= MIN_BOX_SIDE)
            & (widths * heights >= min_area_fraction * areas)
        )
        kept.append((np.flatnonzero(keep), clipped[keep]))
    return canvas, kept


def _check_fraction(key: str, value: float, high_open: bool = False):
    if not (0.0 <= value < 1.0 if high_open else 0.0 <= value <= 1.0):
        raise ValueError(
            f"INPUT.MOSAIC.{key} must lie in [0, 1{')' if high_open else ']'}: {value}"
        )


class SSDMosaicMapper(SSDDatasetMapper):
    """:class:`SSDDatasetMapper` that makes a mosaic of each sample and three images drawn from
    ``dataset`` (with probability ``prob``), before the augmentations; see the module."""

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        dataset: Sequence[dict],
        output_size: int,
        fill: Sequence[float],
        prob: float = 1.0,
        centre_range: Sequence[float] = (0.25, 0.75),
        min_area_fraction: float = 0.1,
        **kwargs,
    ):
        """
        Args:
            is_train, kwargs: as in :class:`SSDDatasetMapper`; mosaic is for training only.
            dataset: the training set (list of dataset dicts or Detectron2's DatasetFromList)
                the other three images are drawn from.
            output_size: side of the mosaic (INPUT.FIXED_SIZE).
            fill: the canvas colour where no tile reaches (MODEL.PIXEL_MEAN).
            prob: chance that a sample is a mosaic (otherwise one image, as without mosaic).
            centre_range: the mosaic's centre lies at a uniform random fraction of the side in
                this range, on each axis.
            min_area_fraction: a box is kept when at least this fraction of its area is left.
        """
        if not is_train:
            raise ValueError("SSDMosaicMapper is for training; test-time mapping is unchanged")
        super().__init__(is_train, **kwargs)
        _check_fraction("PROB", prob)
        _check_fraction("MIN_AREA_FRACTION", min_area_fraction)
        low, high = centre_range
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(
                f"INPUT.MOSAIC.CENTER_RANGE must be (low, high) with 0 <= low <= high <= 1: "
                f"{tuple(centre_range)}"
            )
        if len(dataset) == 0:
            raise ValueError("SSDMosaicMapper needs a non-empty training set to draw from")
        self.dataset = dataset
        self.output_size = output_size
        self.fill = tuple(fill)
        self.prob = prob
        self.centre_range = (low, high)
        self.min_area_fraction = min_area_fraction

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, *, dataset: Sequence[dict]):
        ret = super().from_config(cfg, is_train)
        mosaic_cfg = cfg.INPUT.MOSAIC
        ret.update(
            dataset=dataset,
            output_size=cfg.INPUT.FIXED_SIZE,
            fill=cfg.MODEL.PIXEL_MEAN,
            prob=mosaic_cfg.PROB,
            centre_range=mosaic_cfg.CENTER_RANGE,
            min_area_fraction=mosaic_cfg.MIN_AREA_FRACTION,
        )
        return ret

    def __call__(self, dataset_dict):
        if random.random() >= self.prob:
            return super().__call__(dataset_dict)
        loaded = self.read(dataset_dict)
        if loaded is None:
            return None  # Detectron2's MapDataset then loads another image
        tiles = [loaded]
        while len(tiles) < 4:  # a skipped image is counted, and another one drawn
            other = self.read(self.dataset[random.randrange(len(self.dataset))])
            if other is not None:
                tiles.append(other)
        size = self.output_size
        low, high = self.centre_range
        centre = (int(random.uniform(low, high) * size), int(random.uniform(low, high) * size))
        image, kept = mosaic(
            [(image, boxes) for _, image, _, boxes in tiles],
            size,
            centre,
            self.fill,
            self.min_area_fraction,
        )
        annos, boxes = [], []
        for (_, _, tile_annos, _), (indices, tile_boxes) in zip(tiles, kept):
            for i, box in zip(indices, tile_boxes):
                annos.append({**tile_annos[i], "bbox": box.tolist(), "bbox_mode": BoxMode.XYXY_ABS})
                boxes.append(box)
        dataset_dict = tiles[0][0]
        dataset_dict["height"] = dataset_dict["width"] = size
        return self.augment(dataset_dict, image, annos, np.asarray(boxes).reshape(-1, 4))


def build_train_mapper(cfg, dataset: Sequence[dict]) -> SSDDatasetMapper:
    """The training mapper: :class:`SSDMosaicMapper` over ``dataset`` when INPUT.MOSAIC.ENABLED,
    else :class:`SSDDatasetMapper`."""
    if cfg.INPUT.MOSAIC.ENABLED:
        return SSDMosaicMapper(cfg, is_train=True, dataset=dataset)
    return SSDDatasetMapper(cfg, is_train=True)


class CloseMosaicHook(HookBase):
    """Switch the training loader to ``build_loader()`` (one without mosaic) once a ``fraction``
    of the run is left: by iterations (of MAX_ITER) or by the training ``clock``'s budget,
    whichever is further along (as the LR schedule under a time budget). A resumed run past that
    point switches before its first step."""

    def __init__(self, fraction: float, build_loader: Callable, clock=None):
        _check_fraction("CLOSE_FRACTION", fraction, high_open=True)
        if fraction == 0:
            raise ValueError("CloseMosaicHook with INPUT.MOSAIC.CLOSE_FRACTION 0 never closes")
        self.fraction = fraction
        self.build_loader = build_loader
        self.clock = clock
        self.closed = False

    def _progress(self, iterations_done: int) -> float:
        progress = iterations_done / self.trainer.max_iter
        return max(progress, self.clock.fraction()) if self.clock else progress

    def _close_if_due(self, iterations_done: int):
        if self.closed or self._progress(iterations_done) < 1.0 - self.fraction:
            return
        step_trainer = getattr(self.trainer, "_trainer", self.trainer)  # DefaultTrainer's
        step_trainer.reset_data_loader(self.build_loader)
        self.closed = True
        logger.info(
            f"Mosaic closed after {iterations_done} iterations: the last "
            f"{self.fraction:.0%} of training is without it (INPUT.MOSAIC.CLOSE_FRACTION)"
        )

    def before_train(self):
        self._close_if_due(self.trainer.iter)

    def after_step(self):
        if self.trainer.iter + 1 < self.trainer.max_iter:  # no switch after the last step
            self._close_if_due(self.trainer.iter + 1)


def close_mosaic_hooks(cfg, build_train_loader: Callable, clock=None) -> List[HookBase]:
    """``[CloseMosaicHook]`` when INPUT.MOSAIC is on with a CLOSE_FRACTION, else ``[]``; its new
    loader is ``build_train_loader(cfg)`` with INPUT.MOSAIC.ENABLED False."""
    mosaic_cfg = cfg.INPUT.MOSAIC
    if not (mosaic_cfg.ENABLED and mosaic_cfg.CLOSE_FRACTION > 0):
        return []
    without_mosaic = cfg.clone()
    without_mosaic.defrost()
    without_mosaic.INPUT.MOSAIC.ENABLED = False
    without_mosaic.freeze()
    return [
        CloseMosaicHook(
            mosaic_cfg.CLOSE_FRACTION, lambda: build_train_loader(without_mosaic), clock
        )
    ]
