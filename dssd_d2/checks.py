"""Build-time checks of a training run: what would otherwise fail at the first iteration, or train
silently wrong, raised before any data is read with the config key at fault named.

Both config flows call :func:`check_training_setup` (through the one training assembly,
:mod:`dssd_d2.engine.assembly`); a :class:`TrainingSetup` carries the values the checks need with
the names of their keys in the run's own config language (YAML: ``INPUT.FIXED_SIZE``, LazyConfig:
``dataloader.train.mapper.augmentations.image_size``). The model checks also run when the YAML
flow builds an SSD (``SSD.from_config``), so every tool that builds one gets them.
"""

import dataclasses
import functools
import logging
import math
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import ImageList
from detectron2.utils import comm

from .shapes import feature_sizes, meta_call

__all__ = [
    "LAZY_KEYS",
    "YAML_KEYS",
    "TrainingSetup",
    "check_batch_norm_batches",
    "check_dataset_classes",
    "check_input_size",
    "check_prior_steps",
    "check_training_setup",
    "yaml_norm_keys",
]

logger = logging.getLogger(__name__)

# The config keys that the messages name, per config flow.
YAML_KEYS = {
    "input_size": "INPUT.FIXED_SIZE",
    "batch": "SOLVER.IMS_PER_BATCH",
    "in_features": "MODEL.SSD.IN_FEATURES",
    "steps": "MODEL.ANCHOR_GENERATOR.STEPS",
    "freeze": "MODEL.SSD.FREEZE",
}
LAZY_KEYS = {
    "input_size": "dataloader.train.mapper.augmentations.image_size",
    "batch": "dataloader.train.total_batch_size",
    "in_features": "model.head_in_features",
    "steps": "model.anchor_generator.steps",
    "freeze": "model.freeze",
}
# get_norm names that build a BatchNorm computing batch statistics in training.
_BATCH_NORM_NAMES = ("BN", "SyncBN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N")
# BatchNorms whose statistics are taken over the batches of all processes.
_SYNC_BATCH_NORMS = (nn.SyncBatchNorm, NaiveSyncBatchNorm)
_MAX_LISTED = 8


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
    """What the checks need to know of a run besides its model.

    Attributes:
        input_size: side of the square that training images are resized to (None: unknown,
            the checks that need it are skipped).
        total_batch: images per iteration over all processes (Detectron2's convention).
        num_classes: the model's class count and ``num_classes_key`` its key (None: unchecked).
        datasets: registered datasets whose ``thing_classes`` must match ``num_classes``.
        check_steps: whether SSD prior steps must span the input (YAML:
            MODEL.ANCHOR_GENERATOR.CHECK_STEPS, False only to reproduce a released model).
        keys: config key names for the messages (:data:`YAML_KEYS`, :data:`LAZY_KEYS`).
        norm_keys: given BatchNorm module names, the ``*.NORM`` keys that build some of them,
            with each key's value and modules (YAML: :func:`yaml_norm_keys`); None: the
            message names no key.
    """

    input_size: Optional[int]
    total_batch: int
    num_classes: Optional[int] = None
    num_classes_key: str = ""
    datasets: Sequence[str] = ()
    check_steps: bool = True
    keys: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(YAML_KEYS))
    norm_keys: Optional[Callable[[List[str]], Dict[str, List[str]]]] = None

    def images_per_process(self) -> int:
        """Images in one forward pass of one process, whatever the gradient accumulation."""
        return max(self.total_batch // comm.get_world_size(), 1)


def check_training_setup(model: nn.Module, setup: TrainingSetup):
    """Every build-time check of a training run: the input size and prior steps against the
    model's maps, the datasets' classes, and the BatchNorm batches."""
    if setup.input_size is None:
        logger.warning(f"No {setup.keys['input_size']}: input size and BatchNorm checks skipped")
    elif isinstance(model, DenseDetector):
        size, keys = setup.input_size, setup.keys
        map_sizes = check_input_size(
            model.backbone, size, _in_channels(model), model.head_in_features, keys
        )
        from .modeling.anchor_generator import SSDAnchorGenerator  # the model imports this module

        explicit_steps = isinstance(model.anchor_generator, SSDAnchorGenerator)
        if explicit_steps and setup.check_steps:
            check_prior_steps(model.anchor_generator.strides, map_sizes, size, keys)
    if setup.num_classes is not None:
        for name in setup.datasets:
            check_dataset_classes(name, setup.num_classes, setup.num_classes_key)
    if setup.input_size is not None:
        check_batch_norm_batches(model, setup)


def _in_channels(model: nn.Module) -> int:
    mean = getattr(model, "pixel_mean", None)
    return mean.numel() if isinstance(mean, torch.Tensor) else 3


def check_input_size(
    backbone: nn.Module,
    size: int,
    in_channels: int,
    in_features: Sequence[str],
    keys: Mapping[str, str] = YAML_KEYS,
) -> List[Tuple[int, int]]:
    """Raise, naming the input size key, when the backbone cannot take a ``size`` square (padded
    as the model pads it) or gives an empty map: a shape-only pass, at build time, rather than a
    convolution error at the first iteration. Returns the (H, W) of each ``in_features`` map."""
    padded = ImageList.from_tensors(
        [torch.empty(in_channels, size, size, device="meta")],
        backbone.size_divisibility,
        padding_constraints=backbone.padding_constraints,
    ).tensor.shape[-2:]
    try:
        sizes = feature_sizes(backbone, tuple(padded), in_channels)
    except RuntimeError as e:
        raise ValueError(
            f"The backbone {type(backbone).__name__} cannot take {keys['input_size']}={size} "
            f"(input {tuple(padded)} after padding); a larger size is usually needed: {e}"
        ) from e
    empty = {f: sizes[f] for f in in_features if min(sizes[f]) < 1}
    if empty:
        raise ValueError(
            f"{keys['input_size']}={size} gives empty feature maps {empty} "
            f"({keys['in_features']})"
        )
    return [sizes[f] for f in in_features]


def check_prior_steps(
    steps: Sequence[float],
    map_sizes: Sequence[Tuple[int, int]],
    size: int,
    keys: Mapping[str, str] = YAML_KEYS,
):
    """Priors sit at (i + 0.5) * step on each map: steps left over from another input size
    would put them off the image or leave part of it uncovered, with no error anywhere. Each
    level's grid must span the input to within 25% (SSD300's own 38 x 8 = 304 is within 2%)."""
    for level, (step, (h, w)) in enumerate(zip(steps, map_sizes)):
        span = step * max(h, w)
        if not 0.75 * size <= span <= 1.25 * size:
            raise ValueError(
                f"{keys['steps']}[{level}]={step} on a {h}x{w} map spans {span:g} pixels, but "
                f"{keys['input_size']} is {size}; use steps of about {keys['input_size']} / "
                f"map size: {[round(size / max(m), 2) for m in map_sizes]}"
            )


def check_dataset_classes(dataset_name: str, num_classes: int, key: str):
    """Raise, naming ``key``, when the model's class count differs from the dataset's
    ``thing_classes``: too few classes crash on the first out-of-range label, too many waste
    outputs and usually mean the wrong dataset or config."""
    classes = MetadataCatalog.get(dataset_name).get("thing_classes", None)
    if classes is None or len(classes) == num_classes:
        return
    raise ValueError(
        f"{key} is {num_classes} but dataset {dataset_name!r} has {len(classes)} classes "
        f"{list(classes)}; set {key} {len(classes)}"
    )


def _batch_norm_inputs(model: nn.Module, size: int) -> Dict[str, Tuple[int, ...]]:
    """Input shape (C, H, W) of every training-mode BatchNorm that one ``size`` square (padded as
    the model pads it) passes through in ``model.backbone`` and, for a DenseDetector (SSD,
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
        image = ImageList.from_tensors(
            [torch.empty(_in_channels(model), size, size, device="meta")],
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


def check_batch_norm_batches(model: nn.Module, setup: TrainingSetup):
    """Raise at build time, naming the norm keys and the fixes, when training would crash in a
    BatchNorm: one that sees a single value per channel (a 1x1 map at one image per process:
    "Expected more than 1 value per channel when training"), or a ``SyncBN``
    (``torch.nn.SyncBatchNorm``, GPU only) in multi-process training on the CPU.

    Values per channel = images per process x H x W of the layer's input, times the number of
    processes for the synchronised BatchNorms (``naiveSyncBN``, ``SyncBN``).
    """
    images, world_size = setup.images_per_process(), comm.get_world_size()
    on_cpu = next(model.parameters()).device.type == "cpu"
    problems = {}
    for name, shape in _batch_norm_inputs(model, setup.input_size).items():
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
    keys = setup.keys
    listed = [f"  {name}: {problem}" for name, problem in list(problems.items())[:_MAX_LISTED]]
    if len(problems) > _MAX_LISTED:
        listed.append(f"  ... and {len(problems) - _MAX_LISTED} more")
    found = {}
    if setup.norm_keys is not None:
        logger.info("Finding the *.NORM keys that build them (one more model build) ...")
        found = setup.norm_keys(list(problems))
    built = {n for _, names in found.values() for n in names}
    unkeyed = [n for n in problems if n not in built]
    sources = [f"{key} {value!r}" for key, (value, _) in found.items()]
    if unkeyed:
        more = f" and {len(unkeyed) - 2} more" if len(unkeyed) > 2 else ""
        if setup.norm_keys is not None:  # BatchNorms fixed in code
            where, why = "code with no *.NORM key", "BatchNorm whatever the config"
        else:  # a LazyConfig: no rebuild tells which argument built which module
            where, why = "the model", "a norm argument in the model's config, or code"
        sources.append(
            f"{where} ({', '.join(unkeyed[:2])}{more}: {why}; {keys['freeze']} can freeze them)"
        )
    key = " / ".join(found) or "the norm setting"
    raise ValueError(
        f"Training would crash in these BatchNorm layers at {images} image(s) per process "
        f"({keys['batch']} {setup.total_batch} over {world_size} process(es), "
        f"{keys['input_size']} {setup.input_size}):\n" + "\n".join(listed) + "\n"
        f"They are built by {', '.join(sources)}. Fixes, one of:\n"
        f'  - {key} "GN": GroupNorm, statistics per image (32 groups of 2 channels or more), '
        "for layers trained from scratch;\n"
        f'  - {key} "FrozenBN": fixed statistics and affine, for layers loaded from a trained '
        "model (what the official DSSD code does when it fine-tunes at one image per GPU);\n"
        f'  - {key} "naiveSyncBN": statistics over the batches of all processes, on CPU (gloo) '
        'and GPU ("SyncBN" is GPU only), when processes x values per channel >= 2;\n'
        f"  - more images per process: {keys['batch']} >= {2 * world_size} for "
        f"{world_size} process(es)."
    )


# Norm names whose modules tell each other apart, so that one rebuild with a different one on
# each *.NORM key shows which key built which module.
_PROBES = {
    "FrozenBN": lambda m: isinstance(m, FrozenBatchNorm2d),
    "naiveSyncBN": lambda m: isinstance(m, NaiveSyncBatchNorm) and m._stats_mode == "",
    "naiveSyncBN_N": lambda m: isinstance(m, NaiveSyncBatchNorm) and m._stats_mode == "N",
    "nnSyncBN": lambda m: isinstance(m, nn.SyncBatchNorm),
}


def yaml_norm_keys(cfg: CfgNode) -> Callable[[List[str]], Dict[str, Tuple[str, List[str]]]]:
    """For :attr:`TrainingSetup.norm_keys`: the ``*.NORM`` keys of ``cfg`` naming a BatchNorm
    that build some of the given modules, with their values and those modules. The model is
    rebuilt with those keys set to norms of distinct classes (four keys per rebuild, the others
    "BN"), and each module's class names its key: no table of module names per backbone, at the
    price of a rebuild (seconds) that runs only to explain an error. Modules that no key builds
    (a BatchNorm fixed in code) are in no list."""

    def batch_norm_keys(node: CfgNode, prefix: str):
        for key, value in node.items():
            if isinstance(value, CfgNode):
                yield from batch_norm_keys(value, f"{prefix}{key}.")
            elif key.endswith("NORM") and value in _BATCH_NORM_NAMES:
                yield f"{prefix}{key}", value

    def norm_keys(module_names: List[str]) -> Dict[str, Tuple[str, List[str]]]:
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
            except Exception:  # noqa: BLE001  (a config that cannot take the probes: no key)
                continue
            for key, norm in probed.items():
                built = [n for n in module_names if _PROBES[norm](_submodule(probe, n))]
                if built:
                    found[key] = (candidates[key], built)
        return found

    return norm_keys


def _submodule(model: nn.Module, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError:  # not in a model built from the config: added in code
        return None
