"""Prior sizes against the data (dssd_d2/prior_stats.py, tools/prior_stats.py): box sizes at the
input size, the boxes no prior matches, and fitted MIN_SIZES / MAX_SIZES, on synthetic boxes and
on BCCD (skipped without it)."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

import dssd_d2
from dssd_d2.prior_stats import (
    PriorGrid,
    best_prior_ious,
    box_size_table,
    suggest_prior_sizes,
    training_boxes,
    unmatched_fractions,
)
from dssd_d2.prior_stats import _level_best_ious

from helpers import CONFIGS, ROOT, make_cfg, tiny_ssd300_cfg, write_voc_dataset

pytestmark = pytest.mark.usefixtures("single_thread")


def squares(rng, count, side, image=300):
    x0, y0 = rng.uniform(0, image - side, (2, count))
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1)


def test_training_boxes_are_scaled_to_the_fixed_square():
    name = "prior_stats_test_boxes"
    xyxy = BoxMode.XYXY_ABS
    annotations = [
        {"bbox": [0, 0, 60, 30], "bbox_mode": xyxy, "category_id": 1},
        {"bbox": [10, 10, 10, 40], "bbox_mode": xyxy, "category_id": 0},  # no width: dropped
    ]
    record = {"file_name": "a.jpg", "image_id": 0, "height": 300, "width": 600}
    record["annotations"] = annotations
    DatasetCatalog.register(name, lambda: [record])
    MetadataCatalog.get(name).thing_classes = ["a", "b"]
    try:
        cfg = tiny_ssd300_cfg(num_classes=2)
        cfg.DATASETS.TRAIN = (name,)
        boxes, classes, names = training_boxes(cfg)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    np.testing.assert_allclose(boxes, [[0, 0, 30, 30]])
    assert classes.tolist() == [1] and names == ["a", "b"]


def test_synthetic_small_objects_get_smaller_priors():
    """16 px squares against SSD300's priors (smallest 30 px): none has a prior at IoU 0.5; the
    fitted sizes start below 16 * 1.5 and match most of them, without losing the 100 px ones."""
    rng = np.random.RandomState(0)
    boxes = np.concatenate([squares(rng, 100, 16), squares(rng, 100, 100)])
    classes = np.repeat([0, 1], 100)
    table = box_size_table(boxes, classes, ["small", "large"])
    assert [row["count"] for row in table] == [100, 100, 200]
    assert table[0]["p50"] == pytest.approx(16) and table[1]["max"] == pytest.approx(100)
    assert table[2]["ratio_p90"] == pytest.approx(1.0)

    grid = PriorGrid.from_config(tiny_ssd300_cfg(num_classes=2))
    assert len(grid.priors()) == 8732
    assert [level["sizes"][0] for level in grid.levels()] == [30, 60, 111, 162, 213, 264]
    best = best_prior_ious(boxes, grid.priors())
    before = unmatched_fractions(best, classes, 2, 0.5)
    assert before[0] == 1.0
    # the fit measures each box at its nearest prior centres only: the same best IoUs
    level_best_ious = _level_best_ious(grid, boxes)
    anchor_cfg = grid.cfg.MODEL.ANCHOR_GENERATOR
    levels = enumerate(zip(anchor_cfg.MIN_SIZES, anchor_cfg.MAX_SIZES))
    nearest = np.max([level_best_ious(k, lo, hi) for k, (lo, hi) in levels], axis=0)
    np.testing.assert_allclose(nearest, best, atol=1e-5)

    min_sizes, max_sizes = suggest_prior_sizes(grid, boxes, classes, 0.5)
    assert len(min_sizes) == len(max_sizes) == 6
    assert min_sizes[0] < 24 and all(a < b for a, b in zip(min_sizes, min_sizes[1:]))
    fitted = grid.with_sizes(min_sizes, max_sizes)
    after = unmatched_fractions(best_prior_ious(boxes, fitted.priors()), classes, 2, 0.5)
    assert after[0] < 0.5 and after[1] <= before[1]


def test_bccd_fitted_priors_match_more_platelets(bccd_root):
    cfg = make_cfg("BCCD/ssdlite320_mobilenet_v3_cpu.yaml")
    boxes, classes, names = training_boxes(cfg)
    platelets = names.index("Platelets")
    median = box_size_table(boxes, classes, names)[platelets]["p50"]
    grid = PriorGrid.from_config(cfg)
    min_sizes, max_sizes = suggest_prior_sizes(grid, boxes, classes, 0.5)
    assert min_sizes[0] < median < cfg.MODEL.ANCHOR_GENERATOR.MIN_SIZES[1]
    unmatched = [
        unmatched_fractions(best_prior_ious(boxes, g.priors()), classes, len(names), 0.5)
        for g in (grid, grid.with_sizes(min_sizes, max_sizes))
    ]
    assert unmatched[1][platelets] < unmatched[0][platelets]


@pytest.mark.slow
def test_tool_prints_overrides_that_load(tmp_path):
    write_voc_dataset(tmp_path, ["cat", "bus"], split="trainval", size=(120, 160))
    config = os.path.join(CONFIGS, "custom", "tiny_dsod256_cpu.yaml")
    opts = ["DATASETS.VOC_FOLDER", str(tmp_path), "MODEL.SSD.NUM_CLASSES", "2"]
    command = [sys.executable, os.path.join(ROOT, "tools", "prior_stats.py"), "--config-file"]
    run = subprocess.run(
        [*command, config, *opts], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert re.search(r"^\| cat \| \d+ \|", run.stdout, re.M)
    overrides = run.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r'(\S+) "(\[.*\])" (\S+) "(\[.*\])"', overrides)
    assert match, overrides
    try:
        cfg = dssd_d2.get_ssd_cfg(config, [*opts, *match.groups()])
    finally:
        DatasetCatalog.remove("custom_trainval")
        MetadataCatalog.remove("custom_trainval")
    assert len(cfg.MODEL.ANCHOR_GENERATOR.MIN_SIZES) == 6
