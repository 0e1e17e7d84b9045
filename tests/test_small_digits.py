"""The generated small-digits set: deterministic, boxes tight on the digits' ink with the clutter
kept out of them, mostly COCO-small objects; and the SmallDigits configs (SSD, DSSD stage 1 and
stage 2, SSD trained on) run end to end, each from the previous one's checkpoint."""

import dataclasses
import json
import os

import cv2
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from detectron2.data import DatasetCatalog, MetadataCatalog

from dssd_d2.data.digits import _source_digits, generate_digits_split
from dssd_d2.data.small_digits import (
    SMALL_DIGITS_SPLITS,
    register_small_digits,
    render_small_digits_image,
)
from dssd_d2.engine import SSDTrainer

from helpers import make_cfg

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def small_splits(monkeypatch):
    """Both splits at 12 images."""
    for name, split in SMALL_DIGITS_SPLITS.items():
        monkeypatch.setitem(SMALL_DIGITS_SPLITS, name, dataclasses.replace(split, num_images=12))


def _generate(root, split="val"):
    json_file = generate_digits_split(
        str(root), split, SMALL_DIGITS_SPLITS, render_small_digits_image
    )
    with open(json_file) as f:
        return json.load(f)


def test_generation_is_deterministic_and_cached(tmp_path, small_splits):
    for root in (tmp_path / "a", tmp_path / "b"):
        _generate(root, "train")
        _generate(root, "val")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    assert files and files == sorted(
        p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*")
    )
    for name in files:
        if (tmp_path / "a" / name).is_file():
            assert (tmp_path / "a" / name).read_bytes() == (
                tmp_path / "b" / name
            ).read_bytes(), name
    mtime = os.path.getmtime(tmp_path / "a" / "val.json")
    _generate(tmp_path / "a")
    assert os.path.getmtime(tmp_path / "a" / "val.json") == mtime


def test_many_small_digits_per_image():
    split = SMALL_DIGITS_SPLITS["val"]
    ink, labels = _source_digits(split)
    rng = np.random.RandomState(0)
    areas = []
    for _ in range(40):
        image, annotations = render_small_digits_image(rng, ink, labels, split)
        assert image.shape == (320, 320, 3) and image.dtype == np.uint8
        assert split.min_digits <= len(annotations) <= split.max_digits
        areas += [w * h for (_, _, w, h), _ in annotations]
        assert all(h <= 48 for (_, _, _, h), _ in annotations)
    small = np.mean(np.array(areas) < 32**2)  # COCO's "small"
    assert 0.7 < small < 1.0, small  # most of AP, with some medium objects for AP-medium


def test_boxes_are_tight_on_the_ink_and_clutter_stays_out(tmp_path, small_splits, monkeypatch):
    """Without pixel noise, the 1 px ring around every box is plain background (no clutter and
    no other digit touches a box), each box edge crosses ink, the crops look like their labels,
    and there is clutter elsewhere."""
    split = SMALL_DIGITS_SPLITS["val"]
    monkeypatch.setitem(SMALL_DIGITS_SPLITS, "val", dataclasses.replace(split, noise_std=0.0))
    coco = _generate(tmp_path)
    sk = load_digits()
    templates = np.stack([sk.images[sk.target == d].mean(0) for d in range(10)]).reshape(10, -1)
    templates -= templates.mean(1, keepdims=True)
    correct = total = 0
    for record in coco["images"]:
        image = cv2.imread(str(tmp_path / "val" / record["file_name"])).astype(np.float64)
        outside = np.ones(image.shape[:2], dtype=bool)
        for a in (a for a in coco["annotations"] if a["image_id"] == record["id"]):
            x, y, w, h = (int(v) for v in a["bbox"])
            x0, y0 = max(x - 1, 0), max(y - 1, 0)
            patch = image[y0 : y + h + 1, x0 : x + w + 1]
            ring = np.ones(patch.shape[:2], dtype=bool)
            ring[y - y0 : y - y0 + h, x - x0 : x - x0 + w] = False
            # The gradient background is a plane: fit it on the ring, then compare.
            ys, xs = np.mgrid[: patch.shape[0], : patch.shape[1]]
            design = np.stack([xs, ys, np.ones_like(xs)], axis=-1).astype(np.float64)
            coef, *_ = np.linalg.lstsq(design[ring], patch[ring], rcond=None)
            plane = design @ coef
            assert np.abs(patch - plane)[ring].max() <= 2, f"something touches {a}"
            ink = np.abs(patch - plane)[y - y0 : y - y0 + h, x - x0 : x - x0 + w].max(axis=2)
            edges = [ink[0], ink[-1], ink[:, 0], ink[:, -1]]
            assert min(e.max() for e in edges) >= 15, f"box {a['bbox']} is not tight"
            small = cv2.resize(ink, (8, 8), interpolation=cv2.INTER_AREA).ravel()
            correct += int(np.argmax(templates @ (small - small.mean())) == a["category_id"] - 1)
            total += 1
            outside[max(y - 3, 0) : y + h + 3, max(x - 3, 0) : x + w + 3] = False
        # Clutter: ink far from the gradient background outside every box.
        rows = image.reshape(-1, 3)[outside.ravel()]
        assert (np.abs(rows - np.median(rows, axis=0)).max(axis=1) > 60).sum() > 20
    # A nearest-mean classifier on 8x8 crops (digits down to 6 px) mostly finds the label.
    assert correct / total > 0.7, f"{correct}/{total} crops look like their label"


