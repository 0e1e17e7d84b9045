"""SSD's learning-rate schedule (LazyConfig): linear warmup, then x0.1 at each step."""

from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler


def multistep(steps, max_iter, warmup_iters=500):
    """The YAML configs' SOLVER.STEPS / MAX_ITER / WARMUP_ITERS (warmup factor 0.001, gamma 0.1).

    Like every Detectron2 LazyConfig schedule it is scale-invariant: the steps are fractions of
    ``max_iter``, applied to whatever ``train.max_iter`` the run uses.
    """
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[0.1**k for k in range(len(steps) + 1)],
            milestones=list(steps),
            num_updates=max_iter,
        ),
        warmup_length=warmup_iters / max_iter,
        warmup_method="linear",
        warmup_factor=0.001,
    )
