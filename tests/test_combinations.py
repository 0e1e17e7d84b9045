"""Every training setting works with every other: {YAML, LazyConfig} x {1, 2 processes} x
{iterations, minutes} x {accumulation 1, 2} on a tiny SSD300, each run ending where it should,
two processes training the weights of one with the same learning rates, also when their clocks
disagree; a two-process run on a time budget killed with SIGKILL resumes to the same end; a
process blocked in a collective ends with an error naming it and its iteration, and workers
blocked in a collective end with their launcher."""

import datetime
import itertools
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
from fvcore.common.param_scheduler import CosineParamScheduler

from detectron2.config import LazyCall as L
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from dssd_d2.engine import LazyConfigTrainer, SSDTrainer, time_budget
from dssd_d2.engine.distributed import launch

from helpers import (
    ROOT,
    STEP_SECONDS_ENV,
    _alive,
    _children,
    assert_same_training,
    fake_training_clock,
    kill_and_resume,
    register_random_dataset,
    tiny_lazy_ssd300_cfg,
    tiny_run_cfg,
    tiny_ssd300_cfg,
    without_random_augmentation,
)

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.slow]  # processes

FLOWS = ("yaml", "lazy")
MODES = ("iterations", "minutes")
ACCUMULATIONS = (1, 2)
COMBINATIONS = list(itertools.product(FLOWS, MODES, ACCUMULATIONS))
ITERATIONS = 3
# Fake seconds per training step of processes 0 and 1: process 1's clock runs twice as fast, so
# alone it would spend the budget (three of process 0's steps) after two steps.
STEP_SECONDS = (30.0, 60.0)
MINUTES = ITERATIONS * STEP_SECONDS[0] / 60.0
SEED = 3
DATASET = "dssd_d2_test_combinations"
# A collective that waits longer than this fails (launch's timeout; Detectron2's is 30 minutes).
TIMEOUT = datetime.timedelta(minutes=5)


def _yaml_trainer(folder, output, mode, accumulation):
    """Tiny SSD300 without random augmentation or aspect-ratio grouping, and with every negative
    in the loss: one process and two then see the same images and compute the same gradients
    (tests/test_distributed.py says why each setting matters)."""
    cfg = tiny_ssd300_cfg(num_classes=3)
    cfg.DATASETS.TRAIN = (DATASET,)
    cfg.DATASETS.TEST = ()
    without_random_augmentation(cfg)
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    cfg.MODEL.WEIGHTS = os.path.join(folder, "init.pth")
    cfg.MODEL.SSD.NEG_POS_RATIO = 1e6
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.ACCUMULATION_STEPS = accumulation
    cfg.SOLVER.BASE_LR = 0.001
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR"  # the rate changes at every step
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.MAX_ITER = ITERATIONS if mode == "iterations" else 100
    cfg.SOLVER.MAX_TRAINING_MINUTES = MINUTES if mode == "minutes" else 0.0
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.TEST.EVAL_PERIOD = 0
    cfg.OUTPUT_DIR = os.path.join(folder, output)
    return SSDTrainer(cfg)


def _lazy_trainer(folder, output, mode, accumulation):
    """The same run in the LazyConfig flow."""
    aug = "dataloader.train.mapper.augmentations"
    cfg = tiny_lazy_ssd300_cfg(
        DATASET,
        os.path.join(folder, output),
        [
            f"{aug}.photometric=False",
            f"{aug}.expand_ratio=1.0",
            f"{aug}.min_iou_crop=False",
            f"{aug}.random_flip=none",
            "dataloader.train.aspect_ratio_grouping=False",
            "model.neg_pos_ratio=1e6",
            "optimizer.lr=0.001",
            f"train.accumulation_steps={accumulation}",
            f"train.max_iter={ITERATIONS if mode == 'iterations' else 100}",
            f"train.max_training_minutes={MINUTES if mode == 'minutes' else 0.0}",
            f"train.init_checkpoint={os.path.join(folder, 'init.pth')}",
            "train.checkpointer.period=1000",
        ],
    )
    cfg.lr_multiplier = L(CosineParamScheduler)(start_value=1.0, end_value=0.0)
    return LazyConfigTrainer(cfg)


def _output(flow, mode, accumulation, processes):
    return f"{flow}_{mode}_acc{accumulation}_{processes}"


def _train(folder, flow, mode, accumulation, processes):
    """Train one combination from init.pth, with the seeds that default_setup gives each rank and
    this process's fake clock; returns what the tests compare."""
    seed_all_rng(SEED + comm.get_rank())
    fake_training_clock(STEP_SECONDS[comm.get_rank()])
    build = _yaml_trainer if flow == "yaml" else _lazy_trainer
    trainer = build(folder, _output(flow, mode, accumulation, processes), mode, accumulation)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return {
        "iterations": trainer.iter,
        "lrs": [lr for lr, _ in trainer.storage.history("lr").values()],
        "minutes": trainer.clock.elapsed / 60.0 if trainer.clock else None,
        "weights": {k: v.clone() for k, v in trainer.checkpointer.model.state_dict().items()},
    }


