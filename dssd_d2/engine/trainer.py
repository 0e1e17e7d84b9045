"""The YAML flow's trainer and predictor, wired to SSD's data pipeline (fixed-square resize,
box-aware mapper)."""

import os

import torch
from fvcore.nn.precise_bn import get_bn_modules

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
from detectron2.engine import DefaultPredictor, DefaultTrainer, hooks
from detectron2.evaluation import COCOEvaluator, verify_results
from detectron2.utils import comm

from ..checks import YAML_KEYS, TrainingSetup, check_dataset_classes, yaml_norm_keys
from ..data import SSDDatasetMapper
from ..data.mosaic import build_train_mapper, close_mosaic_hooks
from ..data.validation import SkipCountingLoader, num_classes_of
from ..ema import ema_hooks
from ..evaluation import PascalVOCDetectionEvaluatorWithClassAP
from .assembly import AssembledTrainer, TrainingPlan

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


class SSDTrainer(AssembledTrainer, DefaultTrainer):
    """Detectron2's DefaultTrainer for the YAML configs (train_net.py), assembled as the
    LazyConfig flow is (:class:`~dssd_d2.engine.assembly.AssembledTrainer`: checks, step
    trainer, training clock, checkpointer, hooks), with loaders that use SSDDatasetMapper and an
    evaluator that follows the dataset.

    Robustness on top of Detectron2's: the build-time checks (input size, prior steps, the
    datasets' classes against the model's, BatchNorm batches); images the mapper skips are
    counted in the metrics (``data/skipped_images``); checkpoints are written atomically and
    never from non-finite weights (:class:`AtomicCheckpointer`); a non-finite loss stops the run
    with a message naming the last good checkpoint.
    """

    @classmethod
    def prepare_config(cls, cfg):
        return cls.auto_scale_workers(cfg, comm.get_world_size())

    @classmethod
    def training_plan(cls, cfg) -> TrainingPlan:
        solver = cfg.SOLVER
        return TrainingPlan(
            output_dir=cfg.OUTPUT_DIR,
            device=cfg.MODEL.DEVICE,
            max_iter=solver.MAX_ITER,
            checkpoint_period=solver.CHECKPOINT_PERIOD,
            eval_period=cfg.TEST.EVAL_PERIOD,
            init_weights=cfg.MODEL.WEIGHTS,
            weights_exclude=cfg.MODEL.WEIGHTS_EXCLUDE,
            amp=solver.AMP.ENABLED,
            emulated_bf16=solver.AMP.EMULATED_BF16,
            accumulation_steps=solver.ACCUMULATION_STEPS,
            max_training_minutes=solver.MAX_TRAINING_MINUTES,
            ddp={"broadcast_buffers": False},  # as DefaultTrainer
        )

    @classmethod
    def training_setup(cls, cfg) -> TrainingSetup:
        key, num_classes = num_classes_of(cfg)
        return TrainingSetup(
            input_size=cfg.INPUT.FIXED_SIZE,
            total_batch=cfg.SOLVER.IMS_PER_BATCH,
            num_classes=num_classes,
            num_classes_key=key or "",
            datasets=cfg.DATASETS.TRAIN,  # test sets: when their loaders are built
            check_steps=cfg.MODEL.ANCHOR_GENERATOR.CHECK_STEPS,
            keys=YAML_KEYS,
            norm_keys=yaml_norm_keys(cfg),
        )

    def describe_run(self) -> dict:
        cfg = self.cfg
        return {
            "model": cfg.MODEL.BACKBONE.NAME,
            "datasets": {"train": list(cfg.DATASETS.TRAIN), "test": list(cfg.DATASETS.TEST)},
            "batch_size": cfg.SOLVER.IMS_PER_BATCH,
            "settings": {
                "input_size": cfg.INPUT.FIXED_SIZE,
                "base_lr": cfg.SOLVER.BASE_LR,
                "channels_last": cfg.MODEL.CHANNELS_LAST,
                "ema": cfg.MODEL.EMA.ENABLED,
                "mosaic": cfg.INPUT.MOSAIC.ENABLED,
                "box_loss": cfg.MODEL.SSD.BBOX_REG_LOSS_TYPE,
            },
        }

    def run_record_hook(self, config_file: str, overrides, tool: str = "train_net.py"):
        return super().run_record_hook(config_file, overrides, tool)

    def build_hooks(self):
        """The assembly's hooks after the EMA of the weights (MODEL.EMA, dssd_d2/ema.py), first
        so that every hook between two steps (checkpoints, evaluations) sees the EMA; then the
        switch to a loader without mosaic for the run's end (INPUT.MOSAIC.CLOSE_FRACTION)."""
        rebuild = lambda cfg: SkipCountingLoader(self.build_train_loader(cfg))  # noqa: E731
        return (
            ema_hooks(self.cfg, self.model)
            + super().build_hooks()
            + close_mosaic_hooks(self.cfg, rebuild, self.clock)
        )

    def build_precise_bn_hook(self):
        """DefaultTrainer's PreciseBN hook (TEST.PRECISE_BN), before each evaluation."""
        if not (self.cfg.TEST.PRECISE_BN.ENABLED and get_bn_modules(self.model)):
            return None
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATALOADER.NUM_WORKERS = 0  # save some memory and time for PreciseBN
        return hooks.PreciseBN(
            cfg.TEST.EVAL_PERIOD,
            self.model,
            SkipCountingLoader(self.build_train_loader(cfg)),
            cfg.TEST.PRECISE_BN.NUM_ITER,
        )

    def train(self):
        """AssembledTrainer.train, then DefaultTrainer's check of TEST.EXPECTED_RESULTS."""
        results = super().train()
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
            verify_results(self.cfg, results)
        return results

    @classmethod
    def build_model(cls, cfg):
        """DefaultTrainer's, in channels-last memory layout when MODEL.CHANNELS_LAST is set (the
        layout oneDNN's CPU convolutions are fastest in; checkpoints load into it unchanged)."""
        model = super().build_model(cfg)
        if cfg.MODEL.CHANNELS_LAST:
            model.to(memory_format=torch.channels_last)
        return model

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's train loader with SSD's mapper (the mosaic one under INPUT.MOSAIC)."""
        for name in cfg.DATASETS.TRAIN:
            _check_dataset_classes(cfg, name)
        dataset = DatasetFromList(
            get_detection_dataset_dicts(
                cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
            ),
            copy=False,
        )
        return build_detection_train_loader(
            cfg, dataset=dataset, mapper=build_train_mapper(cfg, dataset)
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Detectron2's test loader over an iterable dataset: when the mapper skips an image
        (BAD_IMAGE_POLICY_TEST "skip") it is left out, not replaced by another image that would
        then be evaluated twice (what MapDataset does for map-style datasets)."""
        _check_dataset_classes(cfg, dataset_name)
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


def _check_dataset_classes(cfg, dataset_name: str):
    key, num_classes = num_classes_of(cfg)
    if key is not None:
        check_dataset_classes(dataset_name, num_classes, key)


class SSDPredictor(DefaultPredictor):
    """DefaultPredictor (BGR image in, predictions at the image's size out) with SSD's
    fixed-square resize instead of the shortest-edge resize."""

    def __init__(self, cfg):
        super().__init__(cfg)
        size = cfg.INPUT.FIXED_SIZE
        self.aug = T.Resize((size, size))
