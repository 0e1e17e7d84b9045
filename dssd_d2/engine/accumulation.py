"""Gradient accumulation and CPU mixed precision for Detectron2's trainers: a large effective
batch, and bfloat16 speed, on a small machine.

DSOD trains from scratch with a batch of 128 (the paper accumulates gradients in Caffe with
``iter_size``). :class:`GradientAccumulationTrainer` does the same inside Detectron2's loop: one
``run_step`` (one iteration, one learning-rate step, one optimizer step) runs
``accumulation_steps`` micro-batches of SOLVER.IMS_PER_BATCH images, each loss scaled by
1 / accumulation_steps, so the effective batch is IMS_PER_BATCH * ACCUMULATION_STEPS.

Checkpoint and resume need no extra state: gradients are zeroed at the start of every
``run_step`` and consumed by the optimizer at its end, and Detectron2 runs hooks (checkpointer,
evaluation) only between steps, so a checkpoint never falls inside an accumulation. What
survives is what Detectron2 already saves: the iteration, the optimizer (momentum buffers),
the LR scheduler (its hook) and, with AMP, the gradient scaler.

:func:`build_step_trainer` turns Detectron2's SOLVER.AMP.ENABLED (LazyConfig: train.amp.enabled)
into bfloat16 autocast when the model is on a CPU, where Detectron2's AMPTrainer refuses to run.
bfloat16 keeps float32's exponent range, so no loss scaling is needed; on CPUs with AVX512-BF16 or
AMX its convolutions are several times faster (docs/speed.md, "Training in bfloat16").
"""

import contextlib
import logging
import time
from typing import Dict, Optional

import torch
from torch.nn.parallel import DistributedDataParallel

from detectron2.engine import AMPTrainer, SimpleTrainer

from .. import cpu

__all__ = ["GradientAccumulationTrainer", "build_step_trainer"]


class GradientAccumulationTrainer(SimpleTrainer):
    """SimpleTrainer (or, with a ``precision``, AMPTrainer) that accumulates gradients over
    ``accumulation_steps`` micro-batches before each optimizer step.

    Logged losses are the mean over the micro-batches, so they read like a single large batch.
    Under DDP, gradients are all-reduced only on the last micro-batch (``no_sync``).
    """

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        accumulation_steps: int,
        *,
        grad_scaler: Optional[torch.amp.GradScaler] = None,
        precision: Optional[torch.dtype] = None,
        gather_metric_period: int = 1,
        async_write_metrics: bool = False,
    ):
        """
        Args:
            model, data_loader, optimizer, gather_metric_period, async_write_metrics: as in
                :class:`SimpleTrainer`.
            accumulation_steps: micro-batches per optimizer step (1: plain SimpleTrainer).
            precision: mixed precision: autocast to this dtype on the model's device, as
                :class:`AMPTrainer` does (None: float32 throughout).
            grad_scaler: scales the loss (needed for float16, not for bfloat16).
        """
        if accumulation_steps < 1:
            raise ValueError(f"SOLVER.ACCUMULATION_STEPS must be >= 1, got {accumulation_steps}")
        if grad_scaler is not None and precision is None:
            raise ValueError("a grad_scaler is for mixed precision: give its precision too")
        super().__init__(
            model,
            data_loader,
            optimizer,
            gather_metric_period=gather_metric_period,
            async_write_metrics=async_write_metrics,
        )
        self.accumulation_steps = accumulation_steps
        self.grad_scaler = grad_scaler
        self.precision = precision

    @classmethod
    def from_trainer(cls, trainer: SimpleTrainer, accumulation_steps: int):
        """Take over the model, loader, optimizer and AMP settings of the step trainer that
        Detectron2's DefaultTrainer built (SimpleTrainer or AMPTrainer)."""
        amp = isinstance(trainer, AMPTrainer)
        return cls(
            trainer.model,
            trainer.data_loader,
            trainer.optimizer,
            accumulation_steps,
            grad_scaler=trainer.grad_scaler if amp else None,
            precision=trainer.precision if amp else None,
            gather_metric_period=trainer.gather_metric_period,
            async_write_metrics=trainer.async_write_metrics,
        )

    def _autocast(self):
        if self.precision is None:
            return contextlib.nullcontext()
        device_type = next(self.model.parameters()).device.type
        return torch.autocast(device_type=device_type, dtype=self.precision)

    def _no_sync(self, last_micro_batch: bool):
        if isinstance(self.model, DistributedDataParallel) and not last_micro_batch:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def run_step(self):
        assert self.model.training, "[GradientAccumulationTrainer] model was changed to eval mode!"
        self.optimizer.zero_grad()
        mean_losses: Dict[str, torch.Tensor] = {}
        data_time = 0.0
        for i in range(self.accumulation_steps):
            start = time.perf_counter()
            data = next(self._data_loader_iter)
            data_time += time.perf_counter() - start
            with self._no_sync(last_micro_batch=(i == self.accumulation_steps - 1)):
                with self._autocast():
                    loss_dict = self.model(data)
                    if isinstance(loss_dict, torch.Tensor):
                        loss_dict = {"total_loss": loss_dict}
                    losses = sum(loss_dict.values()) / self.accumulation_steps
                if self.grad_scaler is not None:
                    losses = self.grad_scaler.scale(losses)
                losses.backward()
            for name, value in loss_dict.items():
                value = value.detach() / self.accumulation_steps
                mean_losses[name] = mean_losses[name] + value if name in mean_losses else value

        self.after_backward()
        if self.async_write_metrics:
            self.concurrent_executor.submit(
                self._write_metrics, mean_losses, data_time, iter=self.iter
            )
        else:
            self._write_metrics(mean_losses, data_time)

        if self.grad_scaler is None:
            self.optimizer.step()
        else:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


