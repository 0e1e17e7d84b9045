#!/usr/bin/env python
"""How a trained model scores its priors: the numbers its training loss hides.

    python tools/inspect_priors.py --config-file configs/SmallDigits/dssd320_R_thin_stage1.yaml \\
        --weights output/small_digits/dssd320_R_thin_stage1/model_final.pth [--images 32] \\
        [--dataset NAME] [--precise-bn N] [KEY VALUE ...]

On the first ``--images`` images of ``--dataset`` (default: the first of DATASETS.TEST), resized
as at test time with their ground truth, in eval mode (BatchNorm running statistics, as
inference) and in train mode (batch statistics, as the loss during training): the classification
and box losses, and per class the matched priors, their mean probability of the class and the
background priors per image that score the class above the median matched prior. Hard-negative
mining lets the loss see 3 background priors per positive; AP ranks all of them, so a model can
have a training loss close to another's and a far lower AP (docs/experiments/2026-12-01-dssd-small-digits.md).
``--precise-bn N`` first recomputes the BatchNorm statistics on N images of DATASETS.TRAIN
(fvcore's precise BN, test-time resizing): it tells stale running statistics from weights.
"""

import argparse
import copy

import torch
from fvcore.nn.precise_bn import update_bn_stats

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import dssd_d2
from dssd_d2.analysis import prior_scores
from dssd_d2.data import SSDDatasetMapper
from dssd_d2.data.transforms import build_ssd_augmentation


def annotated_test_inputs(cfg, dataset: str, count: int):
    """The first ``count`` images of ``dataset`` with test-time resizing and their instances."""
    mapper = SSDDatasetMapper(
        **{
            **SSDDatasetMapper.from_config(cfg, is_train=True),
            "augmentations": build_ssd_augmentation(cfg, is_train=False),
        }
    )
    inputs = (mapper(d) for d in DatasetCatalog.get(dataset)[:count])
    return [x for x in inputs if x is not None]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--dataset", help="default: the first of DATASETS.TEST")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--precise-bn", type=int, default=0, metavar="N")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    args = parser.parse_args()

    cfg = dssd_d2.get_ssd_cfg(args.config_file, args.opts)
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    model = build_model(cfg)
    DetectionCheckpointer(model).load(args.weights)
    if args.precise_bn:
        train = annotated_test_inputs(cfg, cfg.DATASETS.TRAIN[0], args.precise_bn)
        batch = cfg.SOLVER.IMS_PER_BATCH
        batches = [train[i : i + batch] for i in range(0, len(train), batch)]
        with EventStorage():  # the training forward logs its positives
            update_bn_stats(model.train(), batches, len(batches))
    inputs = annotated_test_inputs(cfg, dataset, args.images)
    names = MetadataCatalog.get(dataset).thing_classes
    precise = f", BatchNorm statistics recomputed on {args.precise_bn} images" * bool(
        args.precise_bn
    )
    print(f"{args.weights} on {len(inputs)} images of {dataset}{precise}")
    print(
        "| mode | loss_cls | loss_box_reg | class | matched priors | mean prob at them "
        "| background priors / image above their median |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode in ("eval", "train"):
        # train mode updates BatchNorm running statistics: measure it on a copy
        report = prior_scores(copy.deepcopy(model).train(mode == "train"), inputs)
        losses = report["losses"]
        for name, row in zip(names, report["classes"]):
            print(
                f"| {mode} | {losses['loss_cls']:.3f} | {losses['loss_box_reg']:.3f} | {name} "
                f"| {row['positives']} | {row['mean_prob']:.3f} "
                f"| {row['background_above_median']:.1f} |"
            )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
