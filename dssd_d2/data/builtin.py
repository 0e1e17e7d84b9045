"""Builtin datasets: BCCD (blood cells, Pascal VOC 2007 layout) under $DETECTRON2_DATASETS."""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_pascal_voc

__all__ = ["BCCD_CLASSES", "register_bccd", "register_all_bccd"]

BCCD_CLASSES = ("RBC", "WBC", "Platelets")
BCCD_SPLITS = ("train", "val", "trainval", "test")


def register_bccd(root: str, prefix: str = "bccd"):
    """Register ``{prefix}_{train,val,trainval,test}`` from a VOC-layout folder ``root``.

    Evaluation uses Detectron2's PascalVOCDetectionEvaluator with the VOC 2007 (11-point) metric.
    """
    for split in BCCD_SPLITS:
        name = f"{prefix}_{split}"
        if name not in DatasetCatalog.list():
            register_pascal_voc(name, root, split, 2007, BCCD_CLASSES)
            MetadataCatalog.get(name).evaluator_type = "pascal_voc"


def register_all_bccd(datasets_root: str):
    root = os.path.join(datasets_root, "BCCD")
    if os.path.isdir(root):
        register_bccd(root)


register_all_bccd(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
