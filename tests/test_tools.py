"""The user-facing tools: demo on images/folders/globs, and the training-curve plot."""

import importlib.util
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from dssd_d2.visualization import plot_training_curves, read_metrics

from helpers import ROOT


@pytest.mark.slow
def test_demo_annotates_files_folders_and_globs(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.RandomState(0)
    for name, shape in [("a.png", (90, 140, 3)), ("b.jpg", (200, 60, 3))]:
        cv2.imwrite(str(images / name), rng.randint(0, 256, shape).astype(np.uint8))
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    command = [
        sys.executable, os.path.join(ROOT, "tools", "demo.py"),
        "--config-file", os.path.join(ROOT, "configs", "quickstart", "ssd_digits.yaml"),
        "--input", str(images), str(images / "a.png"), str(images / "*.jpg"),
        "--output", str(out), "--confidence-threshold", "0.0", "--fast",
        "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert sorted(os.listdir(out)) == ["a.png", "a_1.png", "b.png", "b_1.png"]
    # Drawn at each image's own shape, whatever the model's input square; small images are
    # enlarged so that the labels stay readable (shorter side 384 px).
    assert cv2.imread(str(out / "a.png")).shape == (384, 597, 3)
    assert cv2.imread(str(out / "b_1.png")).shape == (1280, 384, 3)


def test_demo_names_an_input_that_matches_nothing(tmp_path):
    spec = importlib.util.spec_from_file_location("demo", os.path.join(ROOT, "tools", "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    with pytest.raises(FileNotFoundError, match="nothing"):
        demo.expand_inputs([str(tmp_path / "nothing*.png")])


def test_training_curves_from_metrics_json(tmp_path):
    metrics = tmp_path / "metrics.json"
    lines = [
        json.dumps({"iteration": i, "total_loss": 10.0 / (i + 1), "loss_cls": 6.0 / (i + 1),
                    "lr": 0.001, "time": 0.3})
        for i in range(0, 100, 20)
    ]  # fmt: skip
    lines.append(json.dumps({"iteration": 99, "bbox/AP50": 42.0, "bbox/AP": 20.0}))
    metrics.write_text("\n".join(lines) + '\n{"iteration": 100, "total_lo')  # killed mid-write
    assert len(read_metrics(str(metrics))) == 6
    png = plot_training_curves(str(metrics), str(tmp_path / "curves.png"))
    image = cv2.imread(png)
    assert image is not None and image.shape[1] > image.shape[0]  # three panels side by side

    metrics.write_text(json.dumps({"iteration": 0, "bbox/AP50": 1.0}) + "\n")
    with pytest.raises(ValueError, match="no loss"):
        plot_training_curves(str(metrics), str(tmp_path / "none.png"))


@pytest.mark.slow
def test_model_stats_takes_overrides_after_several_config_files():
    def rows(*extra):
        command = [
            sys.executable, os.path.join(ROOT, "tools", "model_stats.py"), "--no-flops",
            "--config-file", os.path.join(ROOT, "configs", "quickstart", "ssd_digits.yaml"),
            os.path.join(ROOT, "configs", "quickstart", "tiny_dsod_digits.yaml"), *extra,
        ]  # fmt: skip
        run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        cells = [line.split("|") for line in run.stdout.splitlines() if "quickstart" in line]
        return [(c[1].strip().split("/")[-1], float(c[2])) for c in cells]

    default, three_classes = rows(), rows("MODEL.SSD.NUM_CLASSES", "3")
    assert [name for name, _ in three_classes] == ["ssd_digits.yaml", "tiny_dsod_digits.yaml"]
    # 3 classes instead of 10 shrink each model's class predictors.
    assert all(p < d for (_, p), (_, d) in zip(three_classes, default)), (three_classes, default)
