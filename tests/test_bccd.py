"""Real data: BCCD (../shared/data/BCCD) through the builtin registration, mapper, trainer and
Detectron2's Pascal VOC evaluator. Skipped when the data is absent."""

import logging

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog

from dssd_d2.data import SSDDatasetMapper
from dssd_d2.data.builtin import BCCD_CLASSES, load_bccd_instances, register_bccd
from dssd_d2.engine import SSDTrainer, build_evaluator
from dssd_d2.evaluation import PascalVOCDetectionEvaluatorWithClassAP

from helpers import tiny_ssd300_cfg


def test_bccd_splits_register_with_voc_metadata(bccd_root):
    register_bccd(bccd_root)
    sizes = {split: len(DatasetCatalog.get(f"bccd_{split}")) for split in ("train", "val", "test")}
    assert sizes == {"train": 205, "val": 87, "test": 72}
    meta = MetadataCatalog.get("bccd_test")
    assert meta.thing_classes == list(BCCD_CLASSES) and meta.year == 2007
    evaluator = build_evaluator(tiny_ssd300_cfg(), "bccd_test")
    assert isinstance(evaluator, PascalVOCDetectionEvaluatorWithClassAP)


def test_bccd_point_annotations_are_dropped_with_a_warning(bccd_root, caplog):
    with caplog.at_level(logging.WARNING):
        dicts = load_bccd_instances(bccd_root, "trainval")
    # BloodImage_00338 and _00343 each have one RBC annotated as a point.
    assert caplog.text.count("zero-extent") == 2
    assert "BloodImage_00338.jpg" in caplog.text and "BloodImage_00343.jpg" in caplog.text
    for d in dicts:
        for a in d["annotations"]:
            x0, y0, x1, y1 = a["bbox"]
            assert x1 - x0 > 1 and y1 - y0 > 1


def test_mapper_on_every_bccd_image_gives_valid_boxes(bccd_root):
    register_bccd(bccd_root)
    cfg = tiny_ssd300_cfg()
    mapper = SSDDatasetMapper(cfg, is_train=True)
    dicts = DatasetCatalog.get("bccd_trainval") + DatasetCatalog.get("bccd_test")
    for d in dicts:
        out = mapper(d)
        boxes = out["instances"].gt_boxes.tensor
        assert out["image"].shape == (3, 300, 300)
        assert torch.isfinite(boxes).all() and (boxes >= 0).all() and (boxes <= 300).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) > 0).all()
        assert (out["instances"].gt_classes < 3).all()


@pytest.mark.slow
def test_tiny_ssd_trains_and_evaluates_on_bccd(bccd_root, tmp_path):
    register_bccd(bccd_root)
    cfg = tiny_ssd300_cfg(num_classes=3)
    cfg.DATASETS.TRAIN = ("bccd_train",)
    cfg.DATASETS.TEST = ("bccd_test",)
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.SOLVER.MAX_ITER = 6
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.BASE_LR = 0.001  # the tiny VGG has no BatchNorm: 0.01 without warm-up can reach NaN
    cfg.OUTPUT_DIR = str(tmp_path)
    trainer = SSDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = SSDTrainer.test(cfg, trainer.model)["bbox"]
    assert {"AP", "AP50", "AP75", "AP50-RBC", "AP50-WBC", "AP50-Platelets"} <= set(results)
    assert all(np.isfinite(v) for v in results.values())
