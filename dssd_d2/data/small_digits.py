"""A small-object detection set that needs no download: many small handwritten digits per
320 x 320 image, among clutter that looks like ink but is no digit.

It is the digits set (:mod:`dssd_d2.data.digits`) at another scale: 8 to 20 digits per image,
6 to 40 px high (most objects under COCO's 32 x 32 "small" area), then strokes, arcs and partial
digits drawn in the same contrasting colours everywhere except within 3 px of a digit, and
Gaussian pixel noise. Detecting a digit thus needs its shape and its surroundings, not just
"ink here": the setting where DSSD's decoder (context from coarser maps) should beat SSD.

Generated once per split, deterministically, into ``small_digits_root()`` and registered as
``small_digits_train`` and ``small_digits_val`` with COCO metadata (COCOEvaluator reports AP-small
and AP-medium). Validation digits come from the quarter of scikit-learn's digits that training
never pastes.
"""

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from .digits import (
    DigitsSplit,
    contrasting_colour,
    register_generated_digits,
    render_digits_image,
)

__all__ = [
    "SMALL_DIGITS_SPLITS",
    "SmallDigitsSplit",
    "register_small_digits",
    "render_small_digits_image",
    "small_digits_root",
]

# Bump when the rendering changes: the cache folder is versioned, so old caches are not reused.
SMALL_DIGITS_VERSION = 1
# Clutter stays this many pixels away from every digit box, so boxes hold digit ink only.
CLUTTER_MARGIN = 3


@dataclass(frozen=True)
class SmallDigitsSplit(DigitsSplit):
    # Distractors per image (strokes, arcs, partial digits), drawn uniformly in this range.
    clutter: Tuple[int, int] = (10, 30)
    # Standard deviation of the Gaussian noise added to every pixel (0-255 levels).
    noise_std: float = 4.0


_SHARED = dict(image_size=320, min_digits=8, max_digits=20, digit_size=(6, 48))
SMALL_DIGITS_SPLITS: Dict[str, SmallDigitsSplit] = {
    "train": SmallDigitsSplit(num_images=4000, seed=10, source=(0.0, 0.75), **_SHARED),
    "val": SmallDigitsSplit(num_images=500, seed=11, source=(0.75, 1.0), **_SHARED),
}


def small_digits_root() -> str:
    """Where the generated set is cached: ``$DSSD_SMALL_DIGITS_ROOT``, else
    ``$DETECTRON2_DATASETS/small_digits_v<version>``."""
    if os.getenv("DSSD_SMALL_DIGITS_ROOT"):
        return os.path.expanduser(os.environ["DSSD_SMALL_DIGITS_ROOT"])
    datasets = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    return os.path.join(datasets, f"small_digits_v{SMALL_DIGITS_VERSION}")


def _clutter_alpha(rng: np.random.RandomState, ink: np.ndarray, split: SmallDigitsSplit):
    """Coverage (0..1) of one distractor on the whole image: a stroke, an arc, or one half of a
    real digit at a digit's scale (so that a part of a digit is not a digit)."""
    size = split.image_size
    alpha = np.zeros((size, size), dtype=np.float32)
    kind = rng.randint(3)
    centre = tuple(int(v) for v in rng.randint(0, size, 2))
    if kind == 0:
        length, angle = rng.uniform(4, 30), rng.uniform(0, np.pi)
        end = (int(centre[0] + length * np.cos(angle)), int(centre[1] + length * np.sin(angle)))
        cv2.line(alpha, centre, end, 1.0, int(rng.randint(1, 3)), cv2.LINE_AA)
    elif kind == 1:
        axes = tuple(int(v) for v in rng.randint(2, 12, 2))
        start = int(rng.randint(0, 360))
        cv2.ellipse(
            alpha, centre, axes, 0, start, start + int(rng.randint(90, 360)), 1.0, 1, cv2.LINE_AA
        )
    else:
        side = rng.randint(split.digit_size[0], split.digit_size[1] + 1)
        part = cv2.resize(ink[rng.randint(len(ink))].astype(np.float32), (side, side))
        half = side // 2
        part = [part[:half], part[half:], part[:, :half], part[:, half:]][rng.randint(4)]
        part = np.where(part > 0.2, np.minimum(part, 1.0), 0.0)  # no faint square around it
        part = part[: size - centre[1], : size - centre[0]]
        alpha[centre[1] : centre[1] + part.shape[0], centre[0] : centre[0] + part.shape[1]] = part
    return alpha


def render_small_digits_image(
    rng: np.random.RandomState, ink: np.ndarray, labels: np.ndarray, split: SmallDigitsSplit
) -> Tuple[np.ndarray, List[Tuple[List[float], int]]]:
    """One BGR image and its (XYWH box, class) annotations: the digits set's rendering (gradient
    background, digits with tight boxes), then clutter outside the boxes, then noise."""
    image, annotations = render_digits_image(rng, ink, labels, split)
    image = image.astype(np.float32)
    keep_out = np.zeros(image.shape[:2], dtype=bool)
    for (x, y, w, h), _ in annotations:
        x, y, w, h = int(x), int(y), int(w), int(h)
        m = CLUTTER_MARGIN
        keep_out[max(y - m, 0) : y + h + m, max(x - m, 0) : x + w + m] = True
    for _ in range(rng.randint(split.clutter[0], split.clutter[1] + 1)):
        alpha = _clutter_alpha(rng, ink, split)
        alpha[keep_out] = 0.0
        x, y, w, h = cv2.boundingRect((alpha > 0).view(np.uint8))
        if w == 0:
            continue
        alpha, patch = alpha[y : y + h, x : x + w, None], image[y : y + h, x : x + w]
        colour = contrasting_colour(rng, patch[alpha[..., 0] > 0].mean(axis=0))
        image[y : y + h, x : x + w] = patch * (1 - alpha) + colour * alpha
    image += rng.normal(0.0, split.noise_std, image.shape).astype(np.float32)
    return np.round(np.clip(image, 0, 255)).astype(np.uint8), annotations


def register_small_digits(root: Optional[str] = None, prefix: str = "small_digits"):
    """Register ``{prefix}_train`` (4000 images) and ``{prefix}_val`` (500); they are generated
    on first use."""
    register_generated_digits(
        root or small_digits_root(), prefix, SMALL_DIGITS_SPLITS, render_small_digits_image
    )
