"""Multi-process training through Detectron2's ``launch``, on GPU machines (NCCL) and on CPU-only
machines (gloo): DDP with device ids only on a GPU, and a build-time check that no training
BatchNorm would see a single value per channel."""

import functools
import gc
import logging
import math
import signal
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from detectron2.config import CfgNode
from detectron2.engine import create_ddp_model as d2_create_ddp_model
from detectron2.engine import launch as d2_launch
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import ImageList
from detectron2.utils import comm

from ..modeling.backbone.layers import meta_call

__all__ = [
    "check_batch_norm_batches",
    "create_ddp_model",
    "images_per_process",
    "launch",
    "launch_from_args",
]

# get_norm names that build a BatchNorm computing batch statistics in training.
_BATCH_NORM_NAMES = ("BN", "SyncBN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N")
# BatchNorms whose statistics are taken over the batches of all processes.
_SYNC_BATCH_NORMS = (nn.SyncBatchNorm, NaiveSyncBatchNorm)
_MAX_LISTED = 8

logger = logging.getLogger(__name__)


def launch(main_func, num_processes_per_machine: int, *, args=(), **kwargs):
    """Detectron2's ``launch``, in which each process frees its process groups once
    ``main_func`` has returned (see :func:`_free_process_groups`). torch ends the workers of a
    launcher that dies with a SIGINT (PR_SET_PDEATHSIG); a launcher started in the background
    by a shell (``&``, nohup) ignores SIGINT and its workers would inherit that and train on as
    orphans, so the launcher takes Python's default SIGINT handler back first."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    d2_launch(_free_groups_after, num_processes_per_machine, args=(main_func, *args), **kwargs)


def launch_from_args(main_func, args):
    """:func:`launch` of ``main_func(args)`` with the command line's process, machine and
    address arguments (Detectron2's ``default_argument_parser``)."""
    launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


def _free_groups_after(main_func, *args):
    main_func(*args)  # Detectron2's launch drops the result too
    if dist.is_available() and dist.is_initialized():
        _free_process_groups()


def _free_process_groups():
    """Destroy the process groups and drop every reference to them, so that gloo joins its
    worker threads now. Left running into the interpreter's exit, a worker thread that is
    still releasing a finished collective's tensors cannot take the GIL and aborts the
    process (SIGABRT, "terminate called without an active exception": 3 of 34 launches of
    tests/test_distributed.py's two-process runs, none of 30 once the groups were freed)."""
    dist.destroy_process_group()
    # Detectron2 keeps two references: the per-machine group of its launch, and the group of
    # comm.all_gather in a cache.
    comm._LOCAL_PROCESS_GROUP = None
    comm._get_global_gloo_group.cache_clear()
    gc.collect()  # DDP models left in reference cycles hold the default group


def create_ddp_model(model: nn.Module, **kwargs) -> nn.Module:
    """Detectron2's ``create_ddp_model`` (the model itself in a single process), with device
    ids only for a model on a GPU: Detectron2 always passes ``[local_rank]``, which DDP refuses
    for a CPU model, so ``--num-gpus N`` crashed on a machine without a GPU (gloo)."""
    if comm.get_world_size() > 1 and "device_ids" not in kwargs:
        on_gpu = next(model.parameters()).device.type == "cuda"
        kwargs["device_ids"] = [comm.get_local_rank()] if on_gpu else None
    return d2_create_ddp_model(model, **kwargs)


def images_per_process(cfg: CfgNode) -> int:
    """Images in one forward pass of one process: SOLVER.IMS_PER_BATCH is the total over all
    processes (Detectron2's convention), whatever SOLVER.ACCUMULATION_STEPS is."""
    return max(cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size(), 1)


def _batch_norm_inputs(model: nn.Module, cfg: CfgNode) -> Dict[str, Tuple[int, ...]]:
    """Input shape (C, H, W) of every training-mode BatchNorm that one FIXED_SIZE image (padded
    as the model pads it) passes through in ``model.backbone`` and, for a DenseDetector (SSD,
    RetinaNet), ``model.head``: a shape-only pass on the meta device."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return {}
    norms = {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.training}
    shapes = {}  # a module run on several maps (a head shared across levels) keeps the smallest

    def record(name, module, args):
        shape = tuple(args[0].shape[1:])
        if name not in shapes or math.prod(shape[1:]) < math.prod(shapes[name][1:]):
            shapes[name] = shape

    hooks = [m.register_forward_pre_hook(functools.partial(record, n)) for n, m in norms.items()]
    try:
        in_channels, size = len(cfg.MODEL.PIXEL_MEAN), cfg.INPUT.FIXED_SIZE
        image = ImageList.from_tensors(
            [torch.empty(in_channels, size, size, device="meta")],
            backbone.size_divisibility,
            padding_constraints=backbone.padding_constraints,
        ).tensor
        features = meta_call(backbone, image)
        if isinstance(model, DenseDetector):
            meta_call(model.head, [features[f] for f in model.head_in_features])
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


# Norm names whose modules tell each other apart, so that one rebuild with a different one on
# each *.NORM key shows which key built which module.
_PROBES = {
    "FrozenBN": lambda m: isinstance(m, FrozenBatchNorm2d),
    "naiveSyncBN": lambda m: isinstance(m, NaiveSyncBatchNorm) and m._stats_mode == "",
    "naiveSyncBN_N": lambda m: isinstance(m, NaiveSyncBatchNorm) and m._stats_mode == "N",
    "nnSyncBN": lambda m: isinstance(m, nn.SyncBatchNorm),
}


def _norm_keys(cfg: CfgNode, module_names: List[str]) -> Dict[str, List[str]]:
    """The ``*.NORM`` keys of ``cfg`` naming a BatchNorm that build some of the given modules,
    with those modules. The model is rebuilt with those keys set to norms of distinct classes
    (four keys per rebuild, the others "BN"), and each module's class names its key: no table of
    module names per backbone, at the price of a rebuild (seconds) that runs only to explain an
    error. Modules that no key builds (a BatchNorm fixed in code) are in no list."""

    def batch_norm_keys(node: CfgNode, prefix: str):
        for key, value in node.items():
            if isinstance(value, CfgNode):
                yield from batch_norm_keys(value, f"{prefix}{key}.")
            elif key.endswith("NORM") and value in _BATCH_NORM_NAMES:
                yield f"{prefix}{key}", value

    candidates = dict(batch_norm_keys(cfg, ""))
    keys, found = list(candidates), {}
    for start in range(0, len(keys), len(_PROBES)):
        probed = dict(zip(keys[start : start + len(_PROBES)], _PROBES))
        probe_cfg = cfg.clone()
        probe_cfg.defrost()
        for key in keys:
            probe_cfg.merge_from_list([key, probed.get(key, "BN")])
        probe_cfg.MODEL.DEVICE = "cpu"
        try:
            probe = build_model(probe_cfg)
        except Exception:  # noqa: BLE001  (a config that cannot take the probes: no key named)
            continue
        for key, norm in probed.items():
            built = [n for n in module_names if _PROBES[norm](_submodule(probe, n))]
            if built:
                found[key] = built
    return found


def _submodule(model: nn.Module, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError:  # not in a model built from the config: added in code
        return None


def check_batch_norm_batches(cfg: CfgNode, model: nn.Module):
    """Raise at build time, naming the ``*.NORM`` keys and the fixes, when training would crash
    in a BatchNorm: one that sees a single value per channel (a 1x1 map at one image per
    process: "Expected more than 1 value per channel when training"), or a ``SyncBN``
    (``torch.nn.SyncBatchNorm``, GPU only) in multi-process training on the CPU.

    Values per channel = images per process x H x W of the layer's input, times the number of
    processes for the synchronised BatchNorms (``naiveSyncBN``, ``SyncBN``).
    """
    images, world_size = images_per_process(cfg), comm.get_world_size()
    on_cpu = next(model.parameters()).device.type == "cpu"
    problems = {}
    for name, shape in _batch_norm_inputs(model, cfg).items():
        module = model.get_submodule(name)
        values = images * math.prod(shape[1:])
        if isinstance(module, _SYNC_BATCH_NORMS):
            values *= world_size
        if values < 2:
            problems[name] = f"input {'x'.join(map(str, shape))}, {values} value per channel"
        elif on_cpu and world_size > 1 and isinstance(module, nn.SyncBatchNorm):
            problems[name] = "torch.nn.SyncBatchNorm, which runs only on GPUs"
    if not problems:
        return
    listed = [f"  {name}: {problem}" for name, problem in list(problems.items())[:_MAX_LISTED]]
    if len(problems) > _MAX_LISTED:
        listed.append(f"  ... and {len(problems) - _MAX_LISTED} more")
    logger.info("Finding the *.NORM keys that build them (one more model build) ...")
    keys = _norm_keys(cfg, list(problems))
    built = {n for names in keys.values() for n in names}
    unkeyed = [n for n in problems if n not in built]
    sources = [f"{k} {functools.reduce(getattr, k.split('.'), cfg)!r}" for k in keys]
    if unkeyed:  # BatchNorms fixed in code: only freezing them or more images help
        more = f" and {len(unkeyed) - 2} more" if len(unkeyed) > 2 else ""
        sources.append(
            f"code with no *.NORM key ({', '.join(unkeyed[:2])}{more}: BatchNorm whatever the "
            "config; MODEL.SSD.FREEZE can freeze them)"
        )
    key = " / ".join(keys) or "the norm key"
    raise ValueError(
        f"Training would crash in these BatchNorm layers at {images} image(s) per process "
        f"(SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} over {world_size} process(es), "
        f"INPUT.FIXED_SIZE {cfg.INPUT.FIXED_SIZE}):\n" + "\n".join(listed) + "\n"
        f"They are built by {', '.join(sources)}. Fixes, one of:\n"
        f'  - {key} "GN": GroupNorm, statistics per image (32 groups of 2 channels or more), '
        "for layers trained from scratch;\n"
        f'  - {key} "FrozenBN": fixed statistics and affine, for layers loaded from a trained '
        "model (what the official DSSD code does when it fine-tunes at one image per GPU);\n"
        f'  - {key} "naiveSyncBN": statistics over the batches of all processes, on CPU (gloo) '
        'and GPU ("SyncBN" is GPU only), when processes x values per channel >= 2;\n'
        f"  - more images per process: SOLVER.IMS_PER_BATCH >= {2 * world_size} for "
        f"{world_size} process(es)."
    )
