"""A shrunk SSD300 trains with Detectron2's trainer and evaluates with its COCO evaluator."""

import os

import numpy as np
import torch


from dssd_d2.engine import SSDPredictor, SSDTrainer

from helpers import register_random_dataset, tiny_ssd300_cfg, train_and_track


def test_train_and_evaluate_tiny_ssd(tmp_path):
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

    results = SSDTrainer.test(cfg, trainer.model)
    assert "bbox" in results and "AP" in results["bbox"]

    cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    predictor = SSDPredictor(cfg)
    image = np.random.RandomState(1).randint(0, 256, (90, 170, 3)).astype(np.uint8)
    instances = predictor(image)["instances"]
    assert instances.image_size == (90, 170)
    assert len(instances) <= cfg.TEST.DETECTIONS_PER_IMAGE
    if len(instances):
        boxes = instances.pred_boxes.tensor
        assert (boxes[:, 2] <= 170).all() and (boxes[:, 3] <= 90).all() and (boxes >= 0).all()
        assert (instances.scores > cfg.MODEL.SSD.SCORE_THRESH_TEST).all()
