"""A detection dataset that needs no download: scikit-learn's real handwritten digits pasted at
random scales and positions on coloured canvases, 10 classes, in COCO format.

It is generated once per split, deterministically, into ``digits_root()`` and registered (by
``data/builtin.py``, on import) as ``digits_train`` and ``digits_val`` with COCO metadata, so Detectron2's COCOEvaluator works on it
unchanged. The two splits draw from disjoint halves of scikit-learn's 1797 digits, so validation
digits are never seen in training.
"""

import functools
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

__all__ = [
    "DIGITS_CLASSES",
    "DIGITS_SPLITS",
    "DigitsSplit",
    "digits_root",
    "generate_digits_split",
    "register_digits",
    "render_digits_image",
]

logger = logging.getLogger(__name__)

DIGITS_CLASSES = tuple(str(d) for d in range(10))
# Bump when the rendering changes: the cache folder is versioned, so old caches are not reused.
DIGITS_VERSION = 1


@dataclass(frozen=True)
class DigitsSplit:
    num_images: int
    seed: int
    # Which of scikit-learn's digits (after a fixed shuffle) this split may paste.
    source: Tuple[float, float]
    image_size: int = 128
    max_digits: int = 5
    digit_size: Tuple[int, int] = (16, 48)
    min_digits: int = 1


DIGITS_SPLITS: Dict[str, DigitsSplit] = {
    "train": DigitsSplit(num_images=2000, seed=0, source=(0.0, 0.75)),
    "val": DigitsSplit(num_images=300, seed=1, source=(0.75, 1.0)),
}


def digits_root() -> str:
    """Where the generated images and COCO json files are cached:
    ``$DSSD_DIGITS_ROOT``, else ``$DETECTRON2_DATASETS/digits_detection_v<version>``."""
    if os.getenv("DSSD_DIGITS_ROOT"):
        return os.path.expanduser(os.environ["DSSD_DIGITS_ROOT"])
    datasets = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    return os.path.join(datasets, f"digits_detection_v{DIGITS_VERSION}")


