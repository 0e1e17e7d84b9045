"""Gradient accumulation: n micro-batches make the same step as one n-times larger batch, with and
without AMP, and training resumed from a checkpoint continues exactly like an uninterrupted run.
AMP on a CPU: bfloat16 autocast, without a scaler, in every trainer that reads SOLVER.AMP."""

import logging
import os

import pytest
import torch
from torch import nn

from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils.events import EventStorage

from dssd_d2.engine import SSDTrainer
from dssd_d2 import cpu
from dssd_d2.engine.accumulation import GradientAccumulationTrainer, build_step_trainer

from helpers import (
    register_cells_dataset,
    tiny_dsod_cfg,
    weights_norm,
    without_random_augmentation,
)


class MeanLossModel(nn.Module):
    """Conv + linear without BatchNorm; the losses are means over the batch, so the mean of
    equal-sized micro-batch losses is the large-batch loss."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, batch):
        images, targets = batch
        x = torch.relu(self.conv(images)).mean(dim=(2, 3))
        out = self.fc(x)
        return {
            "loss_a": nn.functional.mse_loss(out[:, 0], targets[:, 0]),
            "loss_b": nn.functional.smooth_l1_loss(out[:, 1], targets[:, 1]),
        }


def _batches(num_images, batch_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(num_images, 3, 8, 8, generator=g)
    targets = torch.randn(num_images, 2, generator=g)
    return [
        (images[i : i + batch_size], targets[i : i + batch_size])
        for i in range(0, num_images, batch_size)
    ]


def _train(trainer, iterations):
    with EventStorage(0) as storage:
        for trainer.iter in range(iterations):
            storage.iter = trainer.iter
            trainer.run_step()
    return storage


def _model_and_optimizer():
    torch.manual_seed(0)
    model = MeanLossModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    return model, optimizer


def _initial_state():
    return {k: v.clone() for k, v in _model_and_optimizer()[0].state_dict().items()}


def assert_same_steps(init, got, want, relative):
    """``got`` and ``want`` (state dicts trained from ``init``) differ by less than ``relative``
    times how far training moved ``want``: equal weights are then not just weights that barely
    moved."""
    moved = weights_norm(want[k] - init[k] for k in want)
    assert moved > 0, "training did not move the weights"
    difference = weights_norm(got[k] - want[k] for k in want)
    assert difference < relative * moved, f"{difference:.3g} apart after moving {moved:.3g}"


@pytest.mark.parametrize("micro_batches", [2, 4])
def test_accumulated_steps_equal_large_batch_steps(micro_batches):
    iterations, large = 3, 8
    data = _batches(large * iterations, large // micro_batches)
    model, optimizer = _model_and_optimizer()
    storage = _train(GradientAccumulationTrainer(model, data, optimizer, micro_batches), iterations)

    reference, reference_optimizer = _model_and_optimizer()
    reference_storage = _train(
        SimpleTrainer(reference, _batches(large * iterations, large), reference_optimizer),
        iterations,
    )
    # float32 rounding: measured 1e-6 of the distance moved
    assert_same_steps(_initial_state(), model.state_dict(), reference.state_dict(), 1e-4)
    for key in ("loss_a", "loss_b", "total_loss"):  # logged losses read like the large batch
        got, want = storage.history(key).values(), reference_storage.history(key).values()
        assert [v for v, _ in got] == pytest.approx([v for v, _ in want], rel=1e-5)


def test_amp_with_grad_scaler_matches_fp32_and_keeps_the_scaler_state():
    iterations, micro_batches = 2, 4
    data = _batches(8 * iterations, 2)
    model, optimizer = _model_and_optimizer()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    amp = GradientAccumulationTrainer(
        model, data, optimizer, micro_batches, grad_scaler=scaler, precision=torch.bfloat16
    )
    _train(amp, iterations)
    fp32, fp32_optimizer = _model_and_optimizer()
    _train(GradientAccumulationTrainer(fp32, data, fp32_optimizer, micro_batches), iterations)
    # bfloat16 forward (8-bit mantissa, 0.4% rounding): measured 0.3% of the distance moved
    assert_same_steps(_initial_state(), model.state_dict(), fp32.state_dict(), 0.03)
    assert amp.state_dict()["grad_scaler"]["scale"] == 2.0**10

    # Detectron2's AMPTrainer hands its scaler and precision over.
    d2_amp = AMPTrainer(model, data, optimizer, grad_scaler=scaler, precision=torch.bfloat16)
    taken = GradientAccumulationTrainer.from_trainer(d2_amp, 3)
    assert (taken.grad_scaler, taken.precision) == (scaler, torch.bfloat16)
    assert taken.accumulation_steps == 3


def test_cpu_amp_is_bfloat16_autocast_without_a_scaler(monkeypatch, caplog):
    monkeypatch.setattr(cpu, "has_bfloat16", lambda: True)
    data = _batches(8, 4)
    model, optimizer = _model_and_optimizer()
    step = build_step_trainer(model, data, optimizer, amp=True, accumulation_steps=2)
    assert isinstance(step, GradientAccumulationTrainer) and step.accumulation_steps == 2
    assert (step.precision, step.grad_scaler) == (torch.bfloat16, None)
    seen = []
    model.conv.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    _train(step, 1)
    assert seen == [torch.bfloat16, torch.bfloat16]
    fp32, fp32_optimizer = _model_and_optimizer()
    _train(build_step_trainer(fp32, data, fp32_optimizer, amp=False, accumulation_steps=2), 1)
    # bfloat16 forward: measured 0.7% of the distance moved
    assert_same_steps(_initial_state(), model.state_dict(), fp32.state_dict(), 0.03)
    assert all(p.dtype == torch.float32 for p in model.parameters())

    # A CPU that only emulates bfloat16 trains in float32, or in bfloat16 when forced; both warn.
    monkeypatch.setattr(cpu, "has_bfloat16", lambda: False)
    with caplog.at_level(logging.WARNING):
        fallback = build_step_trainer(model, data, optimizer, amp=True, accumulation_steps=2)
    assert fallback.precision is None and "training in float32" in caplog.text
    assert type(build_step_trainer(model, data, optimizer, amp=True)) is SimpleTrainer
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        forced = build_step_trainer(model, data, optimizer, amp=True, emulated_bf16=True)
    assert forced.precision == torch.bfloat16 and "emulated bfloat16" in caplog.text

    plain = build_step_trainer(model, data, optimizer, amp=False)
    assert type(plain) is SimpleTrainer
    with pytest.raises(ValueError, match="precision"):
        GradientAccumulationTrainer(
            model, data, optimizer, 1, grad_scaler=torch.amp.GradScaler("cpu")
        )


def _single_image_cfg(tmp_path, output):
    """Tiny DSOD on one image with no random augmentation: every batch is the same, so a
    resumed run must reproduce an uninterrupted one exactly."""
    name = "dssd_d2_test_dsod_one_image"
    register_cells_dataset(name, str(tmp_path), num_images=1)
    cfg = tiny_dsod_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = ()
    without_random_augmentation(cfg)
    cfg.SOLVER.BASE_LR = 0.05
    cfg.SOLVER.MAX_ITER = 4
    cfg.SOLVER.STEPS = (3,)  # the learning rate drops after the checkpoint
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.OUTPUT_DIR = str(tmp_path / output)
    return cfg


def _state(trainer):
    model = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    optimizer_state = trainer.optimizer.state
    momentum = [optimizer_state[p]["momentum_buffer"].clone() for p in trainer.model.parameters()]
    return model, momentum, trainer.optimizer.param_groups[0]["lr"], trainer.iter


@pytest.mark.slow
def test_accumulation_survives_checkpoint_and_resume(tmp_path):
    torch.manual_seed(0)
    uninterrupted = SSDTrainer(_single_image_cfg(tmp_path, "uninterrupted"))
    init = {k: v.clone() for k, v in uninterrupted.model.state_dict().items()}
    uninterrupted.train()

    torch.manual_seed(0)
    cfg = _single_image_cfg(tmp_path, "interrupted")
    first = SSDTrainer(cfg)
    first.max_iter = 2  # stop after two iterations; the schedule still spans four
    first.train()
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    del first

    torch.manual_seed(1)  # a different init, overwritten by the checkpoint
    resumed = SSDTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    assert isinstance(resumed._trainer, GradientAccumulationTrainer)
    assert all(resumed.optimizer.state[p] for p in resumed.model.parameters())  # momentum
    resumed.train()

    model, momentum, lr, iteration = _state(resumed)
    want_model, want_momentum, want_lr, want_iteration = _state(uninterrupted)
    assert (iteration, lr) == (want_iteration, want_lr) == (4, pytest.approx(0.005))
    for key, value in model.items():
        torch.testing.assert_close(value, want_model[key], rtol=1e-5, atol=1e-6, msg=key)
    floats = [k for k, v in want_model.items() if v.is_floating_point()]
    init, model, want_model = ({k: state[k] for k in floats} for state in (init, model, want_model))
    assert_same_steps(init, model, want_model, 1e-4)
    for got, want in zip(momentum, want_momentum):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
