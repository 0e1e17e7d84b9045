"""Tiny models train with Detectron2's trainer and evaluate with its COCO evaluator: a shrunk
SSD300 through checkpoint and predictor (with an image without boxes in training), and a shrunk
DSOD learning an easy set."""

import os

import numpy as np
import pytest
import torch

from dssd_d2.engine import SSDPredictor, SSDTrainer

from helpers import (
    register_cells_dataset,
    register_random_dataset,
    tiny_dsod_cfg,
    tiny_ssd300_cfg,
    train_and_track,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]


def test_train_and_predict_tiny_ssd(tmp_path):
    name = register_random_dataset("dssd_d2_test_random", tmp_path, empty_last=True)
    cfg = tiny_ssd300_cfg(num_classes=3)
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = (name,)
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False  # keep the image without boxes
    cfg.SOLVER.MAX_ITER = 4
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.TEST.EVAL_PERIOD = 0

    torch.manual_seed(0)
    trainer, changed = train_and_track(cfg, tmp_path / "out")
    assert any(k.startswith("head.") for k in changed) and any("conv1_1" in k for k in changed)
    assert np.isfinite(trainer.storage.history("total_loss").latest())
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))

    cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    predictor = SSDPredictor(cfg)
    image = np.random.RandomState(1).randint(0, 256, (90, 170, 3)).astype(np.uint8)
    instances = predictor(image)["instances"]
    assert instances.image_size == (90, 170)
    # Four steps leave the class scores near 1 / 4, far above the 0.01 threshold: a full list.
    assert len(instances) == cfg.TEST.DETECTIONS_PER_IMAGE
    boxes = instances.pred_boxes.tensor
    assert (boxes[:, 2] <= 170).all() and (boxes[:, 3] <= 90).all() and (boxes >= 0).all()
    assert (instances.scores > cfg.MODEL.SSD.SCORE_THRESH_TEST).all()


def test_tiny_dsod_learns_an_easy_set(tmp_path):
    """Two images of coloured discs, no random augmentation, 40 steps: the loss falls below
    half (measured from 20.8 to 4.3) and AP50 on the same images rises 10 points above the
    untrained model's (measured 23.7 after training)."""
    register_cells_dataset("dssd_d2_test_cells", str(tmp_path), num_images=2)
    cfg = tiny_dsod_cfg(num_classes=3)
    cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = ("dssd_d2_test_cells",)
    cfg.INPUT.SSD_AUG.PHOTOMETRIC = False
    cfg.INPUT.SSD_AUG.EXPAND_RATIO = 1.0
    cfg.INPUT.SSD_AUG.MIN_IOU_CROP = False
    cfg.SOLVER.BASE_LR = 0.05
    cfg.SOLVER.MAX_ITER = 40
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000

    torch.manual_seed(0)
    untrained = SSDTrainer.test(cfg, SSDTrainer.build_model(cfg))["bbox"]["AP50"]
    torch.manual_seed(0)
    trainer, _ = train_and_track(cfg, tmp_path / "out")
    losses = [loss for loss, _ in trainer.storage.history("total_loss").values()]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) / 2
    trained = SSDTrainer.test(cfg, trainer.model)["bbox"]["AP50"]
    assert trained >= untrained + 10, (untrained, trained)
