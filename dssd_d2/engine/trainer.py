"""Trainer and predictor wired to SSD's data pipeline (fixed-square resize, box-aware mapper)."""

import os

from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor, DefaultTrainer
from detectron2.evaluation import COCOEvaluator

from ..data import SSDDatasetMapper
from ..evaluation import PascalVOCDetectionEvaluatorWithClassAP
from .accumulation import GradientAccumulationTrainer

__all__ = ["SSDTrainer", "SSDPredictor", "build_evaluator"]


def build_evaluator(cfg, dataset_name: str, output_folder: str = None):
    """Detectron2's evaluator for the dataset's ``evaluator_type``: Pascal VOC (plus per-class
    AP50) for "pascal_voc", COCO otherwise (COCOEvaluator converts any registered detection
    dataset to COCO format)."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
    if evaluator_type == "pascal_voc":
        return PascalVOCDetectionEvaluatorWithClassAP(dataset_name)
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    return COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_folder)


class SSDTrainer(DefaultTrainer):
    """DefaultTrainer whose loaders use SSDDatasetMapper and whose evaluator follows the dataset."""

    def __init__(self, cfg):
        super().__init__(cfg)
        # SOLVER.ACCUMULATION_STEPS > 1: each iteration accumulates that many micro-batches.
        if cfg.SOLVER.ACCUMULATION_STEPS != 1:  # < 1 is rejected with a message
            self._trainer = GradientAccumulationTrainer.from_trainer(
                self._trainer, cfg.SOLVER.ACCUMULATION_STEPS
            )

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=SSDDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=SSDDatasetMapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)


class SSDPredictor(DefaultPredictor):
    """DefaultPredictor (BGR image in, predictions at the image's size out) with SSD's
    fixed-square resize instead of the shortest-edge resize."""

    def __init__(self, cfg):
        super().__init__(cfg)
        size = cfg.INPUT.FIXED_SIZE
        self.aug = T.Resize((size, size))
