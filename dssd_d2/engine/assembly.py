"""One assembly of a training run for both config flows: the YAML flow (:class:`SSDTrainer`,
train_net.py) and the LazyConfig flow (:class:`LazyConfigTrainer`,
tools/lazyconfig_train_net.py) are the same :class:`AssembledTrainer` and differ only in how they
read their config: a :class:`TrainingPlan` of settings, a :class:`~dssd_d2.checks.TrainingSetup`
for the build-time checks, and Detectron2's ``build_*`` hooks for the model, optimizer, loader,
LR schedule and evaluation. So the step trainer, hooks, training clock, writers, checkpointer and
run record cannot drift apart between the flows.

Detectron2's ``DefaultTrainer.__init__`` is not used: it wraps the model with Detectron2's
``create_ddp_model`` (device ids that DDP refuses for a CPU model) and chooses between two step
trainers itself, neither through a ``build_*`` hook. :meth:`AssembledTrainer.__init__` builds the
same parts in the same order through hooks, with on top of Detectron2's:

- the build-time checks (:func:`dssd_d2.checks.check_training_setup`) before anything heavy;
- on the CPU, glibc's malloc keeping freed memory (:func:`keep_freed_memory`);
- DDP with device ids only on a GPU (:func:`dssd_d2.engine.distributed.create_ddp_model`);
- the step trainer of :func:`build_step_trainer` (bfloat16 autocast on a CPU, gradient
  accumulation), whose choice is logged with its reasons;
- a training clock shared by all processes (:mod:`dssd_d2.engine.time_budget`) when a budget of
  minutes is set, running the LR schedule over it;
- the :class:`AtomicCheckpointer` registered in every process (its finite-weights check runs in
  each; only the main process writes), images the mapper skipped summed over the processes
  (``data/skipped_images``), and a non-finite loss stopping the run with the last good
  checkpoint named.
"""

import dataclasses
import logging
import os
import weakref
from typing import Mapping, Optional, Sequence

import torch
import torch.distributed as dist

from detectron2.engine import TrainerBase, hooks
from detectron2.engine.defaults import default_writers
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from detectron2.utils.logger import setup_logger

from ..checks import TrainingSetup, check_training_setup
from ..data.validation import SkipCountingLoader
from ..run_record import RunRecordHook
from .accumulation import YAML_STEP_KEYS, build_step_trainer
from .checkpoint import AtomicCheckpointer
from .cpu_memory import keep_freed_memory
from .distributed import cpu_group, create_ddp_model, note_iteration
from .time_budget import TrainingClock, budget_lr_scheduler, budget_writers

__all__ = ["AssembledTrainer", "TrainingPlan", "train_loop"]


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """The settings of a run that the assembly reads, from either config flow.

    Attributes:
        output_dir, device, max_iter: where checkpoints and metrics go, the model's device, and
            the iteration count (an upper bound under a budget of minutes).
        checkpoint_period, max_to_keep, eval_period, log_period: Detectron2's hooks' periods.
        init_weights, weights_exclude: the weights a run starts from, and name prefixes that
            keep their initialisation (:class:`AtomicCheckpointer`).
        amp, emulated_bf16, accumulation_steps: the step trainer (:func:`build_step_trainer`).
        max_training_minutes: budget of training time; 0 for none.
        ddp: keyword arguments of DistributedDataParallel.
        step_keys, minutes_key, output_key, lr_key, warmup_key: config keys named in logs and
            errors.
    """

    output_dir: str
    device: str
    max_iter: int
    checkpoint_period: int
    eval_period: int
    init_weights: str = ""
    weights_exclude: Sequence[str] = ()
    max_to_keep: Optional[int] = None
    log_period: int = 20
    amp: bool = False
    emulated_bf16: bool = False
    accumulation_steps: int = 1
    max_training_minutes: float = 0.0
    ddp: Mapping = dataclasses.field(default_factory=dict)
    step_keys: Sequence[str] = YAML_STEP_KEYS
    minutes_key: str = "SOLVER.MAX_TRAINING_MINUTES"
    output_key: str = "OUTPUT_DIR"
    lr_key: str = "SOLVER.BASE_LR"
    warmup_key: str = "SOLVER.WARMUP_ITERS"


