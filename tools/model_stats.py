#!/usr/bin/env python
"""Parameter count (learnable, and with BatchNorm statistics as papers count from Caffe model
files), GFLOPs, default boxes and prediction map sizes of dssd_d2 models.

    python tools/model_stats.py --config-file configs/PascalVOC-Detection/ssd321_R_101.yaml \
        [more config files] [--no-flops] [--record results/model_stats.json] [KEY VALUE ...]

One row per config (trailing KEY VALUE overrides apply to every config), as a Markdown table;
``--record`` also writes the figures as JSON, from which tools/make_tables.py renders the model
zoo's structure table.
GFLOPs come from Detectron2's FlopCountAnalysis on one zero image of INPUT.FIXED_SIZE in inference
mode; like fvcore, one fused multiply-add counts as one flop. Default boxes and map sizes are
computed from shapes only (the backbone runs on the meta device). Weights are never loaded.
"""

import argparse
import json

import dssd_d2
from dssd_d2.analysis import model_stats
from dssd_d2.run_record import describe_machine


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", nargs="+", required=True)
    parser.add_argument("--no-flops", action="store_true", help="skip the (slow) FLOP count")
    parser.add_argument("--record", default="", help="also write the figures to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    args = parser.parse_args()
    # "--config-file a.yaml b.yaml KEY VALUE": the list ends at the first entry that is not a
    # config file; the rest are overrides.
    files = [f for f in args.config_file if f.endswith((".yaml", ".yml", ".py"))]
    overrides = args.config_file[len(files) :]
    if args.config_file[: len(files)] != files:
        parser.error(f"--config-file: config files first, then KEY VALUE: {args.config_file}")
    args.config_file, args.opts = files, overrides + args.opts

    print(
        "| config | params (M) | with BN statistics (M) | of which backbone (M) | GFLOPs "
        "| default boxes | boxes / location | maps |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rows = {}
    for config_file in args.config_file:
        cfg = dssd_d2.get_ssd_cfg(config_file, args.opts)
        cfg.MODEL.DEVICE = "cpu"
        stats = rows[config_file] = model_stats(cfg, flops=not args.no_flops)
        gflops = "-" if stats["gflops"] is None else f"{stats['gflops']:.2f}"
        maps = ", ".join(str(h) if h == w else f"{h}x{w}" for h, w in stats["map_sizes"])
        per_location = ", ".join(map(str, stats["boxes_per_location"]))
        print(
            f"| {config_file} | {stats['params'] / 1e6:.3f} | "
            f"{stats['params_with_bn_stats'] / 1e6:.3f} | "
            f"{stats['backbone_params'] / 1e6:.3f} | {gflops} | "
            f"{stats['default_boxes']} | {per_location} | {maps} |",
            flush=True,
        )
    if args.record:
        with open(args.record, "w") as f:
            json.dump({**describe_machine(), "overrides": args.opts, "configs": rows}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
