"""Crashes never lose work: checkpoints are atomic and never hold NaN weights, a NaN loss stops
the run with a clear message, and a run killed with SIGKILL resumes to the same end."""

import os

import pytest
import torch
from torch import nn

from detectron2.utils.events import get_event_storage

from dssd_d2.engine import SSDTrainer
from dssd_d2.engine import checkpoint as checkpoint_module
from dssd_d2.engine.checkpoint import AtomicCheckpointer

from helpers import assert_finite_checkpoint, kill_and_resume, last_checkpoint, tiny_run_cfg


# ---------------------------------------------------------------- atomic checkpoints
def test_failed_save_leaves_the_previous_checkpoint_and_tag(tmp_path, monkeypatch):
    model = nn.Linear(3, 2)
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_a")
    weight = model.weight.detach().clone()

    def dies_mid_write(data, f):  # what a kill during torch.save leaves: a partial file
        f.write(b"partial")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_module.torch, "save", dies_mid_write)
        for name in ("model_b", "model_a"):  # a new file, and one that already exists
            with pytest.raises(KeyboardInterrupt):
                checkpointer.save(name)
    assert not os.path.exists(tmp_path / "model_b.pth")
    assert last_checkpoint(tmp_path) == "model_a.pth"
    torch.testing.assert_close(torch.load(tmp_path / "model_a.pth")["model"]["weight"], weight)

    # Dying while retargeting last_checkpoint (its fsync is the second of a save) keeps the old
    # tag, which still names a complete checkpoint.
    real_fsync, calls = os.fsync, []

    def fsync_dies_second_time(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(checkpoint_module.os, "fsync", fsync_dies_second_time)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_c")
    assert os.path.isfile(tmp_path / "model_c.pth")
    assert last_checkpoint(tmp_path) == "model_a.pth"


def test_non_finite_weights_are_never_saved(tmp_path):
    model = nn.Linear(3, 2)
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_good")
    with torch.no_grad():
        model.bias[1] = float("inf")
    with pytest.raises(FloatingPointError, match="weight bias has NaN or infinite.*model_good"):
        checkpointer.save("model_bad")
    assert not os.path.exists(tmp_path / "model_bad.pth")
    assert last_checkpoint(tmp_path) == "model_good.pth"


# ---------------------------------------------------------------- NaN during training


def test_nan_loss_stops_the_run_and_names_the_last_good_checkpoint(tmp_path):
    cfg = tiny_run_cfg(tmp_path, max_iter=6, checkpoint_period=2)
    trainer = SSDTrainer(cfg)
    forward = trainer.model.forward

    def nan_at_iteration_3(batched_inputs):
        losses = forward(batched_inputs)
        if get_event_storage().iter == 3:
            losses["loss_cls"] = losses["loss_cls"] * float("nan")
        return losses

    trainer.model.forward = nan_at_iteration_3
    with pytest.raises(FloatingPointError) as error:
        trainer.train()
    message = str(error.value)
    assert "Loss became infinite or NaN at iteration=3" in message
    assert f"last good checkpoint is {cfg.OUTPUT_DIR}/model_0000001.pth" in message
    assert "--resume" in message
    assert last_checkpoint(cfg.OUTPUT_DIR) == "model_0000001.pth"
    assert sorted(f for f in os.listdir(cfg.OUTPUT_DIR) if f.endswith(".pth")) == [
        "model_0000001.pth"
    ]
    assert_finite_checkpoint(os.path.join(cfg.OUTPUT_DIR, "model_0000001.pth"))


def test_weights_that_blow_up_are_not_checkpointed(tmp_path):
    """An optimizer step can turn finite losses into NaN weights; the checkpoint due right after
    is refused, so the previous one stays the last."""
    cfg = tiny_run_cfg(tmp_path, max_iter=6, checkpoint_period=2)
    trainer = SSDTrainer(cfg)
    run_step = trainer._trainer.run_step

    def step_then_blow_up():
        run_step()  # forward, backward and optimizer step
        if trainer.iter == 3:
            with torch.no_grad():
                trainer.model.head.cls_score[0].weight.fill_(float("nan"))

    trainer._trainer.run_step = step_then_blow_up
    with pytest.raises(FloatingPointError, match="head.cls_score.0.weight has NaN"):
        trainer.train()
    assert last_checkpoint(cfg.OUTPUT_DIR) == "model_0000001.pth"
    assert not os.path.exists(os.path.join(cfg.OUTPUT_DIR, "model_0000003.pth"))


# ---------------------------------------------------------------- SIGKILL and --resume


@pytest.mark.slow
def test_run_killed_with_sigkill_resumes_to_the_same_end(tmp_path):
    # Killed right after the checkpoint of iteration 7 (of 3, 7 and the final one).
    cfg = tiny_run_cfg(tmp_path, max_iter=12, checkpoint_period=4)
    kill_and_resume(tmp_path, cfg, kill_after=7)