class AssembledTrainer(TrainerBase):
    """A Detectron2 trainer (the ``DefaultTrainer`` interface: ``build_*`` hooks,
    ``resume_or_load``, ``train``, ``test``) assembled the same way for every config flow.

    A flow subclasses it and defines :meth:`training_plan`, :meth:`training_setup`,
    :meth:`describe_run` and Detectron2's class-method hooks ``build_model``,
    ``build_optimizer``, ``build_train_loader``, ``build_lr_scheduler`` (an ``LRMultiplier``)
    and ``test``.
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)  # not DefaultTrainer's (see the module's docstring)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()  # not called for detectron2 when the process did no default_setup
        _log_like_detectron2("dssd_d2")
        cfg = self.prepare_config(cfg)
        self.cfg = cfg
        self.plan = plan = self.training_plan(cfg)
        if plan.device == "cpu":
            keep_freed_memory()

        model = self.build_model(cfg)
        check_training_setup(model, self.training_setup(cfg))
        optimizer = self.build_optimizer(cfg, model)
        data_loader = SkipCountingLoader(self.build_train_loader(cfg))
        model = create_ddp_model(model, **plan.ddp)
        self._trainer = build_step_trainer(
            model,
            data_loader,
            optimizer,
            amp=plan.amp,
            accumulation_steps=plan.accumulation_steps,
            emulated_bf16=plan.emulated_bf16,
            keys=plan.step_keys,
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.clock = None
        if plan.max_training_minutes:
            self.clock = TrainingClock(plan.max_training_minutes, key=plan.minutes_key)
            self.scheduler = budget_lr_scheduler(self.scheduler, plan.max_iter, self.clock)
        self.checkpointer = AtomicCheckpointer(
            model,
            plan.output_dir,
            weights_exclude=plan.weights_exclude,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = plan.max_iter
        self.register_hooks(self.build_hooks())

    # ---------------------------------------------------------------- what a flow defines
    @classmethod
    def prepare_config(cls, cfg):
        """The config the run uses (the YAML flow scales it to the number of processes)."""
        return cfg

    @classmethod
    def training_plan(cls, cfg) -> TrainingPlan:
        raise NotImplementedError

    @classmethod
    def training_setup(cls, cfg) -> TrainingSetup:
        raise NotImplementedError

    def describe_run(self) -> dict:
        """The run record's ``model``, ``datasets``, ``batch_size`` and flow-specific
        ``settings`` (input size, learning rate, ...)."""
        raise NotImplementedError

    def build_precise_bn_hook(self):
        """A hook that recomputes BatchNorm statistics before evaluations, or None."""
        return None

    # ---------------------------------------------------------------- the assembly
    def build_hooks(self):
        """Detectron2's default hooks (DefaultTrainer's order), after the training clock if
        any. The checkpointer runs in every process: each checks that the weights are finite
        and stops with the same message (only the main process writes, and only it deletes
        old checkpoints); the writers run in the main process."""
        plan, main = self.plan, comm.is_main_process()
        ret = [
            self.clock,  # first, so that it counts the steps and not the other hooks' work
            hooks.IterationTimer(),
            hooks.LRScheduler(),
            self.build_precise_bn_hook(),
            hooks.PeriodicCheckpointer(
                self.checkpointer,
                plan.checkpoint_period,
                max_to_keep=plan.max_to_keep if main else None,
            ),
            hooks.EvalHook(plan.eval_period, self._evaluate),  # after the checkpoint it tests
        ]
        if main:  # last, so that the evaluation's metrics are written
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=plan.log_period))
        return ret

    def build_writers(self):
        """Detectron2's default writers; under a time budget the console's eta counts down to
        the sooner end."""
        writers = default_writers(self.plan.output_dir, self.max_iter)
        return budget_writers(writers, self.clock) if self.clock else writers

    def run_record_hook(self, config_file: str, overrides, tool: str):
        """The hook that writes OUTPUT_DIR/run_record.json when training ends (None outside the
        main process); register it last, after the evaluation."""
        if not comm.is_main_process():
            return None
        plan, described = self.plan, self.describe_run()
        settings = {
            **described.pop("settings"),
            "accumulation_steps": plan.accumulation_steps,
            "processes": comm.get_world_size(),
            "step_trainer": type(self._trainer).__name__,
            "precision": str(getattr(self._trainer, "precision", None) or "float32"),
            "amp": plan.amp,
            "max_iter": plan.max_iter,
            "max_training_minutes": plan.max_training_minutes,
        }
        describe = {
            "tool": tool,
            "config_file": config_file,
            "overrides": list(overrides),
            **described,
            "settings": settings,
        }
        return RunRecordHook(
            plan.output_dir, describe, lambda t: getattr(t, "_last_eval_results", {}), self.clock
        )

    def _evaluate(self):
        self._last_eval_results = self.test(self.cfg, self.model)
        return self._last_eval_results

    # ---------------------------------------------------------------- running
    def resume_or_load(self, resume=True):
        """Load the last checkpoint of the output folder (``resume``, with the iteration, the
        optimizer and the hooks' states) or the plan's initial weights. First checks that every
        process would resume from the same checkpoint: with an output folder on a disk that
        other machines do not see, they would start from the initial weights at iteration 0
        while the main process resumes, and the processes would silently train apart."""
        checkpointer = self.checkpointer
        if resume and comm.get_world_size() > 1:
            found = checkpointer.get_checkpoint_file() if checkpointer.has_checkpoint() else ""
            every = comm.all_gather(os.path.basename(found))
            if len(set(every)) > 1:
                key = self.plan.output_key
                raise RuntimeError(
                    f"--resume: the processes see different last checkpoints in {key} "
                    f"{self.plan.output_dir} ({every}, by global rank); a multi-machine run "
                    f"needs {key} on a file system that every machine shares"
                )
        checkpointer.resume_or_load(self.plan.init_weights, resume=resume)
        if resume and checkpointer.has_checkpoint():
            # The checkpoint holds the iteration that finished: go on from the next one.
            self.start_iter = self.iter + 1

    def train(self):
        """Train from ``start_iter`` to ``max_iter`` or until the clock's budget is spent;
        returns the final evaluation's results (empty without one)."""
        train_loop(self, self.start_iter, self.max_iter, self.clock)
        return getattr(self, "_last_eval_results", {})

    def run_step(self):
        self._trainer.iter = self.iter
        try:
            self._trainer.run_step()
        except FloatingPointError as e:  # raised by SimpleTrainer before the optimizer step
            last = self.checkpointer.get_checkpoint_file() or "none yet"
            raise FloatingPointError(
                f"{e}\nTraining stopped; nothing was saved from this step. The last good "
                f"checkpoint is {last}: resume from it with --resume after lowering "
                f"{self.plan.lr_key}, lengthening {self.plan.warmup_key} or fixing the data."
            ) from e
        # Each process skips in its own share of the data: log the total.
        skipped = torch.tensor([self._trainer.data_loader.skipped], dtype=torch.int64)
        if comm.get_world_size() > 1:
            dist.all_reduce(skipped, group=cpu_group())
        self.storage.put_scalar("data/skipped_images", int(skipped), smoothing_hint=False)

    def state_dict(self):
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._trainer.load_state_dict(state_dict["_trainer"])

    # The step trainer's parts, as DefaultTrainer exposes them (hooks read them).
    model = property(lambda self: self._trainer.model)
    data_loader = property(lambda self: self._trainer.data_loader)
    optimizer = property(lambda self: self._trainer.optimizer)


def _log_like_detectron2(name: str):
    """Show the INFO lines of the ``name`` loggers (the step trainer's choice, ...) where
    Detectron2's go: its setup_logger configures only its own logger. They still propagate, so
    that a caller's handlers (pytest's caplog) see them too."""
    ours = logging.getLogger(name)
    if ours.handlers:
        return
    ours.setLevel(logging.INFO)
    for handler in logging.getLogger("detectron2").handlers:
        ours.addHandler(handler)


def train_loop(trainer: TrainerBase, start_iter: int, max_iter: int, clock=None):
    """Detectron2's ``TrainerBase.train(start_iter, max_iter)``, whose loop also ends when a hook
    lowers ``trainer.max_iter`` (``clock``, once its budget is spent), and which records the
    iteration for the messages of a failed or orphaned process."""
    logger = logging.getLogger("detectron2.engine.train_loop")
    until = f"{max_iter} iterations"
    if clock is not None:
        until = f"at most {clock.budget / 60.0:g} training minutes or {until}"
    logger.info(f"Starting training from iteration {start_iter}, for {until}")
    trainer.iter = trainer.start_iter = start_iter
    trainer.max_iter = max_iter
    with EventStorage(start_iter) as trainer.storage:
        try:
            trainer.before_train()
            while trainer.iter < trainer.max_iter:
                note_iteration(trainer.iter)
                trainer.before_step()
                trainer.run_step()
                trainer.after_step()
                trainer.iter += 1
            note_iteration(trainer.iter)  # the final evaluation's, in a message
            # trainer.iter == trainer.max_iter tells after_train that training finished.
        except Exception:
            logger.exception("Exception during training:")
            raise
        finally:
            trainer.after_train()
