"""SOLVER.MAX_TRAINING_MINUTES: training ends when its minutes are spent, like a run that reached
MAX_ITER there (final checkpoint), its LR schedule runs over the time, and a resumed run goes on
with what is left of the budget. The fake clock (conftest.py) makes every training step last 30
seconds."""

import json
import os

import pytest
import torch

from dssd_d2.engine import SSDTrainer, time_budget

from helpers import register_cells_dataset, tiny_dsod_cfg


def _budget_cfg(tmp_path, output, minutes, max_iter=100):
    name = "dssd_d2_test_time_budget"
    register_cells_dataset(name, str(tmp_path), num_images=2)
    cfg = tiny_dsod_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = ()
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR"
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.MAX_TRAINING_MINUTES = minutes
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.OUTPUT_DIR = str(tmp_path / output)
    return cfg


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


def test_training_stops_when_its_minutes_are_spent(tmp_path, fake_clock):
    cfg = _budget_cfg(tmp_path, "budget", minutes=2.0)  # four 30-second steps of 100
    trainer = SSDTrainer(cfg)
    trainer.train()
    assert trainer.iter == 4
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    rows = [row for row in _metrics(cfg.OUTPUT_DIR) if "lr" in row]
    assert [row["iteration"] for row in rows][-1] == 3
    assert rows[-1]["training_minutes"] == pytest.approx(2.0)
    # The console's eta counted down the budget (by the 96 iterations left it would be above 0).
    assert rows[-1]["eta_seconds"] == 0.0
    # The cosine schedule ran over the two minutes, not over MAX_ITER: the step after 1 minute
    # trained at half the rate, and the rate has reached its end.
    lrs = [lr for lr, _ in trainer.storage.history("lr").values()]
    assert lrs == pytest.approx([0.01, 0.01 * 0.8536, 0.005, 0.01 * 0.1464], rel=1e-3)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_max_iter_still_ends_a_run_within_its_minutes(tmp_path, fake_clock):
    cfg = _budget_cfg(tmp_path, "iterations", minutes=60.0, max_iter=3)
    trainer = SSDTrainer(cfg)
    trainer.train()
    assert trainer.iter == 3
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_resumed_run_gets_what_is_left_of_its_budget(tmp_path, fake_clock):
    cfg = _budget_cfg(tmp_path, "resume", minutes=2.0)
    SSDTrainer(cfg).train()  # checkpoints after iterations 1 (1 minute spent) and 3 (final)
    with open(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"), "w") as f:
        f.write(f"model_{1:07d}.pth")
    torch.manual_seed(1)
    resumed = SSDTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2 and resumed.clock.elapsed == pytest.approx(60.0)
    resumed.train()
    assert resumed.iter == 4  # two more 30-second steps


def test_non_positive_budget_is_named():
    with pytest.raises(ValueError, match="MAX_TRAINING_MINUTES"):
        time_budget.TrainingClock(-1.0)
