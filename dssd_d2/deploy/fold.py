"""Fold BatchNorm into the convolution before it (DSSD paper, Eq. 1-4), for inference.

In eval mode a BatchNorm after a convolution is a per-channel affine map, so it can be merged
into the convolution's weights and bias:

    w' = w * gamma / sqrt(var + eps),    b' = (b - mean) * gamma / sqrt(var + eps) + beta

which removes one pass over every normalised feature map. A BatchNorm whose input does not come
straight from a convolution (DSOD's pre-activation BN-ReLU-conv over a concatenation, or a BN
after an activation) cannot be folded and is left as it is.
"""

import logging
from collections import Counter
from collections.abc import Iterator

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from detectron2.layers import FrozenBatchNorm2d

__all__ = ["count_batch_norms", "fold_batch_norm", "fold_conv_bn"]

logger = logging.getLogger(__name__)

BATCH_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d)


@torch.no_grad()
def fold_conv_bn(conv: nn.Module, bn: nn.Module):
    """Merge eval-mode ``bn`` into ``conv`` (nn.Conv2d or nn.ConvTranspose2d), in place, with
    PyTorch's ``fuse_conv_bn_weights`` computed in float64 for accuracy."""
    if bn.running_mean is None:
        raise ValueError(f"{bn} has no running statistics (track_running_stats=False)")
    transposed = isinstance(conv, nn.ConvTranspose2d)
    weight = conv.weight.double()
    groups = conv.groups if transposed else 1
    if groups > 1:  # (in, out / groups, kh, kw) -> (in / groups, out, kh, kw): outputs on dim 1
        weight = weight.unflatten(0, (groups, -1)).transpose(0, 1).flatten(1, 2)
    weight, bias = fuse_conv_bn_weights(
        weight,
        None if conv.bias is None else conv.bias.double(),
        bn.running_mean.double(),
        bn.running_var.double(),
        bn.eps,
        None if bn.weight is None else bn.weight.double(),
        None if bn.bias is None else bn.bias.double(),
        transpose=transposed,
    )
    if groups > 1:
        weight = weight.unflatten(1, (groups, -1)).transpose(0, 1).flatten(0, 1)
    dtype, trainable = conv.weight.dtype, conv.weight.requires_grad
    conv.weight = nn.Parameter(weight.to(dtype).contiguous(), trainable)
    conv.bias = nn.Parameter(bias.to(dtype), trainable)


def _is_plain_conv(module: nn.Module) -> bool:
    """A convolution whose output is its raw result (Detectron2's Conv2d may add norm/act)."""
    return (
        isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))
        and getattr(module, "norm", None) is None
        and getattr(module, "activation", None) is None
    )


def _last_leaf(module: nn.Module) -> nn.Module:
    while isinstance(module, nn.Sequential) and len(module):
        module = module[-1]
    return module


def _first_leaf(module: nn.Module) -> tuple[nn.Module, nn.Sequential | None]:
    """The first module run by ``module`` and the Sequential holding it (None: ``module``)."""
    parent = None
    while isinstance(module, nn.Sequential) and len(module):
        parent, module = module, module[0]
    return module, parent


class _ChildrenAsLeaves(fx.Tracer):
    """Traces one module's own forward: every submodule it calls stays a single node."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return True


def _chained_pairs(module: nn.Module) -> Iterator[tuple[nn.Module, nn.Module, str]]:
    """(producer, consumer, consumer's name in ``module``) for submodules that ``module``'s
    forward runs one after the other: the consumer's only input is the producer's output and
    nothing else reads that output (consecutive entries of an nn.Sequential, DSOD's
    bottleneck-then-3x3 dense layer, ...).

    Found by tracing the forward with torch.fx, one level deep, when the module has a child
    ending in a convolution and one starting with a BatchNorm. A forward that symbolic tracing
    cannot follow (control flow on tensor values, iteration over inputs) gives no pairs; the
    modules it calls are still visited on their own.
    """
    children = list(module.children())
    producers = any(_is_plain_conv(_last_leaf(child)) for child in children)
    if not producers or not any(isinstance(_first_leaf(c)[0], BATCH_NORMS) for c in children):
        return  # nothing to fold here: skip tracing, which is the slow part
    try:
        graph = _ChildrenAsLeaves().trace(module)
    except Exception:  # fx raises TraceError, TypeError, ... on code it cannot follow
        return
    calls = [node for node in graph.nodes if node.op == "call_module"]
    times_called = Counter(node.target for node in calls)
    for node in calls:
        producer = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if (
            isinstance(producer, fx.Node)
            and producer.op == "call_module"
            and len(producer.users) == 1
            and times_called[producer.target] == times_called[node.target] == 1
        ):
            consumer = module.get_submodule(node.target)
            yield module.get_submodule(producer.target), consumer, node.target


def count_batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, BATCH_NORMS) for m in model.modules())


@torch.no_grad()
def fold_batch_norm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm (BatchNorm2d, SyncBatchNorm, FrozenBatchNorm2d) that directly follows
    a convolution into it; returns ``model``, changed in place and put in eval mode.

    For inference only: folding uses the running statistics, which is what eval mode computes,
    and the folded model no longer has the BatchNorm layers to train. Two places are recognised:
    Detectron2's ``Conv2d(..., norm=BN)`` (ResNet, FPN, DSSD, our heads and extra layers) and a
    module ending in a convolution whose output only feeds a module starting with a BatchNorm
    (consecutive entries of an ``nn.Sequential``, also nested, DSOD's dense layers: see
    :func:`_chained_pairs`). Folded BatchNorms become ``nn.Identity``.
    """
    model.eval()
    before = count_batch_norms(model)
    for module in list(model.modules()):
        norm = getattr(module, "norm", None)
        if isinstance(module, nn.Conv2d) and isinstance(norm, BATCH_NORMS):
            fold_conv_bn(module, norm)
            module.norm = None  # Detectron2's Conv2d applies norm, then activation
        for producer, consumer, name in _chained_pairs(module):
            conv = _last_leaf(producer)
            bn, bn_parent = _first_leaf(consumer)
            if _is_plain_conv(conv) and isinstance(bn, BATCH_NORMS):
                fold_conv_bn(conv, bn)
                if bn_parent is None:
                    parent, _, attribute = name.rpartition(".")
                    setattr(module.get_submodule(parent), attribute, nn.Identity())
                else:
                    bn_parent[0] = nn.Identity()
    after = count_batch_norms(model)
    logger.info(f"Folded {before - after} of {before} BatchNorm layers into convolutions.")
    return model
