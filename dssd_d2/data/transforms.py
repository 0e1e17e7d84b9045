"""SSD's training augmentations (Liu et al. 2016, Sec. 3.6) as Detectron2 augmentations.

Detectron2 has the min-IoU crop (whose acceptance rule we bring back to SSD's), resize and flip;
SSD also needs a photometric distortion with hue and channel swaps and a zoom-out that fills the
canvas with the pixel mean.
"""

import random
from typing import List, Sequence

import cv2
import numpy as np
from fvcore.transforms.transform import PadTransform

from detectron2.data import transforms as T

__all__ = [
    "PhotometricDistortion",
    "RandomExpand",
    "MeanFillPadTransform",
    "SSDMinIoURandomCrop",
    "build_ssd_augmentation",
    "ssd_augmentations",
]


def _distort(image: np.ndarray, brightness, contrast, saturation, hue, contrast_first, order):
    """Apply SSD's distortions to an RGB/BGR uint8 image (the format does not matter for swaps;
    saturation and hue are done in HSV from RGB order).

    Every step is a function of one uint8 value, computed in float32 then clipped and truncated,
    so each runs as a 256-entry lookup table: the same pixels as the arithmetic on the whole
    image, several times faster (this runs on every training image at full size)."""
    values = np.arange(256, dtype=np.float32)  # what each table is computed on
    table = values.copy()
    if brightness:
        table += brightness
    if contrast_first and contrast != 1.0:
        table *= contrast
    if saturation != 1.0 or hue:
        image = cv2.LUT(image, np.clip(table, 0, 255).astype(np.uint8))
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        saturation_table = np.clip(values * saturation, 0, 255).astype(np.uint8)
        hue_table = ((values + hue / 2.0) % 180.0).astype(np.uint8)  # OpenCV's hue: [0, 180)
        hsv[..., 1] = saturation_table[hsv[..., 1]]
        hsv[..., 0] = hue_table[hsv[..., 0]]
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        table = values.copy()
    if not contrast_first and contrast != 1.0:
        table *= contrast
    image = cv2.LUT(image, np.clip(table, 0, 255).astype(np.uint8))
    if order is not None:
        image = np.ascontiguousarray(image[..., list(order)])
    return image


class PhotometricDistortion(T.Augmentation):
    """Random brightness, contrast, saturation, hue and channel order, each with probability 0.5,
    contrast before or after the HSV part at random (the SSD reference's recipe)."""

    def __init__(
        self,
        brightness_delta: float = 32.0,
        contrast_range: Sequence[float] = (0.5, 1.5),
        saturation_range: Sequence[float] = (0.5, 1.5),
        hue_delta: float = 18.0,
        swap_prob: float = 0.5,
    ):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        if image.ndim != 3 or image.shape[2] != 3:
            return T.NoOpTransform()

        def maybe(value, default):
            return value if random.random() < 0.5 else default

        params = dict(
            brightness=maybe(random.uniform(-self.brightness_delta, self.brightness_delta), 0.0),
            contrast=maybe(random.uniform(*self.contrast_range), 1.0),
            saturation=maybe(random.uniform(*self.saturation_range), 1.0),
            hue=maybe(random.uniform(-self.hue_delta, self.hue_delta), 0.0),
            contrast_first=random.random() < 0.5,
            order=tuple(np.random.permutation(3)) if random.random() < self.swap_prob else None,
        )
        return T.ColorTransform(lambda img: _distort(img, **params))


class MeanFillPadTransform(PadTransform):
    """PadTransform whose image padding is a per-channel fill value (the pixel mean)."""

    def apply_image(self, img):
        # OpenCV's border copy: the canvas is up to 16x the image, and a numpy fill and paste
        # cost a fifth of SSD's augmentation time (docs/speed.md, "Training in bfloat16").
        channels = img.shape[2] if img.ndim == 3 else 1
        fill = np.broadcast_to(np.asarray(self.pad_value, dtype=np.float64), (channels,))
        out = cv2.copyMakeBorder(
            np.ascontiguousarray(img), self.y0, self.y1, self.x0, self.x1,
            cv2.BORDER_CONSTANT, value=tuple(fill),
        )  # fmt: skip
        return out.reshape(out.shape[:2] + img.shape[2:])  # OpenCV drops a single channel axis


class RandomExpand(T.Augmentation):
    """Zoom out: with probability ``prob``, place the image at a random spot of a canvas up to
    ``max_ratio`` times its size, filled with ``fill`` (the pixel mean), so that objects become
    small. This is the "expansion" trick that SSD300* and DSSD rely on for small objects."""

    def __init__(
        self, max_ratio: float = 4.0, prob: float = 0.5, fill: Sequence[float] = (0, 0, 0)
    ):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        if self.max_ratio <= 1.0 or random.random() >= self.prob:
            return T.NoOpTransform()
        h, w = image.shape[:2]
        ratio = random.uniform(1.0, self.max_ratio)
        new_h, new_w = int(h * ratio), int(w * ratio)
        top, left = random.randint(0, new_h - h), random.randint(0, new_w - w)
        fill = tuple(round(v) for v in self.fill)
        return MeanFillPadTransform(
            left, top, new_w - w - left, new_h - h - top, orig_w=w, orig_h=h, pad_value=fill
        )


