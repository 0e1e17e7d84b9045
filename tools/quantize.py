#!/usr/bin/env python
"""Quantize a trained SSD, DSSD or DSOD model to int8 for CPU inference; optionally evaluate
the float32 and int8 models side by side with Detectron2's evaluator.

    python tools/quantize.py --config-file configs/quickstart/ssd_digits.yaml \
        --output output/quickstart/ssd_digits/model_int8.xml --eval \
        MODEL.WEIGHTS output/quickstart/ssd_digits/model_final.pth

Calibration: --num-calib images (default 300) drawn at random (seed 0) from --calib-dataset
(default: the config's first training set), resized to INPUT.FIXED_SIZE as at test time. The
backbone and head are quantized (dssd_d2/deploy/quantize.py: OpenVINO + NNCF); softmax, box
decoding and NMS stay float32. Writes the OpenVINO IR (.xml and .bin) and a report
(<output>.json: calibration, time, quantized layers, float32 vs int8 detections on
--check-images test images, and the evaluation when asked; --int8 updates it).

--eval evaluates both models on the config's DATASETS.TEST (override it to choose others);
--int8 PATH checks and evaluates an existing int8 model instead of quantizing. Needs the int8 extra:
pip install "dssd_d2[int8]".
"""

import argparse
import json
import logging
import os

import numpy as np
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

import dssd_d2
from dssd_d2.data import SSDDatasetMapper
from dssd_d2.analysis import calibrate_batch_norms
from dssd_d2.deploy.quantize import (
    compare_detections,
    load_int8_model,
    quantize_network,
    save_int8,
)
from dssd_d2.engine import SSDTrainer

logger = logging.getLogger("dssd_d2.quantize")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--output", help="int8 model to write (.xml; the .bin goes beside it)")
    parser.add_argument("--int8", help="evaluate this existing int8 model (.xml) instead")
    parser.add_argument("--calib-dataset", help="default: the config's DATASETS.TRAIN[0]")
    parser.add_argument("--num-calib", type=int, default=300, help="calibration images")
    parser.add_argument(
        "--preset",
        choices=["mixed", "performance"],
        default="mixed",
        help="NNCF preset: asymmetric (mixed) or symmetric (performance) activations",
    )
    parser.add_argument(
        "--check-images", type=int, default=16, help="test images to compare fp32 and int8 on"
    )
    parser.add_argument(
        "--eval",
        action="store_true",
        help="evaluate fp32 and int8 on DATASETS.TEST (choose others with DATASETS.TEST ...)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    if bool(args.output) == bool(args.int8):
        parser.error("give either --output (quantize) or --int8 (use an existing int8 model)")
    return args


def mapped_images(cfg, dataset_name, count, seed=0):
    """``count`` images of ``dataset_name`` drawn at random, as the model takes them at test
    time (resized to the square, INPUT.FORMAT); images the mapper refuses are left out."""
    dicts = DatasetCatalog.get(dataset_name)
    if not dicts:
        raise ValueError(f"Dataset {dataset_name!r} has no images")
    order = np.random.RandomState(seed).permutation(len(dicts))[:count]
    mapper = SSDDatasetMapper(cfg, is_train=False)
    mapped = (mapper(dict(dicts[i])) for i in order)
    return [m["image"] for m in mapped if m is not None]


def float_model(cfg):
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: quantizing an untrained model")
    return model


@torch.no_grad()
def check_detections(fp32, int8, images):
    """float32 vs int8 detections (score >= 0.5) on ``images``: the share int8 reproduces."""
    total, differences = 0, []
    for image in images:
        inputs = [{"image": image}]
        count, diffs = compare_detections(
            fp32(inputs)[0]["instances"], int8(inputs)[0]["instances"]
        )
        total += count
        differences += diffs
    return {
        "images": len(images),
        "fp32_detections": total,
        "reproduced_by_int8": len(differences),
        "mean_score_difference": round(float(np.mean(differences)), 4) if differences else None,
    }


def evaluate(cfg, model, dataset_name, output_folder):
    loader = SSDTrainer.build_test_loader(cfg, dataset_name)
    evaluator = SSDTrainer.build_evaluator(cfg, dataset_name, output_folder)
    return inference_on_dataset(model, loader, evaluator)["bbox"]


def main():
    args = parse_args()
    setup_logger(name="dssd_d2")
    cfg = dssd_d2.get_ssd_cfg(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    size = cfg.INPUT.FIXED_SIZE
    fp32 = float_model(cfg)
    report_path = os.path.splitext(args.output or args.int8)[0] + ".json"
    report = {"config": args.config_file, "weights": cfg.MODEL.WEIGHTS}
    if args.int8 and os.path.isfile(report_path):  # keep the calibration part
        with open(report_path) as f:
            report = json.load(f)
    test_set = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else cfg.DATASETS.TRAIN[0]
    check_images = mapped_images(cfg, test_set, args.check_images, seed=1)

    if args.output:
        calib_set = args.calib_dataset or cfg.DATASETS.TRAIN[0]
        images = mapped_images(cfg, calib_set, args.num_calib)
        if not cfg.MODEL.WEIGHTS:  # random weights: BatchNorm statistics of real scale
            calibrate_batch_norms(fp32, torch.stack(images[:8]).float())
        int8_graph, calibration = quantize_network(fp32, images, size, preset=args.preset)
        save_int8(int8_graph, args.output)
        report.update(int8_model=args.output, calibration={"dataset": calib_set, **calibration})
        print(
            f"Calibrated on {calibration['calibration_images']} images of {calib_set} in "
            f"{calibration['seconds']} s ({args.preset} preset): "
            f"{calibration['fake_quantize_nodes']} quantizers over "
            f"{calibration['convolutions']} convolutions. Wrote {args.output}"
        )
    else:
        report["int8_model"] = args.int8
    int8 = load_int8_model(cfg, args.output or args.int8)  # what was written, as users load it

    report["check"] = {"dataset": test_set, **check_detections(fp32, int8, check_images)}
    check = report["check"]
    print(
        f"On {check['images']} images of {test_set}: int8 reproduces "
        f"{check['reproduced_by_int8']} of the {check['fp32_detections']} float32 detections "
        f"with score >= 0.5 (same class, IoU >= 0.5), mean score difference "
        f"{check['mean_score_difference']}"
    )

    if args.eval:
        report["evaluation"] = {}
        out = os.path.splitext(args.output or args.int8)[0] + "_eval"
        print("\n| dataset | model | AP | AP50 | AP75 |\n|---|---|---|---|---|")
        for name in cfg.DATASETS.TEST:
            results = {
                kind: evaluate(cfg, model, name, os.path.join(out, kind, name))
                for kind, model in (("fp32", fp32), ("int8", int8))
            }
            report["evaluation"][name] = results
            for kind, r in results.items():
                print(f"| {name} | {kind} | {r['AP']:.1f} | {r['AP50']:.1f} | {r['AP75']:.1f} |")
            drop = results["fp32"]["AP50"] - results["int8"]["AP50"]
            print(f"AP50 drop on {name}: {drop:.2f} points")

    with open(report_path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"Report: {report_path}")


if __name__ == "__main__":
    main()
