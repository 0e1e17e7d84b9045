#!/usr/bin/env python
"""Same-budget peer: torchvision's SSDlite trained from scratch for N minutes, our evaluator.

    python tools/peer_ssdlite.py --config-file configs/BCCD/tiny_dsod300_cpu.yaml --minutes 30 \
        [--batch-size 8] [--lr LR] [--eval-period MINUTES] [--output-dir DIR] [KEY VALUE ...]

Trains torchvision's ``ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)``
(what a user without a GPU would otherwise pick) on the config's DATASETS.TRAIN for a budget of
wall-clock training minutes, then evaluates it on DATASETS.TEST with the evaluator our trainer
uses (``dssd_d2.engine.build_evaluator``: Pascal VOC or COCO by the dataset's evaluator_type) and
prints Detectron2's ``copypaste:`` lines. Give it the config of the run it stands beside: it
takes the datasets, MODEL.SSD.NUM_CLASSES, DATALOADER.NUM_WORKERS and (for --output-dir)
OUTPUT_DIR from it; trailing KEY VALUE pairs override the config as in train_net.py.

The recipe is torchvision's (references/detection, SSDlite) adapted to a time budget: SGD with
momentum 0.9 and weight decay 4e-5 on every parameter; lr 0.15 for a batch of 192 (8 GPUs x 24),
scaled linearly to --batch-size unless --lr is given; a linear warm-up from 0.001x over the first
epoch (at most 1000 iterations); then cosine annealing to 0 over the budget, by elapsed training
time instead of epochs; "ssdlite" augmentation (SSD's IoU crop and a horizontal flip, no
photometric distortion and no zoom-out); the model's own 320x320 resize and [-1, 1]
normalisation; inference with torchvision's defaults (score > 0.001, NMS 0.55, 300 detections).
In float32, as torchvision's recipe trains on a CPU; ``--amp`` gives it the bfloat16 autocast and
channels-last layout that SOLVER.AMP.ENABLED and MODEL.CHANNELS_LAST give our models.

The budget counts training time only (loading batches, forward, backward and step); evaluations
pause it. Writes OUTPUT_DIR/metrics.json (losses, lr and AP, for tools/plot_training_curves.py),
OUTPUT_DIR/model_final.pth (a torchvision state dict), OUTPUT_DIR/results.json and the run record
(OUTPUT_DIR/run_record.json).
"""

import argparse
import logging
import math
import os
import time

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.models.detection import ssdlite320_mobilenet_v3_large
from torchvision.transforms import v2

from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.events import EventStorage, JSONWriter
from detectron2.utils.logger import setup_logger

from dssd_d2 import get_ssd_cfg
from dssd_d2.engine import build_evaluator
from dssd_d2.evaluation import evaluate_detector, report_peer_run
from dssd_d2.run_record import make_run_record, write_run_record

logger = logging.getLogger("peer_ssdlite")

# torchvision's SSDlite recipe (references/detection/README.md): lr 0.15 for 8 GPUs x 24 images.
REFERENCE_LR, REFERENCE_BATCH = 0.15, 192
WEIGHT_DECAY = 4e-5
LOG_PERIOD = 20


