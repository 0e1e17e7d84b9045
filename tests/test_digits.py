"""The generated digits dataset: deterministic, boxes tight on the pasted digits, labels right,
and the quick-start config trains and evaluates on it end to end."""

import hashlib
import json
import os

import cv2
import numpy as np
import pytest
from sklearn.datasets import load_digits

from detectron2.data import DatasetCatalog, MetadataCatalog

from dssd_d2.data.digits import DIGITS_SPLITS, generate_digits_split, register_digits
from dssd_d2.engine import SSDTrainer

from helpers import make_cfg


def folder_digest(root):
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            digest.update(name.encode())
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def test_generation_is_deterministic_and_cached(tmp_path, small_digits):
    for root in (tmp_path / "a", tmp_path / "b"):
        for split in DIGITS_SPLITS:
            generate_digits_split(str(root), split)
    assert folder_digest(tmp_path / "a") == folder_digest(tmp_path / "b")
    assert not [f for f in os.listdir(tmp_path / "a") if f.startswith(".")]  # no staging left

    json_file = tmp_path / "a" / "val.json"
    mtime = os.path.getmtime(json_file)
    generate_digits_split(str(tmp_path / "a"), "val")  # cached: not written again
    assert os.path.getmtime(json_file) == mtime


def test_unwritable_cache_names_the_folder_and_the_fix(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError, match="a_file/digits.*DSSD_DIGITS_ROOT"):
        generate_digits_split(str(blocker / "digits"), "val")


def background_plane(image, boxes):
    """Least-squares plane a*x + b*y + c per channel through the pixels outside every box, and
    the largest residual there."""
    h, w = image.shape[:2]
    outside = np.ones((h, w), dtype=bool)
    for x, y, bw, bh in boxes:
        outside[y : y + bh, x : x + bw] = False
    ys, xs = np.mgrid[:h, :w]
    design = np.stack([xs, ys, np.ones_like(xs)], axis=-1).reshape(-1, 3).astype(np.float64)
    pixels = image.reshape(-1, 3).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design[outside.ravel()], pixels[outside.ravel()], rcond=None)
    plane = (design @ coef).reshape(h, w, 3)
    residual = np.abs(image - plane)[outside].max()
    return plane, residual


def test_boxes_are_tight_on_the_pasted_digits(tmp_path, small_digits):
    root = str(tmp_path)
    with open(generate_digits_split(root, "val")) as f:
        coco = json.load(f)
    sk = load_digits()
    templates = np.stack([sk.images[sk.target == d].mean(0) for d in range(10)]).reshape(10, -1)
    templates -= templates.mean(1, keepdims=True)
    correct = total = 0
    for record in coco["images"]:
        image = cv2.imread(os.path.join(root, "val", record["file_name"])).astype(np.float64)
        annotations = [a for a in coco["annotations"] if a["image_id"] == record["id"]]
        assert annotations, "every image has at least one digit"
        boxes = [[int(v) for v in a["bbox"]] for a in annotations]
        plane, residual = background_plane(image, boxes)
        assert residual <= 1.0, "something was drawn outside the boxes"
        for a, (x, y, w, h) in zip(annotations, boxes):
            ink = np.abs(image - plane)[y : y + h, x : x + w].max(axis=2)
            edges = [ink[0], ink[-1], ink[:, 0], ink[:, -1]]
            assert all(e.max() > 8 for e in edges), f"box {a['bbox']} is not tight on its digit"
            small = cv2.resize(ink, (8, 8), interpolation=cv2.INTER_AREA).ravel()
            small -= small.mean()
            correct += int(np.argmax(templates @ small) == a["category_id"] - 1)
            total += 1
    # A nearest-mean classifier on the crops recovers the labels: boxes and classes match.
    assert correct / total > 0.8, f"{correct}/{total} crops look like their label"


def test_registered_on_import_with_coco_metadata():
    for name in ("digits_train", "digits_val"):
        assert name in DatasetCatalog.list()
        metadata = MetadataCatalog.get(name)
        assert metadata.evaluator_type == "coco" and len(metadata.thing_classes) == 10


@pytest.mark.slow
def test_quickstart_config_trains_and_evaluates(tmp_path, small_digits):
    register_digits(str(tmp_path / "data"), prefix="tiny_digits")
    assert MetadataCatalog.get("tiny_digits_val").evaluator_type == "coco"
    cfg = make_cfg(
        "quickstart/ssd_digits.yaml",
        [
            "DATASETS.TRAIN", ("tiny_digits_train",),
            "DATASETS.TEST", ("tiny_digits_val",),
            "DATALOADER.NUM_WORKERS", 0,
            "SOLVER.IMS_PER_BATCH", 4,
            "SOLVER.MAX_ITER", 6,
            "SOLVER.WARMUP_ITERS", 2,
            "SOLVER.STEPS", (),
            "OUTPUT_DIR", str(tmp_path / "out"),
        ],
    )  # fmt: skip
    trainer = SSDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = trainer.test(cfg, trainer.model)
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75"}
    assert len(DatasetCatalog.get("tiny_digits_val")) == 24
    assert os.path.isfile(tmp_path / "out" / "metrics.json")
