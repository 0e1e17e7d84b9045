"""A shrunk SSD300 trains with Detectron2's trainer and evaluates with its COCO evaluator."""

import os

import cv2
import numpy as np
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from dssd_d2.engine import SSDPredictor, SSDTrainer

from conftest import tiny_ssd300_cfg, train_and_track


def _register_random_dataset(name, folder, num_images=4):
    """Random images of varied sizes with random boxes; the last image has no boxes."""
    rng = np.random.RandomState(0)
    dicts = []
    for i in range(num_images):
        h, w = int(rng.randint(80, 200)), int(rng.randint(80, 200))
        path = os.path.join(folder, f"{name}_{i}.png")
        cv2.imwrite(path, rng.randint(0, 256, (h, w, 3)).astype(np.uint8))
        annotations = []
        for _ in range(0 if i == num_images - 1 else 3):
            x0, y0 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
            x1, y1 = x0 + rng.uniform(10, w / 2), y0 + rng.uniform(10, h / 2)
            annotations.append(
                {
                    "bbox": [x0, y0, x1, y1],
                    "bbox_mode": BoxMode.XYXY_ABS,
                    "category_id": int(rng.randint(3)),
                }
            )
        dicts.append(
            {"file_name": path, "image_id": i, "height": h, "width": w, "annotations": annotations}
        )
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["a", "b", "c"])
    return dicts


def test_train_and_evaluate_tiny_ssd(tmp_path):
    name = "dssd_d2_test_random"
    if name not in DatasetCatalog.list():
        _register_random_dataset(name, str(tmp_path))
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
