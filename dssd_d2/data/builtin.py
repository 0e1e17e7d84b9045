"""Built-in datasets, all registered here on import (like ``detectron2/data/datasets/builtin.py``):
BCCD (blood cells, Pascal VOC 2007 layout) when ``$DETECTRON2_DATASETS/BCCD`` exists, and the
generated digits (``data/digits.py``), always."""

import functools
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.pascal_voc import load_voc_instances

from .digits import register_digits

__all__ = ["BCCD_CLASSES", "load_bccd_instances", "register_bccd", "register_all_bccd"]

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


register_all_bccd(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
register_digits()
