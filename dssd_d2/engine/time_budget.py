"""Training for a budget of minutes instead of iterations (SOLVER.MAX_TRAINING_MINUTES).

A recipe sized in iterations takes 22 minutes on one CPU and an hour on another (bfloat16 on AMX
against float32 on AVX2), so "the best detector in 30 CPU-minutes" needs a budget of time. With
one, :class:`TrainingClock` counts the time spent in training steps (loading the batch, forward,
backward, optimizer step; not evaluations or checkpoints) and ends the run after the step that
spends the budget, as if SOLVER.MAX_ITER had been reached there: the final checkpoint, the final
evaluation and the metrics are written as for any run. :class:`BudgetLRMultiplier` runs the LR
schedule (warm-up included) over whichever budget is spent faster, time or MAX_ITER iterations,
so the learning rate anneals to its end exactly when training stops. The time spent is saved in
checkpoints: a resumed run goes on with what is left of its budget. Detectron2's training loop
fixes its range of iterations at the start; the training assembly's loop
(:func:`dssd_d2.engine.assembly.train_loop`) also ends when the clock lowers ``max_iter``, and
:func:`budget_writers` makes the console's ``eta`` count down to the sooner end.

With several processes, the main process's clock decides for all: after each step every process
adopts the main process's time spent, so all of them stop after the same iteration and run the
same learning rate (each process timing its own steps, they disagreed by the time one spent
longer on a step, e.g. its first batches; one then stopped a step early while the others waited
for it in DDP's all-reduce for good). The main process's count is what the checkpoint saves,
so a resumed run goes on from the value that decided. It reaches the others as an all-reduce
(sum) to which the other processes add 0: one collective of one number per step, measured at
0.25 ms with gloo between two processes on a busy 2-core machine, where a broadcast of the same
number took 0.34 to 0.56 ms; either is nothing next to a training step (70 ms or more).
"""

import datetime
import time

import torch
import torch.distributed as dist

from detectron2.engine import HookBase, hooks
from detectron2.solver import LRMultiplier
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter

from .distributed import cpu_group

__all__ = [
    "BudgetLRMultiplier",
    "TrainingClock",
    "budget_lr_scheduler",
    "budget_writers",
]


class TrainingClock(HookBase):
    """Counts training time and ends the run once ``minutes`` are spent, by the main process's
    count in every process. Register it first (in every process), so that the time it counts
    leaves out the other hooks' work after each step."""

    def __init__(self, minutes: float, key: str = "SOLVER.MAX_TRAINING_MINUTES"):
        if not minutes > 0:
            raise ValueError(f"{key} must be > 0 (0 turns it off): {minutes}")
        self.budget = minutes * 60.0
        self.elapsed = 0.0
        self._step_start = None

    def fraction(self) -> float:
        """The part of the budget spent, in [0, 1]."""
        return min(self.elapsed / self.budget, 1.0)

    def before_step(self):
        self._step_start = time.perf_counter()

    def after_step(self):
        self.elapsed += time.perf_counter() - self._step_start
        if comm.get_world_size() > 1:  # the main process's count, in every process
            mine = self.elapsed if comm.is_main_process() else 0.0
            spent = torch.tensor([mine], dtype=torch.float64)
            dist.all_reduce(spent, group=cpu_group())  # gloo's all-reduce beats its broadcast
            self.elapsed = spent.item()
        self.trainer.storage.put_scalar(
            "training_minutes", self.elapsed / 60.0, smoothing_hint=False
        )
        if self.elapsed >= self.budget:
            # The later hooks see this step as the last one: evaluation and metrics read the
            # trainer's max_iter, the checkpointer its own copy (the final checkpoint).
            last = min(self.trainer.max_iter, self.trainer.iter + 1)
            self.trainer.max_iter = last
            for hook in self.trainer._hooks:
                if isinstance(hook, hooks.PeriodicCheckpointer):
                    hook.max_iter = last

    def state_dict(self):
        return {"elapsed": self.elapsed}

    def load_state_dict(self, state_dict):
        self.elapsed = state_dict["elapsed"]


class BudgetLRMultiplier(LRMultiplier):
    """Detectron2's LRMultiplier with the schedule's progress taken as the larger of the
    iterations done over ``max_iter`` and the clock's spent fraction of its budget."""

    def __init__(self, optimizer, multiplier, max_iter: int, clock: TrainingClock):
        self._clock = clock
        super().__init__(optimizer, multiplier, max_iter)

    def get_lr(self):
        where = max(self.last_epoch / self._max_iter, self._clock.fraction())
        return [base_lr * self._multiplier(min(where, 1.0)) for base_lr in self.base_lrs]


def budget_lr_scheduler(scheduler, max_iter: int, clock: TrainingClock) -> BudgetLRMultiplier:
    """The schedule of ``scheduler`` (the LRMultiplier that Detectron2's build_lr_scheduler
    makes) run over the clock's budget too."""
    if not isinstance(scheduler, LRMultiplier):
        raise TypeError(
            "SOLVER.MAX_TRAINING_MINUTES needs Detectron2's LRMultiplier from build_lr_scheduler, "
            f"got {type(scheduler).__name__}"
        )
    return BudgetLRMultiplier(scheduler.optimizer, scheduler._multiplier, max_iter, clock)


class BudgetMetricPrinter(CommonMetricPrinter):
    """Detectron2's console printer with the ``eta`` (and ``eta_seconds``) of whichever end
    comes first: the iterations left at the median iteration time, or the clock's minutes left."""

    def __init__(self, max_iter: int, clock: TrainingClock, window_size: int = 20):
        super().__init__(max_iter, window_size)
        self._clock = clock

    def _get_eta(self, storage) -> str:
        try:
            by_iterations = storage.history("time").median(1000) * (
                self._max_iter - storage.iter - 1
            )
        except KeyError:  # no iteration timed yet
            by_iterations = float("inf")
        seconds = min(by_iterations, max(self._clock.budget - self._clock.elapsed, 0.0))
        storage.put_scalar("eta_seconds", seconds, smoothing_hint=False)
        return str(datetime.timedelta(seconds=int(seconds)))


def budget_writers(writers, clock: TrainingClock):
    """Detectron2's ``default_writers`` with its CommonMetricPrinter counting down the budget."""
    return [
        BudgetMetricPrinter(w._max_iter, clock) if type(w) is CommonMetricPrinter else w
        for w in writers
    ]
