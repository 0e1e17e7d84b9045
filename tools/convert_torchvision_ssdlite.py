#!/usr/bin/env python
"""Convert a torchvision ssdlite320_mobilenet_v3_large state dict into our SSDlite's keys.

    python tools/convert_torchvision_ssdlite.py ssdlite320_mobilenet_v3_large_coco-a79551df.pth \
        pretrained/ssdlite320_coco.pkl [--config-file configs/COCO-Detection/ssdlite320_mobilenet_v3.yaml]

The input is torchvision's COCO file (you download it; nothing is fetched here) or any state dict
of ``ssdlite320_mobilenet_v3_large(num_classes=C)``. The output is a Detectron2 checkpoint (.pkl)
for MODEL.WEIGHTS of the config (default: our COCO SSDlite320), whose MODEL.SSD.NUM_CLASSES is
set from the file: 80 for torchvision's 91 COCO labels, which map to Detectron2's contiguous
classes through the COCO category ids; C - 1 otherwise, in order. Background moves from
torchvision's first class to our last.

Keys: torchvision's ``backbone.*`` is our ``backbone.extractor.*`` (the same torchvision module);
each head level's ``module_list.i.{0.0, 0.1, 1}`` (depthwise conv, its BatchNorm, 1x1 conv) is our
``cls_score.i`` / ``bbox_pred.i`` ``{0, 0.norm, 1}`` (MODEL.SSD_HEAD.PREDICTOR "separable").
torchvision's BatchNorms use eps 0.001; where ours use another eps, the running variance is
shifted by the difference, which keeps inference exactly torchvision's. Unknown or missing keys
and shape mismatches are errors naming them. torchvision's priors also clamp each prior's width
and height to the image: that is a prior-generator option, not a weight.
"""

import argparse
import os
import re

import torch

from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from dssd_d2 import get_ssd_cfg
from dssd_d2.engine.checkpoint import save_converted_weights

DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "configs/COCO-Detection/ssdlite320_mobilenet_v3.yaml",
)
TORCHVISION_BN_EPS = 0.001
_HEAD_KEY = re.compile(r"head\.(classification|regression)_head\.module_list\.(\d+)\.(.+)")
_HEAD_PARTS = {"0.0.": "0.", "0.1.": "0.norm.", "1.": "1."}
_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def torchvision_classes(state_dict):
    """(C, anchors per location of level 0) of a torchvision SSDlite state dict, C with background."""
    try:
        cls_bias = state_dict["head.classification_head.module_list.0.1.bias"]
        box_bias = state_dict["head.regression_head.module_list.0.1.bias"]
    except KeyError as e:
        raise KeyError(f"not a torchvision SSDlite state dict: no {e}") from None
    anchors = box_bias.numel() // 4
    return cls_bias.numel() // anchors, anchors


def class_order(num_torchvision_classes: int):
    """torchvision label of each of our classes, then 0 (background) for our last index."""
    if num_torchvision_classes == 91:  # COCO: torchvision's label is the COCO category id
        to_contiguous = MetadataCatalog.get("coco_2017_train").thing_dataset_id_to_contiguous_id
        labels = sorted(to_contiguous, key=to_contiguous.get)
    else:
        labels = list(range(1, num_torchvision_classes))
    return labels + [0]


def our_key(key: str) -> str:
    if key.startswith("backbone."):
        return "backbone.extractor." + key[len("backbone.") :]
    match = _HEAD_KEY.fullmatch(key)
    if match:
        kind, level, rest = match.groups()
        for theirs, ours in _HEAD_PARTS.items():
            if rest.startswith(theirs):
                target = "cls_score" if kind == "classification" else "bbox_pred"
                return f"head.{target}.{level}.{ours}{rest[len(theirs):]}"
    raise KeyError(f"unknown torchvision SSDlite key {key!r}")


def convert(state_dict, model):
    """torchvision SSDlite state dict -> {our key: tensor} for ``model`` (checked against it)."""
    num_classes, _ = torchvision_classes(state_dict)
    order = torch.tensor(class_order(num_classes))
    target = model.state_dict()
    converted = {}
    for key, value in state_dict.items():
        name = our_key(key)
        if name not in target:
            raise KeyError(f"{key!r} maps to {name!r}, which the model does not have")
        if name.startswith("head.cls_score.") and name.endswith((".1.weight", ".1.bias")):
            anchors = value.shape[0] // num_classes
            rows = (torch.arange(anchors)[:, None] * num_classes + order).flatten()
            value = value[rows]
        if name.endswith(".running_var"):
            eps = model.get_submodule(name.rsplit(".", 1)[0]).eps
            value = value + (TORCHVISION_BN_EPS - eps)
        if value.shape != target[name].shape:
            raise ValueError(
                f"{key!r} has shape {tuple(value.shape)} but {name!r} has "
                f"{tuple(target[name].shape)}; check MODEL.MOBILENET_V3 and the config"
            )
        converted[name] = value.detach().clone()
    missing = sorted(k for k in target if k not in converted)
    if missing:
        raise KeyError(f"the state dict has nothing for {len(missing)} keys, e.g. {missing[:5]}")
    return converted


def build_target_model(config_file: str, num_torchvision_classes: int):
    """Our SSDlite from ``config_file`` with the file's class count (80 for torchvision's 91)."""
    num_classes = 80 if num_torchvision_classes == 91 else num_torchvision_classes - 1
    cfg = get_ssd_cfg(config_file, ["MODEL.SSD.NUM_CLASSES", str(num_classes)])
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("torchvision_ssdlite", help="torchvision SSDlite .pth state dict")
    parser.add_argument("output", help="output .pkl for MODEL.WEIGHTS")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="our SSDlite config")
    args = parser.parse_args(argv)
    state_dict = torch.load(args.torchvision_ssdlite, map_location="cpu", weights_only=True)
    num_classes, _ = torchvision_classes(state_dict)
    model = build_target_model(args.config_file, num_classes)
    converted = convert(state_dict, model)
    save_converted_weights(converted, args.output, "torchvision SSDlite320 MobileNetV3 (dssd_d2)")
    print(f"wrote {len(converted)} tensors ({num_classes - 1} classes) to {args.output}")


if __name__ == "__main__":
    main()
