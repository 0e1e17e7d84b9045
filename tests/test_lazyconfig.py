"""The LazyConfig (Python) configs build the same models as their YAML twins, and a tiny
variant trains and evaluates through tools/lazyconfig_train_net.py's flow."""

import json
import os

import pytest
import torch
from fvcore.common.param_scheduler import CosineParamScheduler

from detectron2.config import LazyConfig, LazyCall as L, instantiate
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model

from dssd_d2.analysis import default_boxes
from dssd_d2.engine import LazyConfigTrainer

from helpers import CONFIGS, make_cfg, register_random_dataset, tiny_lazy_ssd300_cfg

pytestmark = pytest.mark.usefixtures("single_thread")

TWINS = {
    "PascalVOC-Detection/ssd300_vgg16.py": "PascalVOC-Detection/ssd300_vgg16.yaml",
    "PascalVOC-Detection/dssd321_R_101.py": "PascalVOC-Detection/dssd321_R_101.yaml",
    "PascalVOC-Detection/dsod300.py": "PascalVOC-Detection/dsod300.yaml",
}


def load_lazy(name):
    return LazyConfig.load(os.path.join(CONFIGS, name))


@pytest.mark.parametrize("lazy_file", sorted(TWINS))
def test_lazy_config_builds_its_yaml_twin(lazy_file):
    yaml_cfg = make_cfg(TWINS[lazy_file])
    expected = build_model(yaml_cfg)
    lazy_cfg = load_lazy(lazy_file)
    actual = instantiate(lazy_cfg.model)
    size = yaml_cfg.INPUT.FIXED_SIZE
    assert lazy_cfg.dataloader.train.mapper.augmentations.image_size == size

    def count(model):
        return sum(p.numel() for p in model.parameters())

    assert count(actual) == count(expected)
    assert default_boxes(actual, size) == default_boxes(expected, size)
    # Beyond the counts: the same modules and tensors, so checkpoints load either way.
    shapes = {k: v.shape for k, v in expected.state_dict().items()}
    assert {k: v.shape for k, v in actual.state_dict().items()} == shapes
    assert [type(m) for m in actual.modules()] == [type(m) for m in expected.modules()]
    assert actual.input_format == yaml_cfg.INPUT.FORMAT
    assert actual.pixel_mean.flatten().tolist() == pytest.approx(yaml_cfg.MODEL.PIXEL_MEAN)


def tiny_lazy_cfg(tmp_path, overrides=()):
    """The tiny SSD300 of the YAML tests (same keys), 3 classes, on a random dataset."""
    name = register_random_dataset("dssd_d2_test_lazy", tmp_path, num_images=4)
    cfg = tiny_lazy_ssd300_cfg(name, tmp_path / "out", overrides)
    cfg.dataloader.evaluator = L(COCOEvaluator)(
        dataset_name=name, tasks=("bbox",), output_dir=str(tmp_path / "eval")
    )
    return cfg


def train_lazy(cfg, record=False):
    """Train ``cfg`` as tools/lazyconfig_train_net.py does (with its run record if asked)."""
    trainer = LazyConfigTrainer(cfg)
    if record:
        trainer.register_hooks([trainer.run_record_hook("tiny.py", ["train.max_iter=2"])])
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


def test_tiny_ssd300_trains_and_evaluates_through_the_lazy_flow(tmp_path):
    cfg = tiny_lazy_cfg(tmp_path, ["train.max_iter=2", "train.accumulation_steps=2"])
    trainer = train_lazy(cfg, record=True)
    assert type(trainer._trainer).__name__ == "GradientAccumulationTrainer"
    assert trainer.iter == 2
    losses = [value for value, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 2 and torch.isfinite(torch.tensor(losses)).all()
    assert trainer.storage.history("data/skipped_images").latest() == 0
    assert "bbox/AP50" in trainer.storage.latest()  # the EvalHook ran the test after training
    assert os.path.isfile(tmp_path / "out" / "model_final.pth")
    assert os.path.isfile(tmp_path / "out" / "metrics.json")
    # The run record of train_net.py, for this tool, config and overrides, with the final AP.
    with open(tmp_path / "out" / "run_record.json") as f:
        record = json.load(f)
    assert record["tool"] == "lazyconfig_train_net.py" and record["config_file"] == "tiny.py"
    assert record["overrides"] == ["train.max_iter=2"] and record["iterations"] == 2
    assert record["settings"]["accumulation_steps"] == 2 and record["model"] == "VGGSSD"
    assert record["metrics"]["dssd_d2_test_lazy"]["bbox/AP50"] == pytest.approx(
        trainer.storage.latest()["bbox/AP50"][0]
    )
    results = LazyConfigTrainer.test(cfg, trainer.model)
    assert {"AP", "AP50", "AP75"} <= set(results["bbox"])


def test_lazy_flow_trains_for_its_minutes(tmp_path, fake_clock):
    cfg = tiny_lazy_cfg(tmp_path, ["train.max_iter=100", "train.max_training_minutes=2.0"])
    cfg.lr_multiplier = L(CosineParamScheduler)(start_value=1.0, end_value=0.0)
    cfg.dataloader.pop("evaluator")
    trainer = train_lazy(cfg)
    assert trainer.iter == 4  # four 30-second steps of the 100, then the final checkpoint
    # The cosine ran over the two minutes, not over train.max_iter, and reached its end.
    lrs = [lr for lr, _ in trainer.storage.history("lr").values()]
    assert lrs == pytest.approx([cfg.optimizer.lr * f for f in (1, 0.8536, 0.5, 0.1464)], rel=1e-3)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert trainer.storage.history("eta_seconds").latest() == 0.0  # the budget's eta
    final = torch.load(tmp_path / "out" / "model_final.pth", weights_only=False)
    assert final["iteration"] == 3 and final["trainer"]["hooks"]["TrainingClock"] == {
        "elapsed": 120.0
    }