def test_registered_on_import_with_coco_metadata():
    for name in ("small_digits_train", "small_digits_val"):
        assert name in DatasetCatalog.list()
        metadata = MetadataCatalog.get(name)
        assert metadata.evaluator_type == "coco" and len(metadata.thing_classes) == 10


@pytest.mark.slow
def test_ssd_dssd_stages_and_longer_ssd_configs_chain(tmp_path, small_splits):
    """The four SmallDigits configs (narrower), two iterations each on 12 images: SSD; DSSD
    stage 1 from its checkpoint (SSD frozen, predictors fresh); stage 2 from stage 1 (all
    BatchNorm frozen); the SSD trained on from its checkpoint. Each reports AP-small and -medium."""
    register_small_digits(str(tmp_path / "data"), prefix="tiny_small_digits")
    out = {}
    for name, weights_from in [
        ("ssd320_R_thin", None),
        ("dssd320_R_thin_stage1", "ssd320_R_thin"),
        ("dssd320_R_thin_stage2", "dssd320_R_thin_stage1"),
        ("ssd320_R_thin_more", "ssd320_R_thin"),
    ]:
        out[name] = str(tmp_path / name)
        cfg = make_cfg(
            f"SmallDigits/{name}.yaml",
            [
                "DATASETS.TRAIN", ("tiny_small_digits_train",),
                "DATASETS.TEST", ("tiny_small_digits_val",),
                "DATALOADER.NUM_WORKERS", 0,
                "SOLVER.IMS_PER_BATCH", 2,
                "SOLVER.MAX_ITER", 2,
                "SOLVER.WARMUP_ITERS", 1,
                "SOLVER.STEPS", (),
                "OUTPUT_DIR", out[name],
                # Narrower layers, same geometry (320 input, maps 40, 20, 10, 5), for speed.
                "MODEL.RESNETS.STEM_OUT_CHANNELS", 8,
                "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
                "MODEL.RESNETS.WIDTH_PER_GROUP", 4,
                "MODEL.SSD_EXTRAS.CONV_DIMS", [[8, 32], [8, 32]],
                "MODEL.SSD_HEAD.PREDICTION_MODULE_DIMS", [8, 32],
                "MODEL.DSSD.OUT_CHANNELS", 16,
            ],
        )  # fmt: skip
        if weights_from:
            cfg.MODEL.WEIGHTS = os.path.join(out[weights_from], "model_final.pth")
        trainer = SSDTrainer(cfg)
        trainer.resume_or_load(resume=False)
        new = set(trainer.checkpointer.new_weights)
        if name == "dssd320_R_thin_stage1":  # decoder and every predictor start fresh
            state = trainer.model.state_dict()
            assert new == {
                k
                for k in state
                if k.startswith(("backbone.deconv_", "head."))
                and not k.endswith("num_batches_tracked")
            }
            ssd = torch.load(os.path.join(out[weights_from], "model_final.pth"))["model"]
            for key, value in state.items():  # the rest is the SSD's, statistics included
                if key.startswith("backbone.bottom_up."):
                    assert torch.equal(value, ssd[key.replace("bottom_up.", "", 1)]), key
        elif weights_from:
            assert not new
        if name == "dssd320_R_thin_stage2":  # the official fine-tuning: every BatchNorm frozen
            assert not any(isinstance(m, nn.BatchNorm2d) for m in trainer.model.modules())
        trainer.train()
        results = trainer.test(cfg, trainer.model)
        assert {"AP", "AP50", "APs", "APm"} <= set(results["bbox"])
