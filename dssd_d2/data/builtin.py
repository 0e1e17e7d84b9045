"""Built-in datasets, all registered here on import (like ``detectron2/data/datasets/builtin.py``):
BCCD (blood cells) and microcontrollers (photos of four development boards), both in the Pascal
VOC 2007 layout, when their folders exist under ``$DETECTRON2_DATASETS``, and the generated
digits and small digits (``data/digits.py``, ``data/small_digits.py``), always."""

import functools
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.pascal_voc import load_voc_instances

from .digits import register_digits
from .small_digits import register_small_digits
from .voc_folder import load_voc_folder_instances, register_voc_split

__all__ = [
    "BCCD_CLASSES",
    "MICROCONTROLLERS_CLASSES",
    "load_bccd_instances",
    "register_bccd",
    "register_all_bccd",
    "register_microcontrollers",
]

BCCD_CLASSES = ("RBC", "WBC", "Platelets")
BCCD_SPLITS = ("train", "val", "trainval", "test")


def load_bccd_instances(root: str, split: str):
    """Detectron2's VOC loader, without BCCD's two zero-extent boxes (points: annotation errors,
    dropped with a warning naming the file; see :func:`load_voc_folder_instances`)."""
    return load_voc_folder_instances(root, split, BCCD_CLASSES)


def register_bccd(root: str, prefix: str = "bccd"):
    """Register ``{prefix}_{train,val,trainval,test}`` from a VOC-layout folder ``root``.

    Evaluation uses Detectron2's PascalVOCDetectionEvaluator with the VOC 2007 (11-point) metric.
    """
    for split in BCCD_SPLITS:
        register_voc_split(f"{prefix}_{split}", root, split, BCCD_CLASSES)


def register_all_bccd(datasets_root: str):
    root = os.path.join(datasets_root, "BCCD")
    if os.path.isdir(root):
        register_bccd(root)


MICROCONTROLLERS_CLASSES = ("Arduino_Nano", "ESP8266", "Heltec_ESP32_Lora", "Raspberry_Pi_3")
# Every HOLDOUT_EVERY-th trainval image (in the file's order) is held out for tuning recipes.
HOLDOUT_EVERY = 5


def _holdout_part(root: str, part: str):
    """``microcontrollers_train`` (trainval minus every 5th image, 92) or ``_val`` (those, 22):
    a split of the training photos to tune recipes on, so that the test split stays unseen."""
    dicts = load_voc_instances(root, "trainval", MICROCONTROLLERS_CLASSES)
    held_out = part == "val"
    return [d for i, d in enumerate(dicts) if (i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1) == held_out]


def register_microcontrollers(root: str, prefix: str = "microcontrollers"):
    """Register ``{prefix}_{trainval,test}`` (114 / 35 photos, Pascal VOC 2007 metric) and the
    tuning split of trainval, ``{prefix}_{train,val}`` (92 / 22). The tuning split has no VOC
    image-set file (the data folder is read only), so it is evaluated with Detectron2's COCO
    evaluator: AP over IoU 0.5:0.95 and AP50 by COCO's 101-point interpolation."""
    for split in ("trainval", "test"):
        register_voc_split(f"{prefix}_{split}", root, split, MICROCONTROLLERS_CLASSES)
    for split in ("train", "val"):
        name = f"{prefix}_{split}"
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, functools.partial(_holdout_part, root, split))
        MetadataCatalog.get(name).set(
            thing_classes=list(MICROCONTROLLERS_CLASSES), evaluator_type="coco"
        )


def register_all_microcontrollers(datasets_root: str):
    root = os.path.join(datasets_root, "microcontrollers")
    if os.path.isdir(root):
        register_microcontrollers(root)


_DATASETS_ROOT = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
register_all_bccd(_DATASETS_ROOT)
register_all_microcontrollers(_DATASETS_ROOT)
register_digits()
register_small_digits()
