"""Prior (default box) sizes against the data (tools/prior_stats.py): the training set's box sizes
at the model's input size, per class; how well the config's priors cover them; and prior sizes
fitted to them.

A ground-truth box whose best prior has an IoU below MODEL.SSD.IOU_THRESHOLD gets only the one
prior the matcher forces onto it, and a poorly fitting one: its class trains on a handful of
badly placed positives. On BCCD, priors of 64 px cannot match 24 px platelets (SSDlite's AP50 on
platelets rose from 9 to 62 with smaller first priors).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_anchor_generator, build_model
from detectron2.structures import Boxes, pairwise_iou

from .analysis import default_boxes
from .data.validation import clean_annotations
from .modeling.anchor_generator import SSDAnchorGenerator

__all__ = [
    "QUANTILES",
    "PriorGrid",
    "best_prior_ious",
    "box_size_table",
    "suggest_prior_sizes",
    "training_boxes",
    "unmatched_fractions",
]

# Percentiles of the box sizes and aspect ratios that box_size_table reports.
QUANTILES = (10, 50, 90)


def training_boxes(cfg):
    """The boxes of cfg.DATASETS.TRAIN as the model sees them without augmentation: each image
    resized to the INPUT.FIXED_SIZE square (aspect ratio not kept). Returns XYXY boxes (N, 4),
    their class ids (N,) and the class names; unusable boxes are dropped as in training."""
    size = cfg.INPUT.FIXED_SIZE
    boxes, classes = [], []
    for name in cfg.DATASETS.TRAIN:
        for record in DatasetCatalog.get(name):
            h, w = record["height"], record["width"]
            kept, xyxy = clean_annotations(record["annotations"], record["file_name"], (h, w))
            boxes.append(xyxy * [size / w, size / h, size / w, size / h])
            classes.extend(a["category_id"] for a in kept)
    class_names = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_classes
    return np.concatenate(boxes).reshape(-1, 4), np.asarray(classes, dtype=int), class_names


def _sizes_and_ratios(boxes: np.ndarray):
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return np.sqrt(w * h), w / h


def box_size_table(boxes: np.ndarray, classes: np.ndarray, class_names) -> list[dict]:
    """Per class, then for all boxes: count, size sqrt(w * h) (min, 10/50/90th percentiles,
    max) and aspect ratio w / h (10/50/90th percentiles)."""
    sizes, ratios = _sizes_and_ratios(boxes)
    rows = []
    for name, mask in [(n, classes == c) for c, n in enumerate(class_names)] + [
        ("all", np.ones(len(classes), dtype=bool))
    ]:
        row = {"class": name, "count": int(mask.sum())}
        if mask.any():
            s, r = sizes[mask], ratios[mask]
            row.update(min=s.min(), max=s.max())
            row.update({f"p{q}": np.percentile(s, q) for q in QUANTILES})
            row.update({f"ratio_p{q}": np.percentile(r, q) for q in QUANTILES})
        rows.append(row)
    return rows


def best_prior_ious(boxes: np.ndarray, priors: torch.Tensor, chunk: int = 1024) -> np.ndarray:
    """For each box, the IoU of the prior that overlaps it most."""
    best = [
        pairwise_iou(
            Boxes(torch.as_tensor(boxes[i : i + chunk], dtype=torch.float32)), Boxes(priors)
        )
        .max(dim=1)
        .values
        for i in range(0, len(boxes), chunk)
    ]
    return torch.cat(best).numpy() if best else np.zeros(0)


def unmatched_fractions(best_ious: np.ndarray, classes: np.ndarray, num_classes: int, threshold):
    """Per class, the fraction of its boxes whose best prior IoU is below ``threshold`` (nan for a
    class without boxes)."""
    return np.array(
        [
            (best_ious[classes == c] < threshold).mean() if (classes == c).any() else np.nan
            for c in range(num_classes)
        ]
    )


@dataclass
class PriorGrid:
    """The priors a config's model builds on its feature maps at INPUT.FIXED_SIZE, and the same
    grid with other MIN_SIZES / MAX_SIZES. Read from the anchor generator itself, so the sizes
    are right when the config's keys are empty or give one value for all levels, and CLIP /
    CLAMP_SIZES apply."""

    cfg: object
    feature_shapes: list
    map_sizes: list
    generator: torch.nn.Module

    @classmethod
    def from_config(cls, cfg) -> "PriorGrid":
        model = build_model(cfg)
        map_sizes = default_boxes(model, cfg.INPUT.FIXED_SIZE)["map_sizes"]
        shapes = [model.backbone.output_shape()[f] for f in model.head_in_features]
        return cls(cfg, shapes, [tuple(s) for s in map_sizes], model.anchor_generator)

    def priors(self) -> torch.Tensor:
        """Every prior, XYXY in input pixels, (R, 4)."""
        features = [torch.empty(1, 1, h, w) for h, w in self.map_sizes]
        return Boxes.cat(self.generator(features)).tensor

    def levels(self) -> list[dict]:
        """Per level: map size, step, priors per location, their sizes sqrt(w * h) and ratios."""
        levels = []
        for cell, stride, map_size in zip(
            self.generator.cell_anchors, self.generator.strides, self.map_sizes
        ):
            sizes, ratios = _sizes_and_ratios(cell.numpy())
            levels.append(
                {
                    "map": map_size,
                    "step": stride,
                    "per_location": len(cell),
                    "sizes": sorted(set(np.round(sizes, 1).tolist())),
                    "ratios": sorted(set(np.round(ratios, 2).tolist())),
                }
            )
        return levels

    def with_sizes(self, min_sizes, max_sizes) -> "PriorGrid":
        """The same levels, steps, ratios and options with other min and max sizes."""
        _check_ssd_priors(self.cfg)
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.MODEL.ANCHOR_GENERATOR.MIN_SIZES = list(min_sizes)
        cfg.MODEL.ANCHOR_GENERATOR.MAX_SIZES = list(max_sizes)
        generator = build_anchor_generator(cfg, self.feature_shapes)
        return PriorGrid(cfg, self.feature_shapes, self.map_sizes, generator)


def _check_ssd_priors(cfg):
    name = cfg.MODEL.ANCHOR_GENERATOR.NAME
    if name != "SSDAnchorGenerator":
        raise ValueError(
            f"MODEL.ANCHOR_GENERATOR.NAME is {name!r}: prior sizes are fitted for "
            "SSDAnchorGenerator only"
        )


def _class_balanced_sample(classes: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of at most ``per_class`` boxes of each class (seeded)."""
    rng = np.random.RandomState(0)
    picks = [np.flatnonzero(classes == c) for c in np.unique(classes)]
    picks = [p if len(p) <= per_class else rng.choice(p, per_class, replace=False) for p in picks]
    return np.sort(np.concatenate(picks))


