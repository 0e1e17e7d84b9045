"""The same-budget peers: Ultralytics YOLO (tools/peer_yolo.py) on our datasets and evaluator."""

import json
import os

import pytest

from detectron2.structures import BoxMode

from helpers import ROOT, load_tool, register_random_dataset


def test_yolo_labels_are_normalised_centres_and_drop_boxes_without_area(caplog):
    tool = load_tool("peer_yolo")
    record = {
        "file_name": "cells.jpg",
        "width": 200,
        "height": 100,
        "annotations": [
            {"bbox": [20, 10, 60, 50], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1},
            {"bbox": [150, 50, 100, 80], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
            {"bbox": [30, 30, 30, 60], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 2},
        ],
    }
    lines = tool.yolo_label_lines(record, ["a", "b", "c"])
    # The second box is clipped to the image (x 150..200, y 50..100); the third has no width.
    assert lines == ["1 0.200000 0.300000 0.200000 0.400000", "0 0.875000 0.750000 0.250000 0.500000"]
    assert "cells.jpg: c box [30, 30, 30, 60] has no area" in caplog.text


@pytest.mark.slow
def test_peer_yolo_trains_from_scratch_offline_and_scores_with_our_evaluator(tmp_path, monkeypatch):
    pytest.importorskip("ultralytics", reason="the optional 'peer' extra: pip install -e '.[peer]'")
    monkeypatch.chdir(tmp_path)  # Ultralytics may write beside the working directory
    tool = load_tool("peer_yolo")
    name = register_random_dataset("peer_yolo_random", tmp_path, num_images=6, size_range=(60, 90))
    out = tmp_path / "peer"
    results = tool.main(
        [
            "--config-file", os.path.join(ROOT, "configs", "BCCD", "tiny_dsod256_cpu.yaml"),
            "--minutes", "0.01", "--imgsz", "64", "--batch-size", "2", "--output-dir", str(out),
            "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)",
            "DATALOADER.NUM_WORKERS", "0",
        ]
    )  # fmt: skip
    assert set(results[name]["bbox"]) >= {"AP", "AP50", "AP75"}
    labels = sorted(os.listdir(out / "yolo_data" / "labels" / "train"))
    assert len(labels) == 6 and labels[0].startswith("000000_")
    record = json.loads((out / "run_record.json").read_text())
    assert record["tool"] == "peer_yolo.py" and record["model"] == "yolo11n"
    assert record["iterations"] >= 3  # at least one epoch of 6 images in batches of 2
    assert set(record["metrics"]) == {name}
    assert record["metrics"][name]["bbox/AP"] == results[name]["bbox"]["AP"]
    assert (out / "train" / "weights" / "last.pt").is_file()