def _source_digits(split: DigitsSplit) -> Tuple[np.ndarray, np.ndarray]:
    """The split's share of scikit-learn's 8x8 digits as ink in [0, 1], and their labels."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    order = np.random.RandomState(1234).permutation(len(digits.target))
    lo, hi = (int(round(f * len(order))) for f in split.source)
    chosen = order[lo:hi]
    return digits.images[chosen] / 16.0, digits.target[chosen]


def contrasting_colour(rng: np.random.RandomState, mean: np.ndarray) -> np.ndarray:
    """Per channel, at least 80 levels away from ``mean``: light on dark, dark on light."""
    light = rng.uniform(np.minimum(mean + 80, 255), 255)
    dark = rng.uniform(0, np.maximum(mean - 80, 0))
    return np.where(mean < 128, light, dark).astype(np.float32)


def render_digits_image(
    rng: np.random.RandomState, ink: np.ndarray, labels: np.ndarray, split: DigitsSplit
) -> Tuple[np.ndarray, List[Tuple[List[float], int]]]:
    """One BGR image and its (XYWH box, class) annotations.

    A linear two-colour gradient background; ``min_digits`` to ``max_digits`` digits (fewer
    when there is no room left), each upscaled to a random height, given a random colour that
    contrasts with the background and alpha-blended at least 2 px away from every earlier digit.
    The box is the tight box of the pasted ink.
    """
    size = split.image_size
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    start = rng.uniform(0, 255, 3)
    end = np.clip(start + rng.uniform(-60, 60, 3), 0, 255)  # gentle, so contrast holds
    weights = ramp[:, None, None] if rng.rand() < 0.5 else ramp[None, :, None]
    image = start.astype(np.float32) * (1 - weights) + end.astype(np.float32) * weights
    image = np.broadcast_to(image, (size, size, 3)).copy()

    annotations = []
    occupied = np.zeros((size, size), dtype=bool)
    for _ in range(rng.randint(split.min_digits, split.max_digits + 1)):
        index = rng.randint(len(labels))
        side = rng.randint(split.digit_size[0], split.digit_size[1] + 1)
        width = max(int(round(side * rng.uniform(0.7, 1.0))), split.digit_size[0] // 2)
        alpha = cv2.resize(ink[index].astype(np.float32), (width, side), cv2.INTER_LINEAR)
        alpha = np.clip(alpha, 0.0, 1.0)
        ys, xs = np.nonzero(alpha > 0.2)
        alpha = alpha[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]  # tight around the ink
        h, w = alpha.shape
        for _attempt in range(20):  # place it where it overlaps no earlier digit
            x0, y0 = rng.randint(0, size - w + 1), rng.randint(0, size - h + 1)
            if not occupied[max(y0 - 2, 0) : y0 + h + 2, max(x0 - 2, 0) : x0 + w + 2].any():
                break
        else:
            continue
        occupied[y0 : y0 + h, x0 : x0 + w] = True
        background = image[y0 : y0 + h, x0 : x0 + w]
        colour = contrasting_colour(rng, background.mean(axis=(0, 1)))
        image[y0 : y0 + h, x0 : x0 + w] = (
            background * (1 - alpha[..., None]) + colour * alpha[..., None]
        )
        annotations.append(([float(x0), float(y0), float(w), float(h)], int(labels[index])))
    return np.round(image).astype(np.uint8), annotations


def generate_digits_split(
    root: str,
    split_name: str,
    splits: Dict[str, DigitsSplit] = DIGITS_SPLITS,
    render: Callable = render_digits_image,
) -> str:
    """Write ``root/<split>/*.png`` and ``root/<split>.json`` (COCO) unless they exist; return
    the json path. Files are written to a temporary folder and moved into place at the end, so
    an interrupted generation never leaves a half-written cache. ``splits`` and ``render`` (same
    signature as :func:`render_digits_image`) let other generated sets reuse this writer."""
    split = splits[split_name]
    json_file = os.path.join(root, f"{split_name}.json")
    if os.path.isfile(json_file):
        return json_file
    try:
        os.makedirs(root, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{split_name}-", dir=root)
    except OSError as e:
        raise OSError(
            f"Cannot write the digits dataset to {root} ({e}); set DSSD_DIGITS_ROOT (or "
            "DETECTRON2_DATASETS) to a writable folder"
        ) from e
    ink, labels = _source_digits(split)
    rng = np.random.RandomState(split.seed)
    images, annotations = [], []
    for image_id in tqdm(range(split.num_images), desc=f"Generating {split_name} in {root}"):
        image, objects = render(rng, ink, labels, split)
        file_name = f"{image_id:06d}.png"
        cv2.imwrite(os.path.join(staging, file_name), image)
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": image.shape[0],
                "width": image.shape[1],
            }
        )
        for box, label in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "category_id": label + 1,  # COCO ids start at 1
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {
            "description": "dssd_d2 digits detection",
            "version": DIGITS_VERSION,
            "split": asdict(split),
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": d + 1, "name": name} for d, name in enumerate(DIGITS_CLASSES)],
    }
    image_dir = os.path.join(root, split_name)
    shutil.rmtree(image_dir, ignore_errors=True)
    os.replace(staging, image_dir)
    with open(json_file + ".tmp", "w") as f:
        json.dump(coco, f)
    os.replace(json_file + ".tmp", json_file)
    logger.info(f"Wrote {len(images)} images with {len(annotations)} digits to {image_dir}")
    return json_file


def _load_generated(root: str, split_name: str, dataset_name: str, splits, render):
    """The split's records; ``dataset_name`` is the registered name, on whose metadata
    load_coco_json sets the category-id mapping that COCO evaluation reads back."""
    json_file = generate_digits_split(root, split_name, splits, render)
    return load_coco_json(json_file, os.path.join(root, split_name), dataset_name)


def register_generated_digits(root: str, prefix: str, splits, render):
    """Register ``{prefix}_{split}`` for each of ``splits``, drawn by ``render`` into ``root``
    on first use, with COCO metadata (the digits set and the small-digits set)."""
    for split_name in splits:
        name = f"{prefix}_{split_name}"
        if name in DatasetCatalog.list():
            continue
        load = functools.partial(_load_generated, root, split_name, name, splits, render)
        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            thing_classes=list(DIGITS_CLASSES),
            json_file=os.path.join(root, f"{split_name}.json"),
            image_root=os.path.join(root, split_name),
            evaluator_type="coco",
        )


def register_digits(root: Optional[str] = None, prefix: str = "digits"):
    """Register ``{prefix}_train`` and ``{prefix}_val``; images are generated on first use."""
    register_generated_digits(root or digits_root(), prefix, DIGITS_SPLITS, render_digits_image)
