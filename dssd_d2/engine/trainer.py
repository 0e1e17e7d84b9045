"""Trainer and predictor wired to SSD's data pipeline (fixed-square resize, box-aware mapper)."""

import logging
import os
import weakref

import torch

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
from detectron2.engine import DefaultPredictor, DefaultTrainer, TrainerBase
from detectron2.evaluation import COCOEvaluator, verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data import SSDDatasetMapper
from ..data.validation import SkipCountingLoader, check_dataset_classes
from ..evaluation import PascalVOCDetectionEvaluatorWithClassAP
from ..run_record import RunRecordHook
from .accumulation import build_step_trainer
from .checkpoint import AtomicCheckpointer
from .cpu_memory import keep_freed_memory
from .distributed import check_batch_norm_batches, create_ddp_model
from .time_budget import TrainingClock, budget_lr_scheduler, budget_writers, train_within_budget

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
        """DefaultTrainer.__init__ (same parts, same order) except that: on the CPU, glibc's
        malloc keeps freed memory (:func:`keep_freed_memory`: no page faults on each step's
        large blocks); the model is checked for BatchNorms that would crash at this
        per-process batch before anything else is built; DDP gets device ids only on a GPU, so
        that multi-process training also runs on CPU-only machines (gloo);
        SOLVER.ACCUMULATION_STEPS > 1 accumulates micro-batches;
        SOLVER.AMP.ENABLED on a CPU trains in bfloat16 autocast (float32 where the CPU only
        emulates bfloat16); the checkpointer is the atomic one."""
        TrainerBase.__init__(self)
        logger = logging.getLogger("detectron2")
        if not logger.isEnabledFor(logging.INFO):  # setup_logger is not called for d2
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        if cfg.MODEL.DEVICE == "cpu":
            keep_freed_memory()

        model = self.build_model(cfg)
        check_batch_norm_batches(cfg, model)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)

        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = build_step_trainer(
            model,
            data_loader,
            optimizer,
            amp=cfg.SOLVER.AMP.ENABLED,
            accumulation_steps=cfg.SOLVER.ACCUMULATION_STEPS,
            emulated_bf16=cfg.SOLVER.AMP.EMULATED_BF16,
        )

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.clock = None
        if cfg.SOLVER.MAX_TRAINING_MINUTES:
            self.clock = TrainingClock(cfg.SOLVER.MAX_TRAINING_MINUTES)
            self.scheduler = budget_lr_scheduler(self.scheduler, cfg.SOLVER.MAX_ITER, self.clock)
        # Written by the main process only (Detectron2's save_to_disk), atomically.
        self.checkpointer = AtomicCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            weights_exclude=cfg.MODEL.WEIGHTS_EXCLUDE,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        """DefaultTrainer's, after the training clock (SOLVER.MAX_TRAINING_MINUTES) if any."""
        return ([self.clock] if self.clock else []) + super().build_hooks()

    def run_record_hook(self, config_file: str, overrides, tool: str = "train_net.py"):
        """The hook that writes OUTPUT_DIR/run_record.json when training ends (None outside the
        main process); register it last, after the evaluation."""
        if not comm.is_main_process():
            return None
        cfg = self.cfg
        describe = {
            "tool": tool,
            "config_file": config_file,
            "overrides": list(overrides),
            "model": cfg.MODEL.BACKBONE.NAME,
            "datasets": {"train": list(cfg.DATASETS.TRAIN), "test": list(cfg.DATASETS.TEST)},
            "batch_size": cfg.SOLVER.IMS_PER_BATCH,
            "settings": {
                "input_size": cfg.INPUT.FIXED_SIZE,
                "base_lr": cfg.SOLVER.BASE_LR,
                "accumulation_steps": cfg.SOLVER.ACCUMULATION_STEPS,
                "processes": comm.get_world_size(),
                "step_trainer": type(self._trainer).__name__,
                "precision": str(getattr(self._trainer, "precision", None) or "float32"),
                "amp": cfg.SOLVER.AMP.ENABLED,
                "channels_last": cfg.MODEL.CHANNELS_LAST,
                "max_iter": cfg.SOLVER.MAX_ITER,
                "max_training_minutes": cfg.SOLVER.MAX_TRAINING_MINUTES,
            },
        }
        return RunRecordHook(
            cfg.OUTPUT_DIR, describe, lambda t: getattr(t, "_last_eval_results", {}), self.clock
        )

    def build_writers(self):
        """DefaultTrainer's; under a time budget the console's eta counts down to the sooner end."""
        writers = super().build_writers()
        return budget_writers(writers, self.clock) if self.clock else writers

    def train(self):
        """DefaultTrainer.train, whose loop also ends when the training clock has spent its
        budget (SOLVER.MAX_TRAINING_MINUTES)."""
        if self.clock is None:
            return super().train()
        train_within_budget(self, self.clock, self.start_iter, self.max_iter)
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
            verify_results(self.cfg, self._last_eval_results)
            return self._last_eval_results

    def resume_or_load(self, resume=True):
        """DefaultTrainer's, after checking that every process would resume from the same
        checkpoint: with OUTPUT_DIR on a disk that other machines do not see, they would start
        from MODEL.WEIGHTS at iteration 0 with fresh optimizer states while the main process
        resumes, and the processes would silently train apart."""
        if resume and comm.get_world_size() > 1:
            checkpointer = self.checkpointer
            found = checkpointer.get_checkpoint_file() if checkpointer.has_checkpoint() else ""
            every = comm.all_gather(os.path.basename(found))
            if len(set(every)) > 1:
                raise RuntimeError(
                    f"--resume: the processes see different last checkpoints in OUTPUT_DIR "
                    f"{self.cfg.OUTPUT_DIR} ({every}, by global rank); a multi-machine run "
                    "needs OUTPUT_DIR on a file system that every machine shares"
                )
        super().resume_or_load(resume=resume)

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
            # Each process skips in its own share of the data: log the total.
            skipped = sum(comm.all_gather(loader.skipped))
            self.storage.put_scalar("data/skipped_images", skipped, smoothing_hint=False)

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
