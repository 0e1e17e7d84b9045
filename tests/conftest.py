"""Shared test helpers: configs for full-size and shrunk models, random images with boxes."""

import os

import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances

import dssd_d2
from dssd_d2.engine import SSDTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")


def make_cfg(config_file=None, opts=()):
    """A CPU config: Detectron2 defaults + add_ssd_config + an optional file + KEY VALUE opts."""
    cfg = get_cfg()
    dssd_d2.add_ssd_config(cfg)
    if config_file:
        cfg.merge_from_file(os.path.join(CONFIGS, config_file))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def tiny_ssd300_cfg(num_classes=3):
    """SSD300's geometry (six maps, 8732 priors) with very narrow layers, for CPU training tests."""
    cfg = make_cfg("Base-SSD.yaml")
    cfg.MODEL.VGG.CONV_DIMS = [4, 8, 8, 16, 16]
    cfg.MODEL.VGG.FC_DIM = 16
    cfg.MODEL.SSD_EXTRAS.CONV_DIMS = [[8, 16], [8, 16], [8, 16], [8, 16]]
    cfg.MODEL.SSD.NUM_CLASSES = num_classes
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def random_image(h, w, seed=0):
    return torch.from_numpy(
        np.random.RandomState(seed).randint(0, 256, (3, h, w)).astype("float32")
    )


def training_input(size, boxes, classes, seed=0):
    """A model input dict for an image of ``size`` x ``size`` with the given XYXY boxes."""
    instances = Instances((size, size))
    instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return {"image": random_image(size, size, seed), "instances": instances}


def train_and_track(cfg, output_dir):
    """Train ``cfg`` with SSDTrainer from scratch; return the trainer and the weights that moved."""
    cfg.OUTPUT_DIR = str(output_dir)
    trainer = SSDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.iter == cfg.SOLVER.MAX_ITER
    changed = {k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])}
    return trainer, changed


@pytest.fixture
def bccd_root():
    root = os.path.join(SHARED_DATA, "BCCD")
    if not os.path.isdir(root):
        pytest.skip(f"BCCD not found at {root}")
    return root
