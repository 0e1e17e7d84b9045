#!/usr/bin/env python
"""Same-budget peer: Ultralytics YOLO trained from scratch for N minutes, scored by our evaluator.

    python tools/peer_yolo.py --config-file configs/BCCD/tiny_dsod256_cpu.yaml --minutes 30 \
        [--model yolo11n.yaml] [--imgsz 320] [--batch-size 16] [--output-dir DIR] [KEY VALUE ...]

What a practitioner with a CPU and a few hundred images reaches for: Ultralytics YOLO (default
``yolo11n.yaml``: built from its YAML, no pretrained weights) with Ultralytics' own recipe (mosaic,
EMA, AdamW at its automatic rate, close-mosaic, its LR schedule fitted to ``time=``), trained on
the config's DATASETS.TRAIN for ``--minutes`` of wall-clock time by its own ``time=`` budget, then
its final weights (``last.pt``, the EMA) are scored on DATASETS.TEST by the evaluator our trainer
uses (``dssd_d2.engine.build_evaluator``), at confidence 0.001 and at most 100 detections per
image, and Detectron2's ``copypaste:`` lines are printed. Give it the config of the run it stands
beside: it takes the datasets, MODEL.SSD.NUM_CLASSES, DATALOADER.NUM_WORKERS and (for
--output-dir) OUTPUT_DIR from it; trailing KEY VALUE pairs override the config.

Offline, as these machines are: YOLO_OFFLINE is set, Ultralytics' config folder is put in the
output folder with matplotlib's DejaVu Sans standing in for the Arial it would download, AMP is
off (its AMP check downloads weights; on a CPU it trains in float32 anyway) and its per-epoch
validation is off (Ultralytics still validates after the last epoch: on 8 training images, so
that the test split is never seen during training). Ultralytics sets torch's threads to its own
count; this tool makes it the count this process was started with (OMP_NUM_THREADS), as ours.

Ultralytics is AGPL-3.0: it is the optional ``peer`` extra (``pip install -e '.[peer]'``), used by
this tool only and never imported by the package. Writes OUTPUT_DIR/results.json, the run record
(OUTPUT_DIR/run_record.json) and Ultralytics' own run folder (OUTPUT_DIR/train: weights,
results.csv).
"""

import argparse
import json
import logging
import os
import shutil
import time

import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.logger import setup_logger

from dssd_d2 import get_ssd_cfg
from dssd_d2.engine import build_evaluator
from dssd_d2.evaluation import evaluate_detector, report_peer_run
from dssd_d2.run_record import make_run_record, write_run_record

logger = logging.getLogger("peer_yolo")

# Ultralytics' validation scores (discarded) after its last epoch: a few training images keep
# that cheap and keep the test split out of training.
VALIDATION_IMAGES = 8


def offline_ultralytics(config_dir: str):
    """Imports Ultralytics set up to run without a network: its config folder (settings, fonts)
    under ``config_dir``, a local font as the Arial its dataset check downloads."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_CONFIG_DIR"] = config_dir
    os.makedirs(config_dir, exist_ok=True)
    from matplotlib import font_manager

    font = font_manager.findfont("DejaVu Sans")
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not os.path.exists(os.path.join(config_dir, name)):
            shutil.copyfile(font, os.path.join(config_dir, name))
    try:
        import ultralytics
    except ImportError as e:
        raise ImportError(
            "tools/peer_yolo.py needs Ultralytics (AGPL-3.0, optional): pip install -e '.[peer]'"
        ) from e
    return ultralytics


def yolo_label_lines(record, class_names) -> list:
    """The record's boxes as YOLO label lines ("class cx cy w h", normalised to the image);
    boxes with no area are left out with a warning, as our mapper skips them."""
    width, height = record["width"], record["height"]
    lines = []
    for a in record["annotations"]:
        x0, y0, x1, y1 = BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
        x0, x1 = max(0.0, min(x0, width)), max(0.0, min(x1, width))
        y0, y1 = max(0.0, min(y0, height)), max(0.0, min(y1, height))
        if x1 <= x0 or y1 <= y0:
            logger.warning(
                f"{record['file_name']}: {class_names[a['category_id']]} box {a['bbox']} has no "
                "area inside the image; left out of the peer's labels"
            )
            continue
        lines.append(
            f"{a['category_id']} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
            f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}"
        )
    return lines


def write_yolo_dataset(cfg, folder: str) -> str:
    """The config's training images in Ultralytics' layout (images/ symlinked, labels/ written,
    a data YAML); returns the YAML's path."""
    class_names = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_classes
    records = [r for name in cfg.DATASETS.TRAIN for r in DatasetCatalog.get(name)]
    lists = {"train": records, "val": records[:VALIDATION_IMAGES]}
    for split, split_records in lists.items():
        images = os.path.join(folder, "images", split)
        labels = os.path.join(folder, "labels", split)
        shutil.rmtree(images, ignore_errors=True)
        shutil.rmtree(labels, ignore_errors=True)
        os.makedirs(images)
        os.makedirs(labels)
        for index, record in enumerate(split_records):
            stem = f"{index:06d}_{os.path.splitext(os.path.basename(record['file_name']))[0]}"
            extension = os.path.splitext(record["file_name"])[1]
            os.symlink(
                os.path.abspath(record["file_name"]), os.path.join(images, stem + extension)
            )
            with open(os.path.join(labels, stem + ".txt"), "w") as f:
                f.write("\n".join(yolo_label_lines(record, class_names)))
    path = os.path.join(folder, "data.yaml")
    with open(path, "w") as f:
        json.dump(  # JSON is YAML
            {
                "path": os.path.abspath(folder),
                "train": "images/train",
                "val": "images/val",
                "names": dict(enumerate(class_names)),
            },
            f,
        )
    return path


