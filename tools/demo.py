#!/usr/bin/env python
"""Run a trained dssd_d2 model on images and write annotated PNGs.

    # images: files, folders and globs; one <name>.png with the detections per image
    python tools/demo.py --config-file configs/quickstart/ssd_digits.yaml \
        --input photo.jpg my_folder/ 'more/*.jpg' --output demo_out/ \
        MODEL.WEIGHTS output/quickstart/ssd_digits/model_final.pth

    # a registered dataset: ground truth (left) next to the detections (right)
    python tools/demo.py --config-file ... --dataset digits_val --num-images 8 --output out/

    # the int8 model written by tools/quantize.py (with the config it was made from)
    python tools/demo.py --config-file ... --int8 output/.../model_int8.xml --input ... --output ...

Any of our configs works: images are resized to the config's INPUT.FIXED_SIZE square, and the
boxes are drawn at the image's own size with Detectron2's Visualizer.
"""

import argparse
import glob
import logging
import os

import cv2

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger

from dssd_d2 import get_ssd_cfg
from dssd_d2.deploy import optimize_for_inference
from dssd_d2.deploy.quantize import load_int8_model
from dssd_d2.engine import SSDPredictor
from dssd_d2.visualization import draw_ground_truth, draw_predictions, side_by_side

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
logger = logging.getLogger("dssd_d2.demo")


def expand_inputs(inputs):
    """Image paths from files, folders (their images, sorted) and globs, in the order given."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, f)
                for f in os.listdir(item)
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif os.path.isfile(item):
            found = [item]
        else:
            found = sorted(glob.glob(os.path.expanduser(item)))
        if not found:
            raise FileNotFoundError(f"--input {item!r}: no such file, or no image in it")
        paths.extend(found)
    return paths


def output_names(paths):
    """``<stem>.png`` per path; stems that repeat get ``_1``, ``_2``, ... appended."""
    seen, names = {}, []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(f"{stem}_{count}.png" if count else f"{stem}.png")
    return names


def annotate_images(predictor, metadata, paths, output_dir, score_thresh):
    written = []
    for path, name in zip(paths, output_names(paths)):
        try:
            image = read_image(path, format="BGR")
        except Exception as error:  # a broken file must not stop the other images
            logger.warning(f"{path}: cannot read ({error}); skipped")
            continue
        instances = predictor(image)["instances"]
        drawn = draw_predictions(image[:, :, ::-1], instances, metadata, score_thresh)
        written.append(os.path.join(output_dir, name))
        cv2.imwrite(written[-1], drawn[:, :, ::-1])
        kept = int((instances.scores >= score_thresh).sum())
        logger.info(f"{path}: {kept} detection(s) >= {score_thresh} -> {written[-1]}")
    return written


def compare_on_dataset(predictor, dataset_name, num_images, output_dir, score_thresh):
    metadata = MetadataCatalog.get(dataset_name)
    written = []
    for record in DatasetCatalog.get(dataset_name)[:num_images]:
        image = read_image(record["file_name"], format="BGR")
        instances = predictor(image)["instances"]
        rgb = image[:, :, ::-1]
        pair = side_by_side(
            draw_ground_truth(rgb, record, metadata),
            draw_predictions(rgb, instances, metadata, score_thresh),
        )
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        written.append(os.path.join(output_dir, f"{dataset_name}_{stem}.png"))
        cv2.imwrite(written[-1], pair[:, :, ::-1])
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image files, folders or globs")
    source.add_argument("--dataset", help="a registered dataset: ground truth | predictions")
    parser.add_argument("--num-images", type=int, default=8, help="with --dataset")
    parser.add_argument("--output", required=True, help="folder for the PNGs")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument(
        "--fast",
        action="store_true",
        help="CPU fast path: fold BatchNorm, channels-last, frozen oneDNN graph (docs/speed.md)",
    )
    speed.add_argument(
        "--int8",
        metavar="MODEL_XML",
        help="run this int8 model from tools/quantize.py instead of MODEL.WEIGHTS (CPU)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    setup_logger(name="dssd_d2")

    cfg = get_ssd_cfg(args.config_file, args.opts)
    cfg.freeze()
    if not cfg.MODEL.WEIGHTS and not args.int8:
        logger.warning("MODEL.WEIGHTS is empty: predicting with an untrained model")
    predictor = SSDPredictor(cfg)
    if args.int8:
        predictor.model = load_int8_model(cfg, args.int8)
    elif args.fast:
        optimize_for_inference(predictor.model, cfg.INPUT.FIXED_SIZE)
    os.makedirs(args.output, exist_ok=True)

    if args.dataset:
        written = compare_on_dataset(
            predictor, args.dataset, args.num_images, args.output, args.confidence_threshold
        )
    else:
        metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__none")
        paths = expand_inputs(args.input)
        written = annotate_images(
            predictor, metadata, paths, args.output, args.confidence_threshold
        )
    print(f"Wrote {len(written)} annotated image(s) to {os.path.abspath(args.output)}")


if __name__ == "__main__":
    main()
