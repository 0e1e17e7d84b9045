#!/usr/bin/env python
"""Train and evaluate SSD, DSSD and DSOD with Detectron2's standard command line.

python train_net.py --config-file configs/PascalVOC-Detection/ssd300_vgg16.yaml --num-gpus 8
python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
"""

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results

from dssd_d2 import get_ssd_cfg
from dssd_d2.engine import SSDTrainer


def setup(args):
    cfg = get_ssd_cfg(args.config_file, args.opts)  # on the CPU when there is no GPU
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = SSDTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = SSDTrainer.test(cfg, model)
        verify_results(cfg, results)
        return results
    trainer = SSDTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