def yolo_predictor(model, imgsz: int):
    """``predict`` for :func:`evaluate_detector`: the YOLO model's detections at confidence
    0.001, at most 100 per image, as Instances in the image's pixels."""

    def predict(records):
        found = []
        results = model.predict(
            [r["file_name"] for r in records],
            imgsz=imgsz,
            conf=0.001,
            max_det=100,
            device="cpu",
            verbose=False,
        )
        for result in results:
            instances = Instances(tuple(result.orig_shape))
            instances.pred_boxes = Boxes(result.boxes.xyxy.float())
            instances.scores = result.boxes.conf.float()
            instances.pred_classes = result.boxes.cls.long()
            found.append(instances)
        return found

    return predict


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, help="the config of the run to stand by")
    parser.add_argument("--minutes", type=float, required=True, help="training wall-time budget")
    parser.add_argument("--model", default="yolo11n.yaml", help="an Ultralytics model YAML")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=16, help="Ultralytics' default")
    parser.add_argument("--output-dir", default="", help="default: OUTPUT_DIR + '_peer_yolo'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = get_ssd_cfg(args.config_file, args.opts)
    output_dir = os.path.abspath(args.output_dir or cfg.OUTPUT_DIR.rstrip("/") + "_peer_yolo")
    os.makedirs(output_dir, exist_ok=True)
    for name in ("peer_yolo", "detectron2"):
        setup_logger(os.path.join(output_dir, "log.txt"), name=name)
    threads = torch.get_num_threads()
    offline_ultralytics(os.path.join(output_dir, "ultralytics_config"))
    from ultralytics import YOLO
    from ultralytics.utils import torch_utils

    torch_utils.NUM_THREADS = threads  # select_device sets torch's threads to it

    start = time.perf_counter()
    model = YOLO(args.model)
    data = write_yolo_dataset(cfg, os.path.join(output_dir, "yolo_data"))
    model.train(
        data=data,
        epochs=10000,  # the time budget ends the run (Ultralytics fits its epochs to it)
        time=args.minutes / 60.0,
        imgsz=args.imgsz,
        batch=args.batch_size,
        workers=cfg.DATALOADER.NUM_WORKERS,
        device="cpu",
        amp=False,
        pretrained=False,
        val=False,
        plots=False,
        seed=args.seed,
        project=output_dir,
        name="train",
        exist_ok=True,
        verbose=False,
    )
    wall_minutes = (time.perf_counter() - start) / 60.0
    trainer = model.trainer
    epochs = trainer.epoch + 1
    iterations = epochs * len(trainer.train_loader)
    final = YOLO(os.path.join(str(trainer.save_dir), "weights", "last.pt"))
    predict = yolo_predictor(final, args.imgsz)
    results = {
        name: evaluate_detector(
            build_evaluator(cfg, name, os.path.join(output_dir, "inference")), name, predict
        )
        for name in cfg.DATASETS.TEST
    }
    stats = {"epochs": epochs, "iterations": iterations, "wall_minutes": wall_minutes}
    record = make_run_record(
        tool="peer_yolo.py",
        config_file=args.config_file,
        overrides=args.opts,
        model=os.path.splitext(os.path.basename(args.model))[0],
        datasets={"train": list(cfg.DATASETS.TRAIN), "test": list(cfg.DATASETS.TEST)},
        results=results,
        iterations=iterations,
        batch_size=args.batch_size,
        training_minutes=wall_minutes,  # Ultralytics' time= budget is wall time
        wall_minutes=wall_minutes,
        settings={
            "input_size": args.imgsz,
            "epochs": epochs,
            "precision": "float32",
            "ultralytics": __import__("ultralytics").__version__,
            "max_training_minutes": args.minutes,
        },
    )
    write_run_record(record, output_dir)
    logger.info(
        f"Peer {args.model} trained {epochs} epochs ({iterations} iterations of "
        f"{args.batch_size}) in {wall_minutes:.1f} min"
    )
    report_peer_run(output_dir, stats, results, logger)
    return results


if __name__ == "__main__":
    main()
