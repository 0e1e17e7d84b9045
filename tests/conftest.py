"""Shared test helpers: configs for full-size and shrunk models, random images with boxes."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

import dssd_d2
from dssd_d2.engine import SSDTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")


def make_cfg(config_file=None, opts=()):
    """A CPU config: Detectron2 defaults + add_ssd_config + an optional file + KEY VALUE opts."""
    cfg = dssd_d2.get_ssd_cfg(os.path.join(CONFIGS, config_file) if config_file else "", opts)
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


def register_random_dataset(
    name,
    folder,
    *,
    num_images=4,
    size_range=(80, 200),
    boxes_per_image=3,
    min_box=10,
    empty_last=False,
):
    """Register random images of varied sizes with random boxes (classes "a", "b", "c"), once;
    with ``empty_last`` the last image has no boxes."""
    if name in DatasetCatalog.list():
        return name
    rng = np.random.RandomState(0)
    dicts = []
    for i in range(num_images):
        h, w = int(rng.randint(*size_range)), int(rng.randint(*size_range))
        path = os.path.join(str(folder), f"{name}_{i}.png")
        pixels = rng.randint(0, 256, (h, w, 3)).astype(np.uint8)
        if not os.path.exists(path):  # processes that register it again read the same files
            cv2.imwrite(path, pixels)
        annotations = []
        for _ in range(0 if empty_last and i == num_images - 1 else boxes_per_image):
            x0, y0 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
            x1, y1 = x0 + rng.uniform(min_box, w / 2), y0 + rng.uniform(min_box, h / 2)
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
    return name


# ---------------------------------------------------------------- train_net.py in a subprocess
# Runs train_net.py's command line in a fresh interpreter. The random dataset is registered in
# the launcher (which writes its images) and again in every process that Detectron2's launch
# spawns for --num-gpus N, since spawned processes start from a fresh interpreter too.
LAUNCHER = """
import functools, sys
sys.path[:0] = [{root!r}, {tests!r}]
import conftest, train_net
conftest.register_random_dataset({name!r}, {folder!r}, **{kwargs!r})
worker = functools.partial(conftest.main_with_random_dataset, {name!r}, {folder!r}, {kwargs!r})
train_net.launch_from_args(worker, train_net.default_argument_parser().parse_args())
"""


def main_with_random_dataset(name, folder, dataset_kwargs, args):
    """train_net.main in one process, after registering the random dataset there."""
    register_random_dataset(name, folder, **dataset_kwargs)
    import train_net

    return train_net.main(args)


def start_train_net(folder, log, *args, dataset="dssd_d2_test_random", **dataset_kwargs):
    """Start ``train_net.py *args`` (one thread per process, output to ``log``) with the random
    dataset ``dataset`` (``register_random_dataset(dataset, folder, **dataset_kwargs)``)."""
    code = LAUNCHER.format(
        root=ROOT,
        tests=os.path.join(ROOT, "tests"),
        name=dataset,
        folder=str(folder),
        kwargs=dataset_kwargs,
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-c", code, *args]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


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


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of small models: they run fastest on one thread, and on
    a busy 2-core machine two OpenMP threads wait on each other (a 0.1 s training step can take
    20 s). Use with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def bccd_root():
    root = os.path.join(SHARED_DATA, "BCCD")
    if not os.path.isdir(root):
        pytest.skip(f"BCCD not found at {root}")
    return root
