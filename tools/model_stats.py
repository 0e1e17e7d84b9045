#!/usr/bin/env python
"""Parameter count, GFLOPs, default boxes and prediction map sizes of dssd_d2 models.

    python tools/model_stats.py --config-file configs/PascalVOC-Detection/ssd321_R_101.yaml \
        [more config files] [--no-flops] [KEY VALUE ...]

One row per config (trailing KEY VALUE overrides apply to every config), as a Markdown table.
GFLOPs come from Detectron2's FlopCountAnalysis on one zero image of INPUT.FIXED_SIZE in inference
mode; like fvcore, one fused multiply-add counts as one flop. Default boxes and map sizes are
computed from shapes only (the backbone runs on the meta device). Weights are never loaded.
"""

import argparse

import torch
from fvcore.nn import parameter_count

from detectron2.modeling import build_model
from detectron2.utils.analysis import FlopCountAnalysis

import dssd_d2
from dssd_d2.modeling.backbone.layers import feature_sizes


def model_stats(cfg, flops: bool = True):
    """dict with params, backbone_params, gflops (None unless ``flops``), default_boxes,
    boxes_per_location and map_sizes."""
    if cfg.MODEL.SSD.FREEZE:
        # Freezing turns BatchNorm's scale and shift into buffers; count the architecture.
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.SSD.FREEZE = []
    model = build_model(cfg).eval()
    size = cfg.INPUT.FIXED_SIZE
    sizes = feature_sizes(model.backbone, (size, size), len(cfg.MODEL.PIXEL_MEAN))
    map_sizes = [sizes[f] for f in model.head_in_features]
    per_location = model.anchor_generator.num_cell_anchors
    params = parameter_count(model)
    stats = {
        "params": params[""],
        "backbone_params": params["backbone"],
        "default_boxes": sum(a * h * w for a, (h, w) in zip(per_location, map_sizes)),
        "map_sizes": map_sizes,
        "boxes_per_location": per_location,
        "gflops": None,
    }
    if flops:
        stats["gflops"] = count_gflops(model, size)
    return stats


def count_gflops(model, size: int) -> float:
    """GFLOPs of one zero image of ``size`` x ``size`` through ``model`` in inference mode."""
    image = torch.zeros(model.pixel_mean.shape[0], size, size, device=model.device)
    with torch.no_grad():
        analysis = FlopCountAnalysis(model.eval(), [{"image": image}])
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return analysis.total() / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", nargs="+", required=True)
    parser.add_argument("--no-flops", action="store_true", help="skip the (slow) FLOP count")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    args = parser.parse_args()

    print(
        "| config | params (M) | of which backbone (M) | GFLOPs | default boxes "
        "| boxes / location | maps |"
    )
    print("|---|---|---|---|---|---|---|")
    for config_file in args.config_file:
        cfg = dssd_d2.get_ssd_cfg(config_file, args.opts)
        cfg.MODEL.DEVICE = "cpu"
        stats = model_stats(cfg, flops=not args.no_flops)
        gflops = "-" if stats["gflops"] is None else f"{stats['gflops']:.2f}"
        maps = ", ".join(str(h) if h == w else f"{h}x{w}" for h, w in stats["map_sizes"])
        per_location = ", ".join(map(str, stats["boxes_per_location"]))
        print(
            f"| {config_file} | {stats['params'] / 1e6:.3f} | "
            f"{stats['backbone_params'] / 1e6:.3f} | {gflops} | "
            f"{stats['default_boxes']} | {per_location} | {maps} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
