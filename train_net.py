#!/usr/bin/env python
"""Train and evaluate SSD, DSSD and DSOD with Detectron2's standard command line.

python train_net.py --config-file configs/PascalVOC-Detection/ssd300_vgg16.yaml --num-gpus 8
python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth

``--num-gpus N`` starts N processes (on a machine without a GPU, N CPU processes over gloo);
``--num-machines``, ``--machine-rank`` and ``--dist-url`` spread them over machines. One-machine
jobs take a free port unless ``--dist-url`` is given, so several can share a machine
(:mod:`dssd_d2.engine.distributed`). tools/lazyconfig_train_net.py is the same run for the
LazyConfig (.py) configs.
"""

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from dssd_d2 import get_ssd_cfg
from dssd_d2.engine import SSDTrainer
from dssd_d2.engine.distributed import launch_from_args  # tests launch their workers with it


def setup(args):
    cfg = get_ssd_cfg(args.config_file, args.opts)  # on the CPU when there is no GPU
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    """One process: all of them train (or evaluate) together, the main one writes."""
    cfg = setup(args)
    if args.eval_only:
        model = SSDTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = SSDTrainer.test(cfg, model)  # the evaluators gather on the main process
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = SSDTrainer(cfg)
    trainer.register_hooks([trainer.run_record_hook(args.config_file, args.opts)])
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    launch_from_args(main, default_argument_parser().parse_args())
