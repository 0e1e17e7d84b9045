#!/usr/bin/env python
"""Export an SSD, DSSD or DSOD model to TorchScript or ONNX, and check it against eager mode.

    python tools/export_model.py --config-file configs/PascalVOC-Detection/dsod300.yaml \
        --format onnx --output dsod300.onnx MODEL.WEIGHTS output/voc/dsod300/model_final.pth

The exported graph is the whole inference (normalisation, network, softmax, decoding, top-k,
NMS) for one image of INPUT.FIXED_SIZE: input a float (C, H, W) tensor in INPUT.FORMAT, 0-255;
outputs pred_boxes, pred_classes, scores, image_size (see dssd_d2/deploy/export.py).
BatchNorm is folded first (--no-fold to keep it). MODEL.WEIGHTS "" exports random weights.
ONNX needs the optional extra: pip install "dssd_d2[export]".
"""

import argparse

import numpy as np
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.export import dump_torchscript_IR
from detectron2.modeling import build_model

import dssd_d2
from dssd_d2.analysis import calibrate_batch_norms
from dssd_d2.deploy.export import export_onnx, export_torchscript, outputs_to_instances


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    parser.add_argument("--output", required=True, help="file to write (.ts / .onnx)")
    parser.add_argument("--no-fold", action="store_true", help="keep BatchNorm layers")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset")
    parser.add_argument("--dump-ir", metavar="DIR", help="also dump the TorchScript code and IR")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args()


def run_exported(args, image):
    if args.format == "torchscript":
        return torch.jit.load(args.output)(image)
    import onnxruntime

    session = onnxruntime.InferenceSession(args.output, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": image.numpy()})


def main():
    args = parse_args()
    cfg = dssd_d2.get_ssd_cfg(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()

    size = cfg.INPUT.FIXED_SIZE
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (2, len(cfg.MODEL.PIXEL_MEAN), size, size))
    images = torch.from_numpy(images).float()
    image = images[0]
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:  # random weights: BatchNorm statistics of real scale, or DSSD's products overflow
        calibrate_batch_norms(model, images)
    if not args.no_fold:
        dssd_d2.fold_batch_norm(model)

    if args.format == "torchscript":
        traced = export_torchscript(model, image, args.output)
        if args.dump_ir:
            dump_torchscript_IR(traced, args.dump_ir)
    else:
        export_onnx(model, image, args.output, opset=args.opset)
    print(f"Wrote {args.output} ({args.format}, input 1 x {size} x {size} image)")

    with torch.no_grad():
        expected = model([{"image": image}])[0]["instances"]
    actual = outputs_to_instances(run_exported(args, image))
    # Scores compared sorted: with random weights many scores tie and their order is arbitrary.
    message = f"Check on a random image: {len(actual)} detections, eager mode {len(expected)}"
    if len(actual) == len(expected) and len(expected):
        error = (actual.scores.sort().values - expected.scores.sort().values).abs().max()
        message += f"; sorted scores differ by at most {error.item():.1e}"
    print(message)


if __name__ == "__main__":
    main()
