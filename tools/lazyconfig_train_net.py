#!/usr/bin/env python
"""Train and evaluate dssd_d2's LazyConfig (Python) configs with Detectron2's LazyConfig flow.

    python tools/lazyconfig_train_net.py --config-file configs/PascalVOC-Detection/ssd300_vgg16.py \
        [--num-gpus 8] [--resume] [--eval-only] [train.max_iter=1000 model.num_classes=3 ...]

Detectron2's recipe (its tools/lazyconfig_train_net.py: the config's ``model``, ``optimizer``,
``dataloader``, ``lr_multiplier`` and ``train`` instantiated, ``key=value`` overrides) in the
training assembly that train_net.py uses too (:class:`dssd_d2.engine.lazy.LazyConfigTrainer`):
``train.accumulation_steps``, ``train.max_training_minutes``, bfloat16 autocast on a CPU
(``train.amp.enabled``), crash-safe checkpoints, the count of images the mapper skipped, a run
record (``run_record.json``), and the CPU when CUDA is absent. ``--num-gpus N`` starts N
processes (over gloo on a machine without a GPU). ``--eval-only`` evaluates
``train.init_checkpoint``.
"""

import torch

from detectron2.config import LazyConfig
from detectron2.engine import default_argument_parser, default_setup

import dssd_d2  # noqa: F401  (registers our parts and datasets)
from dssd_d2.engine.checkpoint import AtomicCheckpointer
from dssd_d2.engine.distributed import create_ddp_model, launch_from_args
from dssd_d2.engine.lazy import LazyConfigTrainer


def setup(args):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    if not torch.cuda.is_available():
        cfg.train.device = "cpu"
    default_setup(cfg, args)
    return cfg


def main(args):
    """One process: all of them train (or evaluate) together, the main one writes."""
    cfg = setup(args)
    if args.eval_only:
        model = LazyConfigTrainer.build_model(cfg)
        AtomicCheckpointer(model).load(cfg.train.init_checkpoint)
        return LazyConfigTrainer.test(cfg, create_ddp_model(model))
    trainer = LazyConfigTrainer(cfg)
    trainer.register_hooks([trainer.run_record_hook(args.config_file, args.opts)])
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    launch_from_args(main, default_argument_parser().parse_args())
