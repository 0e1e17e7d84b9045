"""Shared test helpers, the one module tests import from: config paths, CPU configs for
full-size models and their tiny variants, random images and small registered datasets.

Fixtures live in conftest.py; no test module imports another.
"""

import importlib.util
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from xml.etree import ElementTree as ET

import cv2
import numpy as np
import copy
import glob

import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

import dssd_d2
from dssd_d2.analysis import calibrate_batch_norms
from dssd_d2.deploy import count_batch_norms, fold_batch_norm
from dssd_d2.engine import SSDTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")

SSD300 = "PascalVOC-Detection/ssd300_vgg16.yaml"
SSD321 = "PascalVOC-Detection/ssd321_R_101.yaml"
SSD513 = "PascalVOC-Detection/ssd513_R_101.yaml"
DSSD321 = "PascalVOC-Detection/dssd321_R_101.yaml"
DSSD513 = "PascalVOC-Detection/dssd513_R_101.yaml"
DSOD300 = "PascalVOC-Detection/dsod300.yaml"


# ---------------------------------------------------------------- configs
def make_cfg(config_file=None, opts=()):
    """A CPU config: Detectron2 defaults + add_ssd_config + an optional file + KEY VALUE opts."""
    cfg = dssd_d2.get_ssd_cfg(os.path.join(CONFIGS, config_file) if config_file else "", opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


# SSD300's geometry (six maps, 8732 priors) with very narrow layers, as KEY VALUE overrides of
# configs/Base-SSD.yaml (also for the tools' command lines).
TINY_SSD300_OPTS = [
    "MODEL.VGG.CONV_DIMS",
    "[4, 8, 8, 16, 16]",
    "MODEL.VGG.FC_DIM",
    "16",
    "MODEL.SSD_EXTRAS.CONV_DIMS",
    "[[8, 16], [8, 16], [8, 16], [8, 16]]",
]


def tiny_ssd300_cfg(num_classes=3):
    """SSD300's geometry (six maps, 8732 priors) with very narrow layers, for CPU training tests."""
    cfg = make_cfg("Base-SSD.yaml", TINY_SSD300_OPTS)
    cfg.MODEL.SSD.NUM_CLASSES = num_classes
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def tiny_lazy_ssd300_cfg(dataset, output_dir, overrides=()):
    """The LazyConfig twin of tiny_ssd300_cfg (configs/PascalVOC-Detection/ssd300_vgg16.py
    with the same narrow layers), 3 classes, trained and tested on ``dataset``, on the CPU, with
    no evaluator; then ``overrides`` ("key=value")."""
    from detectron2.config import LazyConfig
    from detectron2.layers import ShapeSpec

    cfg = LazyConfig.load(os.path.join(CONFIGS, "PascalVOC-Detection/ssd300_vgg16.py"))
    tiny = dict(zip(TINY_SSD300_OPTS[::2], TINY_SSD300_OPTS[1::2]))
    cfg = LazyConfig.apply_overrides(
        cfg,
        [
            f"model.backbone.conv_dims={tiny['MODEL.VGG.CONV_DIMS']}",
            f"model.backbone.fc_dim={tiny['MODEL.VGG.FC_DIM']}",
            f"model.backbone.extras.conv_dims={tiny['MODEL.SSD_EXTRAS.CONV_DIMS']}",
            "model.num_classes=3",
            f"dataloader.train.dataset.names={dataset}",
            f"dataloader.test.dataset.names={dataset}",
            "dataloader.train.total_batch_size=2",
            "dataloader.train.num_workers=0",
            "dataloader.test.num_workers=0",
            "train.init_checkpoint=''",
            "train.device=cpu",
            f"train.output_dir={output_dir}",
            *overrides,
        ],
    )
    cfg.model.head.input_shape = [ShapeSpec(channels=16)] * 6
    cfg.dataloader.pop("evaluator")
    return cfg


def without_random_augmentation(cfg):
    """No photometric distortion, zoom-out, min-IoU crop or flip: the same image gives the same
    training input every time (runs compared step by step need it)."""
    cfg.INPUT.SSD_AUG.PHOTOMETRIC = False
    cfg.INPUT.SSD_AUG.EXPAND_RATIO = 1.0
    cfg.INPUT.SSD_AUG.MIN_IOU_CROP = False
    cfg.INPUT.RANDOM_FLIP = "none"
    return cfg


def tiny_resnet_cfg(config_file, num_classes=3):
    """A ResNet config's geometry (e.g. 321 input, all maps) with a narrow ResNet-50 and narrow
    layers: SSD321/513, DSSD321/513 and the RetinaNet-over-DSSD config."""
    cfg = make_cfg(config_file)
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 8
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 4
    cfg.MODEL.SSD_EXTRAS.CONV_DIMS = [[8, 32]] * len(cfg.MODEL.SSD_EXTRAS.CONV_DIMS)
    cfg.MODEL.SSD_HEAD.PREDICTION_MODULE_DIMS = [8, 32]
    cfg.MODEL.DSSD.OUT_CHANNELS = 16
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.SSD.NUM_CLASSES = num_classes
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def tiny_dsod_cfg(num_classes=3):
    """DSOD300 with one narrow layer per dense block, at half the input size."""
    cfg = make_cfg(DSOD300)
    cfg.MODEL.DSOD.STEM_WIDTH = 4
    cfg.MODEL.DSOD.BOTTLENECK_WIDTH = 8
    cfg.MODEL.DSOD.GROWTH_RATE = 4
    cfg.MODEL.DSOD.BLOCK_LAYERS = [1, 1, 1, 1]
    cfg.MODEL.DSOD.TRANSITION_CHANNELS = [0, 0, 0, 8]
    cfg.MODEL.DSOD.DENSE_HALF_CHANNELS = [8, 8, 4, 4, 4]
    cfg.MODEL.SSD.NUM_CLASSES = num_classes
    # Half of DSOD300's input: maps 19, 10, 5, 3, 2, 1 and SSD300's priors halved.
    cfg.INPUT.FIXED_SIZE = 150
    cfg.MODEL.ANCHOR_GENERATOR.MIN_SIZES = [15, 30, 55.5, 81, 106.5, 132]
    cfg.MODEL.ANCHOR_GENERATOR.MAX_SIZES = [30, 55.5, 81, 106.5, 132, 157.5]
    cfg.MODEL.ANCHOR_GENERATOR.STEPS = [8, 15, 30, 50, 75, 150]
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.ACCUMULATION_STEPS = 2
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.TEST.EVAL_PERIOD = 0
    return cfg


# ---------------------------------------------------------------- images and datasets
# One shrunk model per family, for the export and quantization comparisons.
TINY_FAMILIES = {
    "ssd300": tiny_ssd300_cfg,
    "dssd321": lambda: tiny_resnet_cfg(DSSD321),
    "dsod300": tiny_dsod_cfg,
}


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


def register_cells_dataset(name, folder, num_images=3, size=120):
    """Bright discs on a dark background with their boxes, like a tiny cell image set."""
    if name in DatasetCatalog.list():
        return
    rng = np.random.RandomState(0)
    dicts = []
    for i in range(num_images):
        image = np.full((size, size, 3), 30, np.uint8)
        annotations = []
        for _ in range(3):
            r = int(rng.randint(8, 25))
            cx, cy = (int(v) for v in rng.randint(r, size - r, 2))
            category = int(rng.randint(3))
            colour = [(200, 60, 60), (60, 200, 60), (60, 60, 200)][category]
            cv2.circle(image, (cx, cy), r, colour, -1)
            annotations.append(
                {
                    "bbox": [cx - r, cy - r, cx + r, cy + r],
                    "bbox_mode": BoxMode.XYXY_ABS,
                    "category_id": category,
                }
            )
        path = os.path.join(folder, f"{name}_{i}.png")
        cv2.imwrite(path, image)
        dicts.append(
            {
                "file_name": path,
                "image_id": i,
                "height": size,
                "width": size,
                "annotations": annotations,
            }
        )
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["red", "green", "blue"])


