#!/usr/bin/env python
"""Box sizes of a config's training set against its priors, and prior sizes fitted to them.

    python tools/prior_stats.py --config-file configs/BCCD/tiny_dsod256_cpu.yaml [KEY VALUE ...]

Prints, at the config's input size (each image resized to the INPUT.FIXED_SIZE square, without
augmentation): the training boxes' size sqrt(w * h) and aspect ratio w / h per class; the priors
the model builds per level; per class the fraction of boxes whose best prior IoU is below
MODEL.SSD.IOU_THRESHOLD (such a box is matched only by the one prior forced onto it), for the
config's priors and for fitted ones; and the fitted MIN_SIZES / MAX_SIZES as overrides to paste
after the same command line (dssd_d2/prior_stats.py says how they are fitted). The sizes are
those at test time: in training, the min-IoU crop enlarges objects and zoom-out shrinks them.
"""

import argparse
import logging

import dssd_d2
from dssd_d2.prior_stats import (
    QUANTILES,
    PriorGrid,
    best_prior_ious,
    box_size_table,
    suggest_prior_sizes,
    training_boxes,
    unmatched_fractions,
)


def print_size_table(rows):
    percentiles = " | ".join(f"p{q}" for q in QUANTILES)
    print(f"| class | boxes | min | {percentiles} | max | w/h {percentiles} |")
    print("|---" * (4 + 2 * len(QUANTILES)) + "|")
    for row in rows:
        if not row["count"]:
            print(f"| {row['class']} | 0 |" + " |" * (2 + 2 * len(QUANTILES)))
            continue
        sizes = " | ".join(f"{row[k]:.1f}" for k in ["min", *[f"p{q}" for q in QUANTILES], "max"])
        ratios = " | ".join(f"{row[f'ratio_p{q}']:.2f}" for q in QUANTILES)
        print(f"| {row['class']} | {row['count']} | {sizes} | {ratios} |")


def print_levels(grid: PriorGrid):
    print("| level | map | step | priors / location | sizes sqrt(w * h) | ratios w / h |")
    print("|---|---|---|---|---|---|")
    for i, level in enumerate(grid.levels()):
        h, w = level["map"]
        sizes = ", ".join(f"{s:g}" for s in level["sizes"])
        ratios = ", ".join(f"{r:g}" for r in level["ratios"])
        print(
            f"| {i} | {h}x{w} | {level['step']:g} | {level['per_location']} | {sizes} | {ratios} |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    cfg = dssd_d2.get_ssd_cfg(args.config_file, args.opts)
    boxes, classes, class_names = training_boxes(cfg)
    size, threshold = cfg.INPUT.FIXED_SIZE, cfg.MODEL.SSD.IOU_THRESHOLD
    print(
        f"{len(boxes)} boxes of {', '.join(cfg.DATASETS.TRAIN)} at {size}x{size} "
        "(INPUT.FIXED_SIZE), size sqrt(w * h) in pixels:"
    )
    size_rows = box_size_table(boxes, classes, class_names)
    print_size_table(size_rows)

    grid = PriorGrid.from_config(cfg)
    print(f"\nPriors of {cfg.MODEL.ANCHOR_GENERATOR.NAME} ({len(grid.priors())} in all):")
    print_levels(grid)

    columns = {"config": grid}
    try:
        min_sizes, max_sizes = suggest_prior_sizes(grid, boxes, classes, threshold)
        columns["fitted"] = grid.with_sizes(min_sizes, max_sizes)
    except ValueError as e:
        min_sizes = None
        print(f"\nNo fitted sizes: {e}")
    print(f"\nBoxes whose best prior IoU is below {threshold:g} (matched only by a forced prior):")
    print("| class | " + " | ".join(f"{name} priors" for name in columns) + " |")
    print("|---" * (1 + len(columns)) + "|")
    fractions = {
        name: unmatched_fractions(
            best_prior_ious(boxes, g.priors()), classes, len(class_names), threshold
        )
        for name, g in columns.items()
    }
    for c, class_name in enumerate(class_names):
        cells = " | ".join(f"{100 * fractions[name][c]:.1f}%" for name in columns)
        print(f"| {class_name} | {cells} |")
    if min_sizes is None:
        return
    first_step = grid.levels()[0]["step"]
    for c, row in enumerate(size_rows[:-1]):
        if row["count"] and fractions["fitted"][c] > 0.2 and row["p50"] < 2 * first_step:
            print(
                f"{row['class']}: {100 * fractions['fitted'][c]:.0f}% still unmatched; its median "
                f"size, {row['p50']:.0f} px, is under twice the first level's step "
                f"({first_step:g} px): a larger INPUT.FIXED_SIZE or a finer first map would "
                "match more of them than prior sizes can."
            )
    print("\nFitted priors:")
    print_levels(columns["fitted"])
    print("\nOverrides (append to the command line):")
    print(
        f'MODEL.ANCHOR_GENERATOR.MIN_SIZES "{min_sizes}" '
        f'MODEL.ANCHOR_GENERATOR.MAX_SIZES "{max_sizes}"'
    )


if __name__ == "__main__":
    main()
