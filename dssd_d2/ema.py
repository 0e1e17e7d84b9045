"""An exponential moving average (EMA) of the weights, as Ultralytics YOLO trains with (MODEL.EMA).

After every optimizer step the EMA moves towards the model's floating-point parameters and
buffers (BatchNorm statistics included) by ``1 - d``, with Ultralytics' warm-up of the decay,
``d = decay * (1 - exp(-updates / tau))``, so that early on, when the weights change fast, the
EMA follows them closely. The EMA is kept in float32 (also when the model trains in bfloat16
autocast) and in the model's memory layout (channels-last or not), over the module inside DDP.

The EMA is the model that a run delivers: :class:`EMAHook` puts its weights into the model from
the end of each step to the start of the next, so the hooks that run in between (checkpoints,
evaluations, PreciseBN) see them: every checkpoint's ``model`` holds the EMA weights (so
``--eval-only``, fine-tuning from MODEL.WEIGHTS and export use them unchanged), evaluations score
the EMA, and after training the model holds it. The training weights and the update count ride
in the hook's state, which Detectron2 saves with the trainer's (the checkpoint's ``trainer``
entry), so that ``--resume`` continues both exactly. Turning MODEL.EMA off on a resumed run
continues from the EMA weights (the training weights are then ignored, with Detectron2's
warning).

The weights are exchanged by swapping tensor storage (``.data``), not by copying: a swap costs
microseconds per tensor whatever the model's size.
"""

import math
from typing import Dict, List

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from detectron2.engine import HookBase

__all__ = ["EMAHook", "ModelEMA", "ema_hooks"]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class ModelEMA:
    """float32 EMA of ``model``'s floating-point parameters and persistent buffers, by their
    ``state_dict`` names. Integer buffers (BatchNorm's batch counters) are not averaged."""

    def __init__(self, model: nn.Module, decay: float, tau: float):
        """
        Args:
            model: the model (DDP is unwrapped); its tensors are read in place.
            decay: the decay once warmed up, in [0, 1); the EMA averages over about
                ``1 / (1 - decay)`` steps.
            tau: steps over which the decay warms up (``1 - 1/e`` of ``decay`` at ``tau``
                updates); 0: ``decay`` from the first update.
        """
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"MODEL.EMA.DECAY must lie in [0, 1), got {decay}")
        if not tau >= 0.0:
            raise ValueError(f"MODEL.EMA.TAU must be >= 0, got {tau}")
        self.model = _unwrap(model)
        self.decay = decay
        self.tau = tau
        self.updates = 0
        # True while the model holds the EMA weights and ``self.weights`` the training weights.
        self.swapped = False
        self.reset()

    def _tensors(self) -> Dict[str, Tensor]:
        """The model's parameters and buffers themselves (not detached views), so that
        swapping their ``.data`` swaps what the model computes with; a tensor shared by two
        modules once (swapped twice it would not move)."""
        tensors, seen = {}, set()
        for name, value in self.model.state_dict(keep_vars=True).items():
            if value.is_floating_point() and id(value) not in seen:
                seen.add(id(value))
                tensors[name] = value
        return tensors

    def reset(self):
        """Start over from the model's current weights (updates = 0)."""
        if self.swapped:
            raise RuntimeError("ModelEMA.reset while the model holds the EMA weights")
        self._model_tensors = self._tensors()
        self.weights = {k: self._copy_of(v) for k, v in self._model_tensors.items()}
        self.updates = 0

    @staticmethod
    def _copy_of(tensor: Tensor) -> Tensor:
        """A float32 copy in the tensor's memory layout (empty_like keeps its strides)."""
        return torch.empty_like(tensor, dtype=torch.float32).copy_(tensor.detach())

    def decay_at(self, update: int) -> float:
        """The decay of the ``update``-th update (counted from 1)."""
        warm = 1.0 - math.exp(-update / self.tau) if self.tau > 0 else 1.0
        return self.decay * warm

    @torch.no_grad()
    def update(self) -> float:
        """One EMA step towards the model's current weights, ema = d * ema + (1 - d) * w;
        returns d."""
        if self.swapped:
            raise RuntimeError("ModelEMA.update while the model holds the EMA weights")
        self.updates += 1
        decay = self.decay_at(self.updates)
        ema = list(self.weights.values())
        torch._foreach_lerp_(ema, [v.float() for v in self._model_tensors.values()], 1 - decay)
        return decay

    @torch.no_grad()
    def swap(self):
        """Exchange the model's weights and the EMA's (by storage, no copy)."""
        for name, tensor in self._model_tensors.items():
            other = self.weights[name]
            if tensor.dtype == other.dtype:
                tensor.data, other.data = other.data, tensor.data
            else:  # a model in another precision keeps its dtype; the EMA stays float32
                held = tensor.detach().float()
                tensor.copy_(other)
                other.copy_(held)
        self.swapped = not self.swapped

    def state_dict(self) -> dict:
        return {
            "updates": self.updates,
            "model_holds_ema": self.swapped,
            "weights": dict(self.weights),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict):
        """Restore after the model's own weights were loaded from the same checkpoint; when that
        ``model`` entry is the EMA (``model_holds_ema``), the training weights go back into the
        model. Leaves the model holding the training weights."""
        self.swapped = False  # the model's tensors hold what was just loaded into them
        self._model_tensors = self._tensors()
        missing = set(self._model_tensors) - set(state["weights"])
        if missing:
            raise KeyError(f"the EMA state of the checkpoint lacks weights {sorted(missing)}")
        self.weights = {
            k: torch.empty_like(v, dtype=torch.float32).copy_(state["weights"][k])
            for k, v in self._model_tensors.items()
        }
        self.updates = state["updates"]
        if state["model_holds_ema"]:
            self.swapped = True
            self.swap()


class EMAHook(HookBase):
    """Keeps a :class:`ModelEMA` of the trainer's model and puts its weights into the model
    between steps (see the module's docstring). Register it first: its ``after_step`` then runs
    before every other hook's (all of them see the EMA weights), and the training clock
    (SOLVER.MAX_TRAINING_MINUTES) counts the EMA updates as training time."""

    def __init__(self, model: nn.Module, decay: float, tau: float):
        self.ema = ModelEMA(model, decay, tau)
        self._restored = False

    def before_train(self):
        # A run that did not resume starts its EMA from its initial weights (e.g. MODEL.WEIGHTS,
        # loaded after this hook was built).
        if not self._restored:
            self.ema.reset()

    def before_step(self):
        if self.ema.swapped:  # training goes on from the training weights
            self.ema.swap()

    def after_step(self):
        decay = self.ema.update()
        self.ema.swap()
        self.trainer.storage.put_scalar("ema_decay", decay, smoothing_hint=False)

    def after_train(self):
        # A finished run (also one resumed when already finished) ends with the EMA in the model,
        # for the final evaluation and whoever uses the model next.
        finished = self.trainer.iter >= self.trainer.max_iter
        if finished != self.ema.swapped:
            self.ema.swap()

    def state_dict(self):
        return self.ema.state_dict()

    def load_state_dict(self, state_dict):
        self.ema.load_state_dict(state_dict)
        self._restored = True


def ema_hooks(cfg, model: nn.Module) -> List[HookBase]:
    """``[EMAHook]`` when MODEL.EMA.ENABLED, else ``[]``: the hooks to put first in a trainer's
    ``build_hooks``."""
    ema = cfg.MODEL.EMA
    return [EMAHook(model, ema.DECAY, ema.TAU)] if ema.ENABLED else []