def random_objects(rng, num_images, num_classes, size=(60, 80)):
    """Per image, 1 to 4 (class, [x0, y0, x1, y1]) with integer corners inside an (h, w)
    image; every class occurs at least once."""
    h, w = size
    images = []
    for i in range(num_images):
        objects = []
        for j in range(int(rng.randint(1, 5))):
            x0, y0 = int(rng.randint(0, w - 20)), int(rng.randint(0, h - 20))
            box = [x0, y0, x0 + int(rng.randint(8, 20)), y0 + int(rng.randint(8, 20))]
            category = (i + j) % num_classes if i < num_classes else int(rng.randint(num_classes))
            objects.append((category, box))
        images.append(objects)
    return images


def write_coco_dataset(folder, category_ids, num_images=6, size=(60, 80)):
    """Random images and a COCO json whose categories have the given (arbitrary) ids; returns
    (json path, image folder)."""
    rng = np.random.RandomState(0)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    images, annotations = [], []
    for i, objects in enumerate(random_objects(rng, num_images, len(category_ids), size)):
        file_name = f"{i:04d}.png"
        cv2.imwrite(os.path.join(folder, "images", file_name), rng.randint(0, 256, (*size, 3)))
        images.append({"id": i + 1, "file_name": file_name, "height": size[0], "width": size[1]})
        for category, (x0, y0, x1, y1) in objects:
            box = [x0, y0, x1 - x0, y1 - y0]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "category_id": category_ids[category],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": cid, "name": f"class{cid}"} for cid in category_ids]
    json_file = os.path.join(folder, "instances.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_file, os.path.join(folder, "images")


def write_voc_dataset(folder, class_names, split="test", num_images=6, size=(60, 80)):
    """A Pascal VOC folder (Annotations/, ImageSets/Main/<split>.txt, JPEGImages/) of random
    images; the last object of the first image is marked difficult."""
    rng = np.random.RandomState(0)
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    ids = []
    for i, objects in enumerate(random_objects(rng, num_images, len(class_names), size)):
        fileid = f"{i:06d}"
        ids.append(fileid)
        cv2.imwrite(
            os.path.join(folder, "JPEGImages", f"{fileid}.jpg"), rng.randint(0, 256, (*size, 3))
        )
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = f"{fileid}.jpg"
        image_size = ET.SubElement(root, "size")
        for key, value in (("width", size[1]), ("height", size[0]), ("depth", 3)):
            ET.SubElement(image_size, key).text = str(value)
        for j, (category, (x0, y0, x1, y1)) in enumerate(objects):
            obj = ET.SubElement(root, "object")
            difficult = int(i == 0 and j == len(objects) - 1)
            fields = (
                ("name", class_names[category]),
                ("pose", "Unspecified"),
                ("truncated", 0),
                ("difficult", difficult),
            )
            for key, value in fields:
                ET.SubElement(obj, key).text = str(value)
            box = ET.SubElement(obj, "bndbox")
            # VOC corners are 1-based inclusive pixel indices.
            for key, value in zip(("xmin", "ymin", "xmax", "ymax"), (x0 + 1, y0 + 1, x1, y1)):
                ET.SubElement(box, key).text = str(value)
        ET.ElementTree(root).write(os.path.join(folder, "Annotations", f"{fileid}.xml"))
    with open(os.path.join(folder, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")


# ---------------------------------------------------------------- training
def train_and_track(cfg, output_dir, seed=0):
    """Train ``cfg`` with SSDTrainer from scratch; return the trainer and the weights that moved.
    Seeded, so that the batches, and which levels get matched priors, are the same every run."""
    seed_all_rng(seed)
    cfg.OUTPUT_DIR = str(output_dir)
    trainer = SSDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.iter == cfg.SOLVER.MAX_ITER
    changed = {k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])}
    return trainer, changed


def weights_norm(tensors):
    return float(sum(t.double().norm() ** 2 for t in tensors) ** 0.5)


def assert_same_training(init, got, want, rtol=1e-4, atol=1e-5):
    """``got`` and ``want`` (state dicts trained from ``init``) are the same weights within float
    tolerance, and their differences are float noise (1e-3) next to how far training moved
    ``want``. Running variances and batch counters are left out: naiveSyncBN's variance is the
    biased one and BatchNorm's (one process) the unbiased one. Returns the keys compared."""
    compared = [k for k in want if not k.endswith(("running_var", "num_batches_tracked"))]
    for key in compared:
        torch.testing.assert_close(got[key], want[key], rtol=rtol, atol=atol, msg=key)
    moved = weights_norm(want[k] - init[k] for k in compared if k in init)
    assert moved > 0, "training did not move the weights"
    assert weights_norm(got[k] - want[k] for k in compared) < 1e-3 * moved
    return compared


# ---- comparing models: folding, export and equivalence tests


@torch.no_grad()
def randomize_batch_norms(model: nn.Module, seed=0):
    """Running statistics and affine parameters far from identity, as after training."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return model


def assert_close(actual, expected, rtol=1e-4):
    """Equal up to float32 rounding relative to the tensor's magnitude."""
    scale = expected.abs().max().clamp(min=1e-6)
    assert torch.isfinite(expected).all()
    assert (actual - expected).abs().max() <= rtol * scale, (actual - expected).abs().max()


@torch.no_grad()
def network_outputs(model, size):
    """Backbone features and head predictions of ``model`` for a random ``size`` image."""
    images = model.preprocess_image([{"image": random_image(size, size)}])
    features = model.backbone(images.tensor)
    logits, deltas = model.head([features[f] for f in model.head_in_features])
    return [features[f] for f in model.head_in_features] + logits + deltas


def check_fold(model, size, expect_all_folded=True):
    model = randomize_batch_norms(model.eval())
    folded = fold_batch_norm(copy.deepcopy(model))
    assert count_batch_norms(folded) < count_batch_norms(model)
    if expect_all_folded:
        assert count_batch_norms(folded) == 0
    for actual, expected in zip(network_outputs(folded, size), network_outputs(model, size)):
        assert_close(actual, expected)
    return folded


def detector_from_cfg(cfg):
    """A shrunk model and an image, with the score threshold put in a wide gap between the
    class scores of that image, so that about twenty candidates pass with clear margins: random
    weights give near-uniform scores, and tiny float differences would otherwise decide which
    of many near-ties pass the threshold, the per-class top k and the per-image cut."""
    torch.manual_seed(0)
    size = cfg.INPUT.FIXED_SIZE
    model = build_model(cfg)
    calibrate_batch_norms(model, torch.stack([random_image(size, size, seed) for seed in (1, 2)]))
    image = random_image(size, size)
    with torch.no_grad():
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        logits, _ = model.head([features[f] for f in model.head_in_features])
    num_classes = model.num_classes
    logits = torch.cat([permute_to_N_HWA_K(x, num_classes + 1) for x in logits], dim=1)
    scores = logits.softmax(-1)[..., :num_classes].flatten().sort(descending=True).values
    gaps = scores[:-1] - scores[1:]
    cut = 20 + int(gaps[20:].gt(1e-4).nonzero()[0])
    model.test_score_thresh = float(scores[cut] + scores[cut + 1]) / 2
    return model, image


def assert_same_detections(actual, expected, score_tol=1e-4, box_tol=0.05):
    """Same detections up to float rounding, in any order among equal scores. Boxes within
    0.05 px: random weights predict large offsets, and exp() of a large log-size turns float
    rounding into about 0.01 px on a 200 px box."""
    assert actual.image_size == expected.image_size
    assert 0 < len(actual) == len(expected)
    unmatched = list(range(len(actual)))
    for box, score, label in zip(
        expected.pred_boxes.tensor, expected.scores, expected.pred_classes
    ):
        match = [
            j
            for j in unmatched
            if actual.pred_classes[j] == label
            and abs(actual.scores[j] - score) <= score_tol
            and (actual.pred_boxes.tensor[j] - box).abs().max() <= box_tol
        ]
        assert match, f"no exported detection matches {label}, {score}, {box}"
        unmatched.remove(match[0])


# ---------------------------------------------------------------- train_net.py in a subprocess
# Runs train_net.py's command line in a fresh interpreter. The random dataset is registered in
# the launcher (which writes its images) and again in every process that Detectron2's launch
# spawns for --num-gpus N, since spawned processes start from a fresh interpreter too.
LAUNCHER = """
import functools, sys
sys.path[:0] = [{root!r}, {tests!r}]
import helpers, train_net
helpers.register_random_dataset({name!r}, {folder!r}, **{kwargs!r})
worker = functools.partial(helpers.main_with_random_dataset, {name!r}, {folder!r}, {kwargs!r})
train_net.launch_from_args(worker, train_net.default_argument_parser().parse_args())
"""


def main_with_random_dataset(name, folder, dataset_kwargs, args):
    """train_net.main in one process, after registering the random dataset there (and
    installing the test hooks that start_train_net's ``hooks`` asked for)."""
    register_random_dataset(name, folder, **dataset_kwargs)
    install_test_hooks()
    import train_net

    return train_net.main(args)


# Environment variables through which a test asks the processes of a train_net.py run for:
# fake training clocks ("30,60": each step lasts 30 s in process 0, 60 s in process 1), and a
# SIGKILL of the launcher right after the checkpoint of an iteration is written.
STEP_SECONDS_ENV = "DSSD_D2_TEST_STEP_SECONDS"
KILL_AFTER_ENV = "DSSD_D2_TEST_KILL_AFTER_CHECKPOINT"


class FakeTime:
    """Stands for the ``time`` module of dssd_d2.engine.time_budget: each perf_counter read
    advances ``step_seconds``, so the training clock counts ``step_seconds`` per step."""

    def __init__(self, step_seconds):
        self.step_seconds = step_seconds
        self._reads = itertools.count()

    def perf_counter(self):
        return next(self._reads) * self.step_seconds


def fake_training_clock(step_seconds):
    """Make this process's training clock count ``step_seconds`` per step."""
    from dssd_d2.engine import time_budget

    time_budget.time = FakeTime(step_seconds)


class KillLauncherAfterCheckpoint(HookBase):
    """In the main process, SIGKILL the launcher (this process when it is the only one) right
    after the checkpoint of ``iteration`` is on disk: register it after the checkpointer. The
    main process then waits for the SIGINT that torch sends a dead launcher's workers, so that
    no later checkpoint is written."""

    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration and comm.is_main_process():
            launcher = os.getppid() if comm.get_world_size() > 1 else os.getpid()
            os.kill(launcher, signal.SIGKILL)
            time.sleep(600)


def install_test_hooks():
    """What STEP_SECONDS_ENV and KILL_AFTER_ENV ask for, in this training process."""
    if os.environ.get(STEP_SECONDS_ENV):
        seconds = [float(s) for s in os.environ[STEP_SECONDS_ENV].split(",")]
        fake_training_clock(seconds[comm.get_rank() % len(seconds)])
    if os.environ.get(KILL_AFTER_ENV):
        from dssd_d2.engine import AssembledTrainer

        build_hooks = AssembledTrainer.build_hooks
        kill = KillLauncherAfterCheckpoint(int(os.environ[KILL_AFTER_ENV]))
        AssembledTrainer.build_hooks = lambda trainer: build_hooks(trainer) + [kill]


def start_train_net(
    folder, log, *args, dataset="dssd_d2_test_random", hooks=None, **dataset_kwargs
):
    """Start ``train_net.py *args`` (one thread per process, output to ``log``) with the random
    dataset ``dataset`` (``register_random_dataset(dataset, folder, **dataset_kwargs)``);
    ``hooks``: {STEP_SECONDS_ENV or KILL_AFTER_ENV: value} for install_test_hooks."""
    code = LAUNCHER.format(
        root=ROOT,
        tests=os.path.join(ROOT, "tests"),
        name=dataset,
        folder=str(folder),
        kwargs=dataset_kwargs,
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", **(hooks or {}))
    command = [sys.executable, "-c", code, *args]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


# ---- runs that crash and resume (test_crashes, test_distributed)


def last_checkpoint(folder):
    with open(os.path.join(folder, "last_checkpoint")) as f:
        return f.read()


def assert_finite_checkpoint(path):
    weights = torch.load(path)["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def tiny_run_cfg(tmp_path, max_iter, checkpoint_period):
    name = register_random_dataset("dssd_d2_test_random", tmp_path)
    cfg = tiny_ssd300_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = ()
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 0
    # 0.01 diverges within 10 iterations on this tiny VGG, and 0.001 did once in 200 (CI, NaN
    # at iteration 6): these runs check checkpoints and resumption, not learning
    cfg.SOLVER.BASE_LR = 0.0001
    cfg.SOLVER.CHECKPOINT_PERIOD = checkpoint_period
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    return cfg


def _children(pid):
    """Ids of the processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # ended meanwhile
            continue
        if parent == pid:
            found.append(int(stat.split("/")[2]))
    return found


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # zombie: dead
    except OSError:
        return False


def kill_and_resume(tmp_path, cfg, *launch_args, kill_after, hooks=None, end=None):
    """Run train_net.py on ``cfg`` (plus ``launch_args``, e.g. --num-gpus 2), SIGKILL its
    launcher right after the checkpoint of iteration ``kill_after`` is written (a hook in the
    run: no race with a clock), check that no process it started outlives it, then run it
    again with --resume: it must end where an uninterrupted run would (after iteration ``end``,
    default SOLVER.MAX_ITER), with a finite, loadable final checkpoint. ``hooks``: more test
    hooks for both runs (start_train_net). Returns the resumed run's log."""
    cfg_file = str(tmp_path / "tiny.yaml")
    with open(cfg_file, "w") as f:
        f.write(cfg.dump())
    out = cfg.OUTPUT_DIR
    end = cfg.SOLVER.MAX_ITER if end is None else end

    killing = {**(hooks or {}), KILL_AFTER_ENV: str(kill_after)}
    with open(tmp_path / "first.log", "wb") as log:
        first = start_train_net(
            tmp_path, log, "--config-file", cfg_file, *launch_args, hooks=killing
        )
        children, deadline = set(), time.time() + 600  # only bounds a hang on a busy machine
        while first.poll() is None:
            children.update(_children(first.pid))
            assert time.time() < deadline, "the run was not killed within 600 s"
            time.sleep(0.05)
        assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()
    deadline = time.time() + 30
    while any(_alive(pid) for pid in children):  # workers must not train on as orphans
        assert time.time() < deadline, f"processes {children} outlived their launcher"
        time.sleep(0.05)
    assert last_checkpoint(out) == f"model_{kill_after:07d}.pth"
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    resume_from = kill_after + 1

    with open(tmp_path / "resumed.log", "wb") as log:
        resumed = start_train_net(
            tmp_path, log, "--config-file", cfg_file, "--resume", *launch_args, hooks=hooks
        )
        assert resumed.wait(timeout=900) == 0, (tmp_path / "resumed.log").read_text()
    resumed_log = (tmp_path / "resumed.log").read_text()
    assert f"Starting training from iteration {resume_from}" in resumed_log
    assert last_checkpoint(out) == "model_final.pth"
    final = torch.load(os.path.join(out, "model_final.pth"))
    assert final["iteration"] == end - 1  # what an uninterrupted run saves
    assert_finite_checkpoint(os.path.join(out, "model_final.pth"))

    model = build_model(cfg)
    DetectionCheckpointer(model).load(os.path.join(out, "model_final.pth"))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, final["model"][key], msg=key)
    return resumed_log


def load_tool(name):
    """A script of tools/ as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
