"""Crashes never lose work: checkpoints are atomic and never hold NaN weights, a NaN loss stops
the run with a clear message, and a run killed with SIGKILL resumes to the same end."""

import glob
import os
import signal
import time

import pytest
import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import get_event_storage

from dssd_d2.engine import SSDTrainer
from dssd_d2.engine import checkpoint as checkpoint_module
from dssd_d2.engine.checkpoint import AtomicCheckpointer

from helpers import register_random_dataset, start_train_net, tiny_ssd300_cfg


def _last_checkpoint(folder):
    with open(os.path.join(folder, "last_checkpoint")) as f:
        return f.read()


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
    assert _last_checkpoint(tmp_path) == "model_a.pth"
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
    assert _last_checkpoint(tmp_path) == "model_a.pth"


def test_non_finite_weights_are_never_saved(tmp_path):
    model = nn.Linear(3, 2)
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_good")
    with torch.no_grad():
        model.bias[1] = float("inf")
    with pytest.raises(FloatingPointError, match="weight bias has NaN or infinite.*model_good"):
        checkpointer.save("model_bad")
    assert not os.path.exists(tmp_path / "model_bad.pth")
    assert _last_checkpoint(tmp_path) == "model_good.pth"


# ---------------------------------------------------------------- NaN during training
def _tiny_run_cfg(tmp_path, max_iter, checkpoint_period):
    name = register_random_dataset("dssd_d2_test_random", tmp_path)
    cfg = tiny_ssd300_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = ()
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.BASE_LR = 0.001  # 0.01 diverges within 10 iterations on this tiny VGG
    cfg.SOLVER.CHECKPOINT_PERIOD = checkpoint_period
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    return cfg


def _assert_finite_checkpoint(path):
    weights = torch.load(path)["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_nan_loss_stops_the_run_and_names_the_last_good_checkpoint(tmp_path):
    cfg = _tiny_run_cfg(tmp_path, max_iter=6, checkpoint_period=2)
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
    assert _last_checkpoint(cfg.OUTPUT_DIR) == "model_0000001.pth"
    assert sorted(f for f in os.listdir(cfg.OUTPUT_DIR) if f.endswith(".pth")) == [
        "model_0000001.pth"
    ]
    _assert_finite_checkpoint(os.path.join(cfg.OUTPUT_DIR, "model_0000001.pth"))


def test_weights_that_blow_up_are_not_checkpointed(tmp_path):
    """An optimizer step can turn finite losses into NaN weights; the checkpoint due right after
    is refused, so the previous one stays the last."""
    cfg = _tiny_run_cfg(tmp_path, max_iter=6, checkpoint_period=2)
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
    assert _last_checkpoint(cfg.OUTPUT_DIR) == "model_0000001.pth"
    assert not os.path.exists(os.path.join(cfg.OUTPUT_DIR, "model_0000003.pth"))


# ---------------------------------------------------------------- SIGKILL and --resume
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


def kill_and_resume(tmp_path, cfg, *launch_args):
    """Run train_net.py on ``cfg`` (plus ``launch_args``, e.g. --num-gpus 2), SIGKILL it once a
    checkpoint is on disk, check that no process it started outlives it, then run it again
    with --resume: it must end where an uninterrupted run would, with a finite, loadable final
    checkpoint. Returns the resumed run's log."""
    cfg_file = str(tmp_path / "tiny.yaml")
    with open(cfg_file, "w") as f:
        f.write(cfg.dump())
    out = cfg.OUTPUT_DIR

    with open(tmp_path / "first.log", "wb") as log:
        first = start_train_net(tmp_path, log, "--config-file", cfg_file, *launch_args)
        deadline = time.time() + 600  # only bounds a hang: a busy machine can be very slow
        while not os.path.exists(os.path.join(out, "last_checkpoint")):
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.time() < deadline, "no checkpoint within 600 s"
            time.sleep(0.05)
        assert first.poll() is None, "the run ended before it could be killed"
        children = _children(first.pid)
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
    deadline = time.time() + 30
    while any(_alive(pid) for pid in children):  # workers must not train on as orphans
        assert time.time() < deadline, f"processes {children} outlived their launcher"
        time.sleep(0.05)
    killed_at = _last_checkpoint(out)
    assert killed_at != "model_final.pth" and not os.path.exists(
        os.path.join(out, "model_final.pth")
    )
    resume_from = int(killed_at[len("model_") : -len(".pth")]) + 1

    with open(tmp_path / "resumed.log", "wb") as log:
        resumed = start_train_net(
            tmp_path, log, "--config-file", cfg_file, "--resume", *launch_args
        )
        assert resumed.wait(timeout=900) == 0, (tmp_path / "resumed.log").read_text()
    resumed_log = (tmp_path / "resumed.log").read_text()
    assert f"Starting training from iteration {resume_from}" in resumed_log
    assert _last_checkpoint(out) == "model_final.pth"
    final = torch.load(os.path.join(out, "model_final.pth"))
    assert final["iteration"] == cfg.SOLVER.MAX_ITER - 1  # what an uninterrupted run saves
    _assert_finite_checkpoint(os.path.join(out, "model_final.pth"))

    model = build_model(cfg)
    DetectionCheckpointer(model).load(os.path.join(out, "model_final.pth"))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, final["model"][key], msg=key)
    return resumed_log


def test_run_killed_with_sigkill_resumes_to_the_same_end(tmp_path):
    kill_and_resume(tmp_path, _tiny_run_cfg(tmp_path, max_iter=40, checkpoint_period=5))