def _patch_iou(x0, y0, x1, y1, boxes: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """IoU of one patch with each (N, 4) XYXY box (pairwise_iou in numpy: the crop tries up
    to 300 patches per image, and Boxes/torch per patch cost more than the crop itself)."""
    w = np.clip(np.minimum(boxes[:, 2], x1) - np.maximum(boxes[:, 0], x0), 0, None)
    h = np.clip(np.minimum(boxes[:, 3], y1) - np.maximum(boxes[:, 1], y0), 0, None)
    inter = w * h
    return inter / ((x1 - x0) * (y1 - y0) + areas - inter)


class SSDMinIoURandomCrop(T.MinIoURandomCrop):
    """Detectron2's min-IoU crop with SSD's acceptance rule.

    Detectron2 (like mmdetection) accepts a patch only when *every* box overlaps it by at least
    the sampled IoU. On dense images (BCCD has ~20 cells per image) that rejects every patch,
    because boxes outside the patch overlap it by 0, so nothing is ever cropped. The SSD
    reference (Caffe's sample constraint; torchvision's RandomIoUCrop too) accepts a patch when
    *some* box does, and some box centre lies inside it; this does that. Patch sizes, aspect
    limits and trial counts are Detectron2's.
    """

    def get_transform(self, image, boxes):
        if boxes is None or len(boxes) == 0:
            return T.NoOpTransform()
        h, w = image.shape[:2]
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        for _ in range(self.mode_trials):
            min_iou = random.choice(self.sample_mode)
            if min_iou == 1:
                return T.NoOpTransform()
            for _ in range(self.crop_trials):
                new_w = random.uniform(self.min_crop_size * w, w)
                new_h = random.uniform(self.min_crop_size * h, h)
                if not 0.5 <= new_h / new_w <= 2:
                    continue
                x0, y0 = int(random.uniform(0, w - new_w)), int(random.uniform(0, h - new_h))
                x1, y1 = int(x0 + new_w), int(y0 + new_h)
                if x1 <= x0 or y1 <= y0:
                    continue
                if _patch_iou(x0, y0, x1, y1, boxes, areas).max() < min_iou:
                    continue
                inside = (centres > [x0, y0]).all(axis=1) & (centres < [x1, y1]).all(axis=1)
                if inside.any():
                    return T.CropTransform(x0, y0, x1 - x0, y1 - y0)
        return T.NoOpTransform()


def ssd_augmentations(
    image_size: int,
    is_train: bool,
    *,
    photometric: bool = True,
    expand_ratio: float = 4.0,
    expand_prob: float = 0.5,
    expand_fill: Sequence[float] = (0.0, 0.0, 0.0),
    min_iou_crop: bool = True,
    min_ious: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    min_crop_size: float = 0.3,
    random_flip: str = "horizontal",
) -> List[T.Augmentation]:
    """Training: distortion, zoom-out, min-IoU crop, resize to the square, flip. Test: resize.

    The keyword form of :func:`build_ssd_augmentation`, for LazyConfig (``LazyCall``); the
    arguments are the INPUT.SSD_AUG keys, ``expand_fill`` the pixel mean.
    """
    resize = T.Resize((image_size, image_size))
    if not is_train:
        return [resize]
    augs = []
    if photometric:
        augs.append(PhotometricDistortion())
    if expand_ratio > 1.0:
        if len(expand_fill) != 3:
            raise ValueError(
                f"MODEL.PIXEL_MEAN must have 3 values for RandomExpand, got {expand_fill}"
            )
        augs.append(RandomExpand(expand_ratio, expand_prob, expand_fill))
    if min_iou_crop:
        augs.append(SSDMinIoURandomCrop(tuple(min_ious), min_crop_size))
    augs.append(resize)
    if random_flip == "horizontal":
        augs.append(T.RandomFlip(horizontal=True, vertical=False))
    elif random_flip != "none":
        raise ValueError(
            f"INPUT.RANDOM_FLIP must be 'horizontal' or 'none' for SSD, got {random_flip!r}"
        )
    return augs


def build_ssd_augmentation(cfg, is_train: bool):
    """:func:`ssd_augmentations` from INPUT.FIXED_SIZE, INPUT.SSD_AUG, INPUT.RANDOM_FLIP and
    MODEL.PIXEL_MEAN."""
    aug_cfg = cfg.INPUT.SSD_AUG
    return ssd_augmentations(
        cfg.INPUT.FIXED_SIZE,
        is_train,
        photometric=aug_cfg.PHOTOMETRIC,
        expand_ratio=aug_cfg.EXPAND_RATIO,
        expand_prob=aug_cfg.EXPAND_PROB,
        expand_fill=cfg.MODEL.PIXEL_MEAN,
        min_iou_crop=aug_cfg.MIN_IOU_CROP,
        min_ious=aug_cfg.MIN_IOUS,
        min_crop_size=aug_cfg.MIN_CROP_SIZE,
        random_flip=cfg.INPUT.RANDOM_FLIP,
    )
