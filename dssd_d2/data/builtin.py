"""Built-in datasets, all registered here on import (like ``detectron2/data/datasets/builtin.py``):
BCCD (blood cells) and microcontrollers (photos of four development boards), both in the Pascal
VOC 2007 layout, when their folders exist under ``$DETECTRON2_DATASETS``, and the generated
digits and small digits (``data/digits.py``, ``data/small_digits.py``), always."""

import functools
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.pascal_voc import load_voc_instances

from .digits import register_digits
from .small_digits import register_small_digits

__all__ = [
    "BCCD_CLASSES",
    "MICROCONTROLLERS_CLASSES",
    "load_bccd_instances",
    "register_bccd",
    "register_all_bccd",
    "register_microcontrollers",
]

logger = logging.getLogger(__name__)

BCCD_CLASSES = ("RBC", "WBC", "Platelets")
BCCD_SPLITS = ("train", "val", "trainval", "test")


def load_bccd_instances(root: str, split: str):
    """Detectron2's VOC loader, without BCCD's zero-extent boxes.

    Two BCCD objects are points (xmin == xmax and ymin == ymax). The VOC loader reads inclusive
    pixel indices, so they would become 1x1 boxes; they are annotation errors, dropped here with
    a warning naming the file.
    """
    dicts = load_voc_instances(root, split, BCCD_CLASSES)
    for record in dicts:
        annotations = record["annotations"]
        kept = [
            a
            for a in annotations
            if min(a["bbox"][2] - a["bbox"][0], a["bbox"][3] - a["bbox"][1]) > 1
        ]
        if len(kept) < len(annotations):
            dropped = [a["bbox"] for a in annotations if a not in kept]
            logger.warning(f"{record['file_name']}: dropping zero-extent box(es) {dropped}")
        record["annotations"] = kept
    return dicts


def register_bccd(root: str, prefix: str = "bccd"):
    """Register ``{prefix}_{train,val,trainval,test}`` from a VOC-layout folder ``root``.

    Evaluation uses Detectron2's PascalVOCDetectionEvaluator with the VOC 2007 (11-point) metric.
    """
    for split in BCCD_SPLITS:
        name = f"{prefix}_{split}"
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, functools.partial(load_bccd_instances, root, split))
        MetadataCatalog.get(name).set(
            thing_classes=list(BCCD_CLASSES),
            dirname=root,
            year=2007,
            split=split,
            evaluator_type="pascal_voc",
        )


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
    for split in ("trainval", "test", "train", "val"):
        name = f"{prefix}_{split}"
        if name in DatasetCatalog.list():
            continue
        if split in ("trainval", "test"):
            load = functools.partial(load_voc_instances, root, split, MICROCONTROLLERS_CLASSES)
            metadata = dict(dirname=root, year=2007, split=split, evaluator_type="pascal_voc")
        else:
            load = functools.partial(_holdout_part, root, split)
            metadata = dict(evaluator_type="coco")
        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(thing_classes=list(MICROCONTROLLERS_CLASSES), **metadata)


def register_all_microcontrollers(datasets_root: str):
    root = os.path.join(datasets_root, "microcontrollers")
    if os.path.isdir(root):
        register_microcontrollers(root)


_DATASETS_ROOT = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
register_all_bccd(_DATASETS_ROOT)
register_all_microcontrollers(_DATASETS_ROOT)
register_digits()
register_small_digits()