def _level_best_ious(grid: PriorGrid, boxes: np.ndarray):
    """A function (level, min size, max size) -> each box's best IoU with the priors of that
    level, built with the grid's settings and these sizes. Without CLIP only one location per box
    is measured: the overlap of two boxes of fixed shapes shrinks as their centres part on either
    axis, so the best prior of each shape is at the centre nearest to the box's on both axes."""
    args = SSDAnchorGenerator.from_config(grid.cfg, grid.feature_shapes)
    num_levels = len(grid.map_sizes)
    ratios = list(args["aspect_ratios"])
    if ratios and not isinstance(ratios[0], Sequence):
        ratios = [ratios]
    per_level = {"aspect_ratios": ratios, "steps": args["steps"], "offsets": args.get("offsets")}
    per_level = {k: _per_level_list(v, num_levels) for k, v in per_level.items() if v}
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (N, 2): x, y

    def best_ious(level: int, min_size: float, max_size: float) -> np.ndarray:
        level_args = {k: [v[level]] for k, v in per_level.items()}
        generator = SSDAnchorGenerator(
            **{**args, **level_args, "min_sizes": [min_size], "max_sizes": [max_size]}
        )
        h, w = grid.map_sizes[level]
        if generator.clip_size:  # clipped priors: measure them all
            return best_prior_ious(boxes, generator([torch.empty(1, 1, h, w)])[0].tensor)
        step = generator.strides[0]
        offset = generator.offsets[0] if getattr(generator, "offsets", None) else generator.offset
        nearest = (np.clip(np.round(centres / step - offset), 0, [w - 1, h - 1]) + offset) * step
        cell = next(iter(generator.cell_anchors)).numpy()  # (A, 4), centred at 0
        priors = cell[None] + np.tile(nearest, 2)[:, None]  # (N, A, 4)
        return _paired_ious(boxes[:, None], priors).max(axis=1).astype(np.float32)

    return best_ious