def ssdlite_augmentation():
    """torchvision's "ssdlite" training augmentation, on tv_tensors."""
    return v2.Compose(
        [
            v2.RandomIoUCrop(),
            v2.RandomHorizontalFlip(p=0.5),
            v2.SanitizeBoundingBoxes(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def load_image(record) -> torch.Tensor:
    """The record's image as a (3, H, W) uint8 RGB tensor."""
    image = read_image(record["file_name"], format="RGB")
    return torch.from_numpy(image.copy()).permute(2, 0, 1)


class DetectronDataset(Dataset):
    """Detectron2 dataset dicts as torchvision detection samples: (image, {"boxes", "labels"}),
    boxes in XYXY pixels, labels shifted by one (torchvision's class 0 is background)."""

    def __init__(self, records, transform):
        self.records = records
        self.transform = transform

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        record = self.records[index]
        image = tv_tensors.Image(load_image(record))
        boxes = [
            BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
            for a in record["annotations"]
        ]
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                format="XYXY",
                canvas_size=image.shape[-2:],
            ),
            "labels": torch.tensor(
                [a["category_id"] + 1 for a in record["annotations"]], dtype=torch.int64
            ),
        }
        return self.transform(image, target)


def _collate(batch):
    return tuple(zip(*batch))


def learning_rate(base_lr, iteration, warmup_iters, elapsed, budget):
    """torchvision's linear warm-up (from 0.001x) times cosine annealing over the budget."""
    warmup = 1.0
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        warmup = 0.001 * (1 - alpha) + alpha
    return base_lr * warmup * 0.5 * (1.0 + math.cos(math.pi * min(elapsed / budget, 1.0)))


def batches(loader):
    """Batches of ``loader`` forever, epoch after epoch."""
    while True:
        yield from loader


@torch.no_grad()
def evaluate(model, cfg, dataset_name, output_dir):
    """Detections of ``model`` on a registered dataset through our evaluator; the results dict."""

    def predict(records):
        images = [load_image(r).float() / 255.0 for r in records]
        found = []
        for image, detections in zip(images, model(images)):
            instances = Instances(tuple(image.shape[-2:]))
            instances.pred_boxes = Boxes(detections["boxes"])
            instances.scores = detections["scores"]
            instances.pred_classes = detections["labels"] - 1
            found.append(instances)
        return found

    model.eval()
    evaluator = build_evaluator(cfg, dataset_name, os.path.join(output_dir, "inference"))
    results = evaluate_detector(evaluator, dataset_name, predict)
    model.train()
    return results


def _evaluate_all(model, cfg, output_dir):
    return {name: evaluate(model, cfg, name, output_dir) for name in cfg.DATASETS.TEST}


def _put_results(storage, results):
    """AP, AP50, ... as ``bbox/AP`` (one test set) or ``<dataset>/bbox/AP``, as Detectron2's
    trainer writes them."""
    if len(results) == 1:
        results = next(iter(results.values()))
    storage.put_scalars(**flatten_results_dict(results), smoothing_hint=False)


def train(args, cfg):
    """Train the peer for ``args.minutes`` of training time, then evaluate it; returns (model,
    run statistics, results per test dataset)."""
    torch.manual_seed(args.seed)
    num_classes = cfg.MODEL.SSD.NUM_CLASSES
    model = ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=num_classes + 1
    )
    if args.amp:
        model.to(memory_format=torch.channels_last)
    model.train()
    records = [r for name in cfg.DATASETS.TRAIN for r in DatasetCatalog.get(name)]
    loader = DataLoader(
        DetectronDataset(records, ssdlite_augmentation()),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=len(records) >= args.batch_size,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=_collate,
        persistent_workers=cfg.DATALOADER.NUM_WORKERS > 0,
        generator=torch.Generator().manual_seed(args.seed),
    )
    base_lr = args.lr or REFERENCE_LR * args.batch_size / REFERENCE_BATCH
    optimizer = torch.optim.SGD(
        model.parameters(), lr=base_lr, momentum=0.9, weight_decay=WEIGHT_DECAY
    )
    warmup_iters = min(1000, len(loader) - 1)
    budget = args.minutes * 60.0
    eval_every = args.eval_period * 60.0 if args.eval_period else math.inf
    logger.info(
        f"Peer: torchvision ssdlite320_mobilenet_v3_large from scratch, {len(records)} training "
        f"images, batch {args.batch_size}, lr {base_lr:g}, warm-up {warmup_iters} iterations, "
        f"{args.minutes:g} min of training on {torch.get_num_threads()} threads"
        + (", bfloat16 autocast, channels-last" if args.amp else ", float32")
    )

    writer = JSONWriter(os.path.join(args.output_dir, "metrics.json"))
    with EventStorage(0) as storage:
        elapsed, iteration, next_eval = 0.0, 0, eval_every
        data = batches(loader)
        while elapsed < budget:
            start = time.perf_counter()
            images, targets = next(data)
            lr = learning_rate(base_lr, iteration, warmup_iters, elapsed, budget)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
                losses = model(list(images), list(targets))
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"Peer loss is {loss.item()} at iteration {iteration}; try a lower --lr"
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step_time = time.perf_counter() - start
            elapsed += step_time
            iteration += 1

            storage.iter = iteration - 1
            storage.put_scalars(
                total_loss=loss.item(),
                loss_classification=losses["classification"].item(),
                loss_bbox_regression=losses["bbox_regression"].item(),
                time=step_time,
            )
            storage.put_scalars(lr=lr, training_minutes=elapsed / 60.0, smoothing_hint=False)
            if elapsed >= budget:  # the last iteration is written with the final evaluation
                break
            evaluated = elapsed >= next_eval
            if evaluated:
                next_eval += eval_every
                _put_results(storage, _evaluate_all(model, cfg, args.output_dir))
            if evaluated or iteration % LOG_PERIOD == 0:
                logger.info(
                    f"iter {iteration}  loss {loss.item():.3f}  lr {lr:.5f}  "
                    f"{elapsed / 60:.1f}/{args.minutes:g} min"
                )
                writer.write()
        stats = {
            "iterations": iteration,
            "images": iteration * args.batch_size,
            "epochs": iteration * args.batch_size / len(records),
            "training_minutes": elapsed / 60.0,
            "lr": base_lr,
            "batch_size": args.batch_size,
            "amp": args.amp,
        }
        results = _evaluate_all(model, cfg, args.output_dir)
        _put_results(storage, results)
        writer.write()
    writer.close()
    return model, stats, results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, help="the config of the run to stand by")
    parser.add_argument("--minutes", type=float, required=True, help="training-time budget")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.0, help="default: 0.15 * batch / 192")
    parser.add_argument(
        "--eval-period", type=float, default=0.0, help="also evaluate every this many minutes"
    )
    parser.add_argument("--output-dir", default="", help="default: OUTPUT_DIR + '_peer_ssdlite'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--amp",
        action="store_true",
        help="train in bfloat16 autocast and channels-last, as SOLVER.AMP.ENABLED and "
        "MODEL.CHANNELS_LAST train ours on a CPU (torchvision's own --amp is float16 on CUDA "
        "only, so off by default; the config's keys are not read for the peer)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = get_ssd_cfg(args.config_file, args.opts)
    args.output_dir = args.output_dir or cfg.OUTPUT_DIR.rstrip("/") + "_peer_ssdlite"
    os.makedirs(args.output_dir, exist_ok=True)
    for name in ("peer_ssdlite", "detectron2"):  # ours, then the evaluators' messages
        setup_logger(os.path.join(args.output_dir, "log.txt"), name=name)
    start = time.perf_counter()
    model, stats, results = train(args, cfg)
    record = make_run_record(
        tool="peer_ssdlite.py",
        config_file=args.config_file,
        overrides=args.opts,
        model="ssdlite320_mobilenet_v3_large",
        datasets={"train": list(cfg.DATASETS.TRAIN), "test": list(cfg.DATASETS.TEST)},
        results=results,
        iterations=stats["iterations"],
        batch_size=args.batch_size,
        training_minutes=stats["training_minutes"],
        wall_minutes=(time.perf_counter() - start) / 60.0,
        settings={"input_size": 320, "base_lr": stats["lr"], "amp": args.amp},
    )
    write_run_record(record, args.output_dir)
    torch.save(model.state_dict(), os.path.join(args.output_dir, "model_final.pth"))
    logger.info(
        f"Peer trained {stats['iterations']} iterations ({stats['epochs']:.1f} epochs) in "
        f"{stats['training_minutes']:.1f} min"
    )
    report_peer_run(args.output_dir, stats, results, logger)
    return results


if __name__ == "__main__":
    main()
