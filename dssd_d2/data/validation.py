"""Bad input caught where it enters training: unreadable images, unusable boxes, and datasets
that disagree with the config. The rules are summarised in docs/robustness.md."""

import functools
import logging

import numpy as np
from PIL import Image

from detectron2.data import detection_utils as utils
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

__all__ = [
    "BAD_IMAGE_POLICIES",
    "SKIPPED_KEY",
    "BadImageError",
    "SkipCountingLoader",
    "clean_annotations",
    "num_classes_of",
    "read_image",
]

logger = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "raise")
# Dataset-dict key on which the mapper reports how many images it skipped before this one; it
# travels with the sample so that skips made in DataLoader workers reach the main process.
SKIPPED_KEY = "bad_images_skipped_before"

# Pillow's modes for 16-bit grayscale ("I" is how some Pillow versions open 16-bit PNGs).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

# Meta-architecture -> the config key holding its number of foreground classes.
_NUM_CLASSES_KEYS = {
    "SSD": "MODEL.SSD.NUM_CLASSES",
    "RetinaNet": "MODEL.RETINANET.NUM_CLASSES",
    "GeneralizedRCNN": "MODEL.ROI_HEADS.NUM_CLASSES",
}


class BadImageError(ValueError):
    """An image file that cannot be used as it is; the message names the file."""


def _checked_mode(file_name: str) -> str | None:
    """The PIL mode in the file's header, after Pillow's integrity check (PNG chunk checksums,
    which catch corrupted pixel data that the decoder would silently turn into wrong pixels);
    None when the file cannot be opened (the full read then reports why)."""
    try:
        f = PathManager.open(file_name, "rb")
        image = Image.open(f)
    except Exception:  # noqa: BLE001  (any failure: the full read reports it)
        return None
    with f:
        image.verify()
        return image.mode


def _read_sixteen_bit_gray(file_name: str, format: str) -> np.ndarray:
    with PathManager.open(file_name, "rb") as f:
        values = np.asarray(utils._apply_exif_orientation(Image.open(f)))
    if values.min() < 0 or values.max() > 65535:
        raise BadImageError(
            f"{file_name}: 32-bit integer image with values in [{values.min()}, {values.max()}], "
            "outside the 16-bit range; save it with 8 or 16 bits per channel"
        )
    gray = Image.fromarray(np.round(values / 257.0).astype(np.uint8), mode="L")
    return utils.convert_PIL_to_numpy(gray, format)


def read_image(file_name: str, format: str) -> np.ndarray:
    """Detectron2's ``read_image`` (EXIF orientation applied; grayscale, RGBA, palette, CMYK and
    16-bit RGB converted by Pillow), except that:

    - 16-bit grayscale is scaled to 8 bits (value / 257): Pillow's own conversion clips every
      value above 255, which turns a 16-bit image white;
    - 32-bit float images are refused: their value range is unknown;
    - a file that cannot be opened or decoded (missing, empty, truncated, corrupt; for PNG also
      a checksum error) raises :class:`BadImageError` naming the file.
    """
    try:
        mode = _checked_mode(file_name)
        if mode == "F":
            raise BadImageError(
                f"{file_name}: 32-bit float image (PIL mode F) has no fixed value range; save it "
                "with 8 or 16 bits per channel"
            )
        if mode in _SIXTEEN_BIT_MODES:
            return _read_sixteen_bit_gray(file_name, format)
        return utils.read_image(file_name, format)
    except BadImageError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError ... on broken files
        raise BadImageError(f"{file_name}: cannot read the image ({type(e).__name__}: {e})") from e


def clean_annotations(
    annotations: list[dict],
    file_name: str,
    image_size: tuple[int, int],
    num_classes: int | None = None,
) -> tuple[list[dict], np.ndarray]:
    """The usable box annotations of one image, and their XYXY boxes clipped to the image.

    Rules: crowd regions are ignored (SSD does not use them); a category id that is not an
    integer in [0, num_classes) raises, naming the file (the dataset and the config disagree,
    which no amount of skipping fixes); a box with a NaN or infinite coordinate is dropped; a
    box of zero or negative width or height is dropped; the rest are clipped to the image and
    dropped if nothing is left (wholly outside). Every drop is a warning naming the file.
    Returned annotations carry their clipped box in XYXY_ABS and no masks or keypoints.
    """
    annotations = [a for a in annotations if a.get("iscrowd", 0) == 0]
    if num_classes is not None:
        unknown = [
            a["category_id"]
            for a in annotations
            if not isinstance(a["category_id"], (int, np.integer))
            or not 0 <= a["category_id"] < num_classes
        ]
        if unknown:
            raise ValueError(
                f"{file_name}: category_id {unknown} is not one of the model's {num_classes} "
                "classes (contiguous ids 0 .. NUM_CLASSES - 1); the dataset's classes and "
                "the config's NUM_CLASSES disagree"
            )
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    h, w = image_size
    clipped = np.clip(boxes, 0, [w, h, w, h])
    finite = np.isfinite(boxes).all(axis=1)
    positive = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    inside = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    for bad, reason in [
        (~finite, "with a NaN or infinite coordinate"),
        (finite & ~positive, "of zero or negative size"),
        (finite & positive & ~inside, f"outside the {w}x{h} image"),
    ]:
        if bad.any():
            logger.warning(
                f"{file_name}: dropping {int(bad.sum())} box(es) {reason}: {boxes[bad].tolist()}"
            )
    keep = finite & positive & inside
    kept = [
        {
            **{k: v for k, v in a.items() if k not in ("segmentation", "keypoints")},
            "bbox": box.tolist(),
            "bbox_mode": BoxMode.XYXY_ABS,
        }
        for a, box, ok in zip(annotations, clipped, keep)
        if ok
    ]
    return kept, clipped[keep]


def num_classes_of(cfg) -> tuple[str | None, int | None]:
    """The config key holding the model's class count for its meta-architecture, and its value;
    (None, None) for a meta-architecture this table does not know."""
    key = _NUM_CLASSES_KEYS.get(cfg.MODEL.META_ARCHITECTURE)
    if key is None:
        return None, None
    return key, functools.reduce(getattr, key.split("."), cfg)


class SkipCountingLoader:
    """Wraps a training data loader: removes the mapper's per-sample skip counts
    (:data:`SKIPPED_KEY`) from each batch and keeps their running total in ``skipped``."""

    def __init__(self, loader):
        self.loader = loader
        self.skipped = 0

    def __iter__(self):
        for batch in self.loader:
            self.skipped += sum(d.pop(SKIPPED_KEY, 0) for d in batch)
            yield batch
