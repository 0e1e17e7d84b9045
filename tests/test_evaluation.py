"""Every dataset we register evaluates its own ground truth, given as predictions with score 1,
at AP 100 for every class, through the evaluator our trainer builds for it: a category-id
mapping that pairs a class with another's ground truth cannot pass unnoticed."""

import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances, register_pascal_voc
from detectron2.structures import Boxes, BoxMode, Instances

from dssd_d2.data.builtin import register_bccd
from dssd_d2.data.digits import register_digits
from dssd_d2.engine import SSDTrainer

from helpers import make_cfg, write_coco_dataset, write_voc_dataset


def evaluate_ground_truth(dataset_name, output_dir, shrink=0.0):
    """SSDTrainer's evaluator for ``dataset_name`` fed each image's annotations as detections,
    each box first shrunk by ``shrink`` of its width and height on every side."""
    cfg = make_cfg()
    cfg.OUTPUT_DIR = str(output_dir)
    records = DatasetCatalog.get(dataset_name)
    evaluator = SSDTrainer.build_evaluator(cfg, dataset_name)
    evaluator.reset()
    for record in records:
        annotations = record["annotations"]
        instances = Instances((record["height"], record["width"]))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        instances.pred_boxes = Boxes(boxes + shrink * size * torch.tensor([1, 1, -1, -1]))
        instances.scores = torch.ones(len(annotations))
        instances.pred_classes = torch.tensor([a["category_id"] for a in annotations])
        evaluator.process([record], [{"instances": instances}])
    return evaluator.evaluate()["bbox"]


def assert_every_class_at_100(results, dataset_name):
    classes = MetadataCatalog.get(dataset_name).thing_classes
    per_class = {
        name: results.get(f"AP-{name}", results.get(f"AP50-{name}")) for name in classes
    }  # COCO reports AP-<class>, our VOC evaluator AP50-<class>
    assert per_class == {name: pytest.approx(100.0) for name in classes}
    assert {k: results[k] for k in ("AP", "AP50", "AP75")} == pytest.approx(
        {"AP": 100.0, "AP50": 100.0, "AP75": 100.0}
    )


@pytest.mark.slow
def test_builtin_digits(datasets_root, tmp_path):
    assert_every_class_at_100(evaluate_ground_truth("digits_val", tmp_path), "digits_val")


def test_digits_with_a_custom_prefix(tmp_path, small_digits):
    register_digits(str(tmp_path / "data"), prefix="ap100_digits")
    results = evaluate_ground_truth("ap100_digits_val", tmp_path / "out")
    assert_every_class_at_100(results, "ap100_digits_val")


@pytest.mark.slow
def test_bccd(bccd_root, tmp_path):
    register_bccd(bccd_root)  # registered on import too; the fixture skips without the data
    assert_every_class_at_100(evaluate_ground_truth("bccd_test", tmp_path), "bccd_test")


def test_coco_json_with_arbitrary_category_ids(tmp_path):
    json_file, image_root = write_coco_dataset(tmp_path, category_ids=[7, 3, 12])
    register_coco_instances("ap100_coco", {}, json_file, image_root)
    results = evaluate_ground_truth("ap100_coco", tmp_path / "out")
    assert_every_class_at_100(results, "ap100_coco")


def test_voc_folder(tmp_path):
    classes = ["cat", "bus", "ant"]
    write_voc_dataset(tmp_path, classes, split="test")
    register_pascal_voc("ap100_voc", str(tmp_path), "test", 2007, classes)
    MetadataCatalog.get("ap100_voc").evaluator_type = "pascal_voc"  # as docs/custom_data.md says
    results = evaluate_ground_truth("ap100_voc", tmp_path / "out")
    assert_every_class_at_100(results, "ap100_voc")


def test_voc_per_class_ap75_sees_loose_boxes(tmp_path):
    """Boxes shrunk by 10% of their size on each side (IoU 0.64): every class at AP50 100 and
    AP75 0, per class as in the means."""
    classes = ["cat", "bus"]
    write_voc_dataset(tmp_path, classes, split="test")
    register_pascal_voc("loose_voc", str(tmp_path), "test", 2007, classes)
    MetadataCatalog.get("loose_voc").evaluator_type = "pascal_voc"
    results = evaluate_ground_truth("loose_voc", tmp_path / "out", shrink=0.1)
    for name in classes:
        assert results[f"AP50-{name}"] == pytest.approx(100.0)
        assert results[f"AP75-{name}"] == pytest.approx(0.0)
    assert (results["AP50"], results["AP75"]) == pytest.approx((100.0, 0.0))
