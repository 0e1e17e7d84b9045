"""Trainer and predictor wired to SSD's data pipeline (fixed-square resize, box-aware mapper)."""

import os
import weakref

from detectron2.data import (
    DatasetFromList,
    MetadataCatalog,
    ToIterableDataset,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T
from detectron2.data.samplers import InferenceSampler
from detectron2.engine import DefaultPredictor, DefaultTrainer
from detectron2.evaluation import COCOEvaluator

from ..data import SSDDatasetMapper
from ..data.validation import SkipCountingLoader, check_dataset_classes
from ..evaluation import PascalVOCDetectionEvaluatorWithClassAP
from .accumulation import GradientAccumulationTrainer
from .checkpoint import AtomicCheckpointer

__all__ = ["SSDPredictor", "SSDTrainer", "build_evaluator"]


def build_evaluator(cfg, dataset_name: str, output_folder: str | None = None):
    """Detectron2's evaluator for the dataset's ``evaluator_type``: Pascal VOC (plus per-class
    AP50) for "pascal_voc", COCO otherwise (COCOEvaluator converts any registered detection
    dataset to COCO format)."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
    if evaluator_type == "pascal_voc":
        return PascalVOCDetectionEvaluatorWithClassAP(dataset_name)
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    return COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_folder)


class SSDTrainer(DefaultTrainer):
    """DefaultTrainer whose loaders use SSDDatasetMapper and whose evaluator follows the dataset.

    Robustness on top of Detectron2's: loaders check that the datasets' classes match the
    model's NUM_CLASSES; images the mapper skips are counted in the metrics
    (``data/skipped_images``); checkpoints are written atomically and never from non-finite
    weights (:class:`AtomicCheckpointer`); a non-finite loss stops the run with a message
    naming the last good checkpoint.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        # SOLVER.ACCUMULATION_STEPS > 1: each iteration accumulates that many micro-batches.
        if cfg.SOLVER.ACCUMULATION_STEPS != 1:  # < 1 is rejected with a message
            self._trainer = GradientAccumulationTrainer.from_trainer(
                self._trainer, cfg.SOLVER.ACCUMULATION_STEPS
            )

    def build_hooks(self):
        # DefaultTrainer.__init__ calls this after creating its checkpointer and before the
        # PeriodicCheckpointer hook takes it: the place to put the atomic one in.
        self.checkpointer = AtomicCheckpointer(
            self.checkpointer.model,
            self.cfg.OUTPUT_DIR,
            weights_exclude=self.cfg.MODEL.WEIGHTS_EXCLUDE,
            trainer=weakref.proxy(self),
        )
        return super().build_hooks()

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as e:  # raised by SimpleTrainer before the optimizer step
            last = self.checkpointer.get_checkpoint_file() or "none yet"
            raise FloatingPointError(
                f"{e}\nTraining stopped; nothing was saved from this step. The last good "
                f"checkpoint is {last}: resume from it with --resume after lowering "
                "SOLVER.BASE_LR, lengthening SOLVER.WARMUP_ITERS or fixing the data."
            ) from e
        loader = self._trainer.data_loader
        if isinstance(loader, SkipCountingLoader):  # a subclass may build its own loader
            self.storage.put_scalar("data/skipped_images", loader.skipped, smoothing_hint=False)

    @classmethod
    def build_train_loader(cls, cfg):
        for name in cfg.DATASETS.TRAIN:
            check_dataset_classes(cfg, name)
        mapper = SSDDatasetMapper(cfg, is_train=True)
        return SkipCountingLoader(build_detection_train_loader(cfg, mapper=mapper))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Detectron2's test loader over an iterable dataset: when the mapper skips an image
        (BAD_IMAGE_POLICY_TEST "skip") it is left out, not replaced by another image that would
        then be evaluated twice (what MapDataset does for map-style datasets)."""
        check_dataset_classes(cfg, dataset_name)
        dicts = DatasetFromList(
            get_detection_dataset_dicts(dataset_name, filter_empty=False), copy=False
        )
        return build_detection_test_loader(
            ToIterableDataset(dicts, InferenceSampler(len(dicts))),
            mapper=SSDDatasetMapper(cfg, is_train=False),
            num_workers=cfg.DATALOADER.NUM_WORKERS,
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