# Config keys named in the log of the step trainer's choice (YAML; LazyConfig passes its own).
YAML_STEP_KEYS = ("SOLVER.AMP.ENABLED", "SOLVER.ACCUMULATION_STEPS", "SOLVER.AMP.EMULATED_BF16")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def build_step_trainer(
    model,
    data_loader,
    optimizer,
    *,
    amp: bool,
    accumulation_steps: int = 1,
    emulated_bf16: bool = False,
    keys=YAML_STEP_KEYS,
):
    """The step trainer for SOLVER.AMP.ENABLED and SOLVER.ACCUMULATION_STEPS: SimpleTrainer,
    Detectron2's AMPTrainer (float16 with a gradient scaler, CUDA), or
    GradientAccumulationTrainer, which also runs AMP on a CPU, as bfloat16 autocast. Logs the
    choice and why, naming ``keys`` (the AMP, accumulation and emulated-bfloat16 keys).

    A CPU without bfloat16 instructions trains in float32 unless ``emulated_bf16``
    (SOLVER.AMP.EMULATED_BF16): emulated bfloat16 made Tiny-DSOD's steps several times slower
    than float32 on an AVX2 CPU, so a config written for AMX machines keeps its speed elsewhere."""
    amp_key, accumulation_key, emulated_key = keys
    logger = logging.getLogger(__name__)
    if not amp:
        why = f"{amp_key} False: float32"
    elif next(model.parameters()).device.type == "cpu":
        found = cpu.flags()
        native = cpu.has_bfloat16()
        if found is None:
            why = f"{amp_key} on a CPU whose flags are unknown: bfloat16 autocast"
        elif native:
            have = "/".join(f for f in _BF16_FLAGS if f in found)
            why = f"{amp_key} on a CPU with {have}: bfloat16 autocast"
        elif emulated_bf16:
            why = f"{amp_key} and {emulated_key} on a CPU without avx512_bf16 or amx_bf16: "
            why += "training in emulated bfloat16 autocast, slower than float32"
        else:
            why = f"{amp_key} on a CPU without avx512_bf16 or amx_bf16: training in float32, "
            why += f"faster there ({emulated_key} True forces bfloat16)"
        if not native:
            logger.warning(why)
        if native or emulated_bf16:
            step = GradientAccumulationTrainer(
                model, data_loader, optimizer, accumulation_steps, precision=torch.bfloat16
            )
            _log_choice(logger, step, why, accumulation_steps, accumulation_key)
            return step
        amp = False  # Detectron2's AMPTrainer is for CUDA
    else:
        why = f"{amp_key} on a GPU: float16 autocast with a gradient scaler"
    step = (AMPTrainer if amp else SimpleTrainer)(model, data_loader, optimizer)
    if accumulation_steps != 1:  # < 1 is rejected with a message
        step = GradientAccumulationTrainer.from_trainer(step, accumulation_steps)
    _log_choice(logger, step, why, accumulation_steps, accumulation_key)
    return step


def _log_choice(logger, step, why: str, accumulation_steps: int, accumulation_key: str):
    batches = (
        f"{accumulation_steps} micro-batches per optimizer step ({accumulation_key})"
        if accumulation_steps > 1
        else "one batch per optimizer step"
    )
    logger.info(f"Step trainer: {type(step).__name__} ({why}; {batches})")
