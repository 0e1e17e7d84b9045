#!/usr/bin/env python
"""Train and evaluate dssd_d2's LazyConfig (Python) configs with Detectron2's LazyConfig flow.

    python tools/lazyconfig_train_net.py --config-file configs/PascalVOC-Detection/ssd300_vgg16.py \
        [--num-gpus 8] [--resume] [--eval-only] [train.max_iter=1000 model.num_classes=3 ...]

Detectron2's recipe (its tools/lazyconfig_train_net.py): the config's ``model``, ``optimizer``,
``dataloader``, ``lr_multiplier`` and ``train`` are instantiated, a SimpleTrainer (AMPTrainer with
``train.amp.enabled``; bfloat16 autocast on a CPU) runs Detectron2's hooks, overrides are ``key=value``. What the YAML flow
(train_net.py, SSDTrainer) adds is kept: ``train.accumulation_steps`` micro-batches per optimizer
step, ``train.max_training_minutes`` (SOLVER.MAX_TRAINING_MINUTES), crash-safe checkpoints, the count of images the mapper skipped (``data/skipped_images``),
and the CPU when CUDA is absent. ``--eval-only`` evaluates ``train.init_checkpoint``.
"""

import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import (
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
)
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

import dssd_d2  # noqa: F401  (registers our parts and datasets)
from dssd_d2.data.validation import SkipCountingLoader
from dssd_d2.engine.accumulation import build_step_trainer
from dssd_d2.engine.checkpoint import AtomicCheckpointer
from dssd_d2.engine.cpu_memory import keep_freed_memory
from dssd_d2.engine.distributed import launch_from_args
from dssd_d2.engine.time_budget import (
    BudgetLRMultiplier,
    TrainingClock,
    budget_writers,
    train_within_budget,
)


def do_test(cfg, model):
    """Evaluate ``model`` on ``dataloader.test`` with ``dataloader.evaluator``."""
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    print_csv_format(results)
    return results


def build_trainer(cfg, model):
    """Step trainer over ``dataloader.train``: SimpleTrainer or AMPTrainer (bfloat16 autocast on a
    CPU), accumulating gradients over ``train.accumulation_steps`` micro-batches when above 1."""
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    loader = SkipCountingLoader(instantiate(cfg.dataloader.train))
    model = create_ddp_model(model, **cfg.train.ddp)
    return build_step_trainer(
        model,
        loader,
        optimizer,
        amp=cfg.train.amp.enabled,
        accumulation_steps=cfg.train.get("accumulation_steps", 1),
        emulated_bf16=cfg.train.amp.get("emulated_bf16", False),
    )


def do_train(cfg, resume: bool = False):
    """Train ``cfg`` to ``train.max_iter`` or for ``train.max_training_minutes`` (0: no limit),
    whichever ends first, resuming from ``train.output_dir`` if asked; returns the step trainer."""
    if cfg.train.device == "cpu":
        keep_freed_memory()
    model = instantiate(cfg.model).to(cfg.train.device)
    trainer = build_trainer(cfg, model)
    checkpointer = AtomicCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    main_process = comm.is_main_process()
    minutes = cfg.train.get("max_training_minutes", 0)
    clock = TrainingClock(minutes, key="train.max_training_minutes") if minutes else None
    scheduler = instantiate(cfg.lr_multiplier)
    if clock:  # the schedule runs over whichever budget is spent first
        scheduler = BudgetLRMultiplier(trainer.optimizer, scheduler, cfg.train.max_iter, clock)
    writers = default_writers(cfg.train.output_dir, cfg.train.max_iter)
    if clock:
        writers = budget_writers(writers, clock)
    trainer.register_hooks(
        [
            clock,  # first, so that it counts the steps and not the other hooks' work
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=scheduler),
            hooks.CallbackHook(
                after_step=lambda t: t.storage.put_scalar(
                    "data/skipped_images", t.data_loader.skipped, smoothing_hint=False
                )
            ),
            (
                hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
                if main_process
                else None
            ),
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            (hooks.PeriodicWriter(writers, period=cfg.train.log_period) if main_process else None),
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    if clock:
        train_within_budget(trainer, clock, start_iter, cfg.train.max_iter)
    else:
        trainer.train(start_iter, cfg.train.max_iter)
    return trainer


def setup(args):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    if not torch.cuda.is_available():
        cfg.train.device = "cpu"
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = create_ddp_model(instantiate(cfg.model).to(cfg.train.device))
        AtomicCheckpointer(model).load(cfg.train.init_checkpoint)
        return do_test(cfg, model)
    do_train(cfg, resume=args.resume)


if __name__ == "__main__":
    launch_from_args(main, default_argument_parser().parse_args())