def _two_process_worker(folder):
    """In each of two processes: train every combination; rank 0 saves what both reached."""
    register_random_dataset(DATASET, folder, num_images=8)
    reached = {combination: _train(folder, *combination, 2) for combination in COMBINATIONS}
    every = comm.all_gather(reached)
    if comm.is_main_process():
        torch.save(every, os.path.join(folder, "two_processes.pth"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The initial weights, the dataset, and every two-process combination (one launch)."""
    folder = str(tmp_path_factory.mktemp("combinations"))
    register_random_dataset(DATASET, folder, num_images=8)
    torch.manual_seed(0)
    model = SSDTrainer.build_model(tiny_ssd300_cfg(num_classes=3))
    torch.save({"model": model.state_dict()}, os.path.join(folder, "init.pth"))
    launch(_two_process_worker, 2, dist_url="auto", timeout=TIMEOUT, args=(folder,))
    return folder, torch.load(os.path.join(folder, "two_processes.pth"), weights_only=False)


@pytest.mark.parametrize("flow,mode,accumulation", COMBINATIONS)
def test_one_and_two_processes_end_alike(runs, monkeypatch, flow, mode, accumulation):
    folder, two = runs
    monkeypatch.setattr(time_budget, "time", time_budget.time)  # put back after the fake clock
    one = _train(folder, flow, mode, accumulation, processes=1)
    rank0, rank1 = (two[rank][(flow, mode, accumulation)] for rank in (0, 1))
    # Every run ends after the same iteration: MAX_ITER, or the budget by process 0's clock
    # (process 1's own would have ended it one step earlier).
    assert one["iterations"] == rank0["iterations"] == rank1["iterations"] == ITERATIONS
    if mode == "minutes":
        assert one["minutes"] == rank0["minutes"] == rank1["minutes"] == pytest.approx(MINUTES)
    # The same learning rate at every step, in both processes and in one.
    assert rank1["lrs"] == rank0["lrs"]
    assert rank0["lrs"] == pytest.approx(one["lrs"], rel=1e-9)
    assert len(set(one["lrs"])) == ITERATIONS  # it changed at every step (the schedule ran)
    # The replicas stayed equal, and two processes trained the weights of one.
    for key, value in rank0["weights"].items():
        torch.testing.assert_close(rank1["weights"][key], value, rtol=0, atol=0, msg=key)
    init = torch.load(os.path.join(folder, "init.pth"))["model"]
    assert_same_training(init, rank0["weights"], one["weights"])


def test_two_process_budget_run_killed_with_sigkill_resumes_to_the_same_end(tmp_path):
    """Four minutes of 30-second steps (process 1's clock: 60 s) end after 8 iterations; the
    launcher is killed right after the checkpoint of iteration 3, and the resumed run spends the
    two minutes left in 4 more."""
    cfg = tiny_run_cfg(tmp_path, max_iter=100, checkpoint_period=2)
    cfg.SOLVER.MAX_TRAINING_MINUTES = 4.0
    clocks = {STEP_SECONDS_ENV: ",".join(str(s) for s in STEP_SECONDS)}
    launch_args = ("--num-gpus", "2", "--dist-url", "auto")
    log = kill_and_resume(tmp_path, cfg, *launch_args, kill_after=3, hooks=clocks, end=8)
    assert "for at most 4 training minutes or 100 iterations" in log


class _StallAfterFirstStep(HookBase):
    """In process 1, stop taking part after the first step (as if stuck in a slow file system)."""

    def after_step(self):
        if comm.get_rank() == 1:
            time.sleep(600)


def _stalling_worker(folder):
    register_random_dataset(DATASET, folder, num_images=8)
    trainer = _yaml_trainer(folder, "stall", "iterations", 1)
    trainer.register_hooks([_StallAfterFirstStep()])
    trainer.train()


def test_a_hang_ends_with_an_error_naming_the_process_and_iteration(tmp_path):
    """Process 0 waits in iteration 1's gradient all-reduce for a process that never comes: the
    collective's timeout ends it with an error naming it and the iteration, and the launcher
    ends process 1 (no silent hang)."""
    folder = str(tmp_path)
    model = SSDTrainer.build_model(tiny_ssd300_cfg(num_classes=3))
    torch.save({"model": model.state_dict()}, os.path.join(folder, "init.pth"))
    timeout = datetime.timedelta(seconds=30)
    with pytest.raises(Exception) as error:
        launch(_stalling_worker, 2, dist_url="auto", timeout=timeout, args=(folder,))
    assert "raised in process 0 of 2" in str(error.value)
    assert "at iteration 1" in str(error.value)


BLOCKED_LAUNCHER = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import test_combinations
from dssd_d2.engine.distributed import launch
launch(test_combinations._blocked_worker, 2, dist_url="auto", args=({folder!r},))
"""


def _blocked_worker(folder):
    """Wait for a message from the other process, which waits for one too: blocked in gloo."""
    open(os.path.join(folder, f"ready_{comm.get_rank()}"), "w").close()
    dist.recv(torch.zeros(1), src=1 - comm.get_rank())


def test_workers_blocked_in_a_collective_end_with_their_launcher(tmp_path):
    """torch's SIGINT to a dead launcher's workers waits for a blocked collective to return
    (30 minutes, or never); each worker's watchdog ends it within a second, saying why."""
    code = BLOCKED_LAUNCHER.format(
        root=ROOT, tests=os.path.join(ROOT, "tests"), folder=str(tmp_path)
    )
    with open(tmp_path / "launcher.log", "wb") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.time() + 300
        while not all(os.path.exists(tmp_path / f"ready_{rank}") for rank in (0, 1)):
            assert launcher.poll() is None, (tmp_path / "launcher.log").read_text()
            assert time.time() < deadline, "the workers did not start within 300 s"
            time.sleep(0.05)
        time.sleep(1.0)  # into the receive
        workers = _children(launcher.pid)
        launcher.kill()
        launcher.wait()
    deadline = time.time() + 30
    while any(_alive(pid) for pid in workers):
        assert time.time() < deadline, f"workers {workers} outlived their launcher"
        time.sleep(0.05)
    text = (tmp_path / "launcher.log").read_text()
    for rank in (0, 1):
        assert f"process {rank} of 2" in text and "its launcher" in text, text