def _paired_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of XYXY boxes a[i] and b[i] (broadcast)."""
    inter = np.clip(
        np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None
    )
    inter = inter[..., 0] * inter[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter)


def suggest_prior_sizes(
    grid: PriorGrid,
    boxes: np.ndarray,
    classes: np.ndarray,
    threshold: float,
    per_class: int = 1000,
    sweeps: int = 4,
):
    """MIN_SIZES and MAX_SIZES (whole pixels) fitted to the boxes.

    Starting from the config's sizes, each level in turn takes the (min size, max size) pair
    that minimises the root mean square over classes of the fraction of boxes whose best prior
    IoU is below ``threshold`` (then the worst class's fraction): classes weigh the same, so a
    small, rare one (BCCD's platelets) counts as much as a frequent one, and the square favours
    no class left far behind over a lower mean. Min sizes come from a geometric grid from the
    smallest box to 1.5x the largest and stay increasing over the levels; max sizes are 1.5, 2 or
    3 times them, or the config's ratio. Levels, steps, aspect ratios and priors per location
    stay the config's (they follow the backbone's maps and the head); a level that no box needs
    keeps its sizes. Measured on at most ``per_class`` boxes of each class (seeded); never worse
    there than the config's sizes.
    """
    _check_ssd_priors(grid.cfg)
    sample = _class_balanced_sample(classes, per_class)
    boxes, classes = boxes[sample], classes[sample]
    class_masks = np.stack([classes == c for c in np.unique(classes)])  # (C, N)
    num_levels = len(grid.map_sizes)
    sizes, _ = _sizes_and_ratios(boxes)
    min_options = np.unique(np.round(_geometric(max(sizes.min(), 2.0), 1.5 * sizes.max(), 24)))
    level_best_ious = _level_best_ious(grid, boxes)
    args = SSDAnchorGenerator.from_config(grid.cfg, grid.feature_shapes)
    options, ious = [], []
    min_sizes, max_sizes = (
        _per_level_list(args[k], num_levels) for k in ("min_sizes", "max_sizes")
    )
    for level, (lo, hi) in enumerate(zip(min_sizes, max_sizes)):
        ratios = [hi / lo, 1.5, 2.0, 3.0] if hi else [0.0]  # no max size: no extra prior
        pairs = [(float(lo), float(hi))]
        pairs += [(m, float(round(m * r))) for m in min_options for r in ratios]
        options.append(np.array(pairs))
        ious.append(np.stack([level_best_ious(level, *p) for p in pairs]))

    chosen = [0] * num_levels  # the config's sizes
    for _ in range(sweeps):
        before = list(chosen)
        for k in range(num_levels):
            others = [ious[j][chosen[j]] for j in range(num_levels) if j != k]
            best = np.maximum(np.max(others, axis=0), ious[k])  # (P, N)
            unmatched = ((best < threshold)[:, None, :] & class_masks).sum(-1)  # (P, C)
            fractions = np.round(unmatched / class_masks.sum(-1), 9)
            lower = options[k - 1][chosen[k - 1]] if k > 0 else np.zeros(2)
            upper = options[k + 1][chosen[k + 1]] if k + 1 < num_levels else np.zeros(2)
            upper = np.where(upper > 0, upper, np.inf)  # max size 0: no extra prior
            allowed = ((options[k] > lower) & (options[k] < upper) | (options[k] == 0)).all(1)
            allowed[chosen[k]] = True
            # root mean square over classes, then the worst class; stable: ties keep the current
            order = np.lexsort((fractions.max(1), np.round((fractions**2).mean(1), 9)))
            chosen[k] = int(next(i for i in order if allowed[i]))
        if chosen == before:
            break
    pairs = [options[k][i] for k, i in enumerate(chosen)]
    return [int(lo) for lo, _ in pairs], [int(hi) for _, hi in pairs]


def _per_level_list(values, num_levels: int) -> list:
    """A per-level config list; one value stands for every level."""
    values = list(values)
    return values * num_levels if len(values) == 1 else values


def _geometric(lo: float, hi: float, count: int) -> np.ndarray:
    return lo * (hi / lo) ** np.linspace(0.0, 1.0, count)
