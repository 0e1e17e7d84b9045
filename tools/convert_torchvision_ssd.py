#!/usr/bin/env python
"""Convert a torchvision ``ssd300_vgg16`` state dict into our SSD300's key names.

    python tools/convert_torchvision_ssd.py ssd300_vgg16_coco-b556d3b4.pth \\
        pretrained/ssd300_vgg16_coco_torchvision.pkl

The input is torchvision's COCO file (you download it; nothing is fetched here) or the state
dict of your own torchvision SSD300 with any class count, also as saved by torchvision's
detection references (``{"model": state_dict, ...}``). The network is the same as ours, layer for
layer (VGG16 reduced, L2Norm on conv4_3, four extra levels, 3x3 class and box convs, priors in
the same order), so weights are copied; only the class order changes. torchvision's label 0 is
background and ours is the last index. A 91-label model is COCO's (torchvision's label = COCO
category id, 11 of them unused "N/A"): its 80 categories go to Detectron2's contiguous COCO
classes through the category ids and the unused ones are dropped (a trained model never
predicts them). Any other count keeps the order: torchvision's label i is our class i - 1.
``--class-map in-order`` forces that for a 91-label model that is not COCO.

The output is a Detectron2 checkpoint (.pkl) for MODEL.WEIGHTS; use it with
configs/COCO-Detection/ssd300_vgg16_torchvision.yaml (torchvision's normalisation, priors and
matching), and MODEL.SSD.NUM_CLASSES as printed for another class count.
"""

import argparse
import pickle
from typing import Dict, List

import torch

from detectron2.data import MetadataCatalog

from dssd_d2.engine.checkpoint import save_converted_weights
from dssd_d2.modeling.backbone.vgg import torchvision_conv_indices

# Priors per location on the six maps of SSD300 (torchvision's and ours).
NUM_PRIORS = [4, 6, 6, 6, 4, 4]
_TV_CLS = "head.classification_head.module_list.{}"


def _module_map() -> Dict[str, str]:
    """torchvision module -> our module, for every convolution except the class predictors.

    torchvision keeps VGG's ``features`` up to conv4_3, then puts pool4, conv5_x and fc6/fc7 in
    ``extra.0`` (fc6/fc7 in its sub-sequence 7) and the four extra levels in ``extra.1-4``.
    """
    # conv1_1 ... conv4_3 keep torchvision VGG16's ``features`` indices.
    names = {
        f"backbone.features.{i}": f"backbone.{name}"
        for name, i in torchvision_conv_indices().items()
        if not name.startswith("conv5")
    }
    names.update(
        {f"backbone.extra.0.{i}": f"backbone.conv5_{j}" for j, i in enumerate((1, 3, 5), 1)}
    )
    names.update({"backbone.extra.0.7.1": "backbone.fc6", "backbone.extra.0.7.3": "backbone.fc7"})
    for level in range(4):
        for conv in (0, 2):
            names[f"backbone.extra.{level + 1}.{conv}"] = f"backbone.extras.levels.{level}.{conv}"
    for level in range(len(NUM_PRIORS)):
        names[f"head.regression_head.module_list.{level}"] = f"head.bbox_pred.{level}"
    return names


def class_order(num_labels: int, class_map: str = "auto") -> List[int]:
    """torchvision label of each of our class outputs, background (label 0) last.

    ``class_map``: "coco" (91 labels = COCO category ids -> Detectron2's contiguous COCO
    classes), "in-order" (label i -> class i - 1) or "auto" (coco for 91 labels, else in-order).
    """
    if class_map == "auto":
        class_map = "coco" if num_labels == 91 else "in-order"
    if class_map == "coco":
        if num_labels != 91:
            raise ValueError(
                f"--class-map coco needs torchvision's 91 COCO labels, not {num_labels}"
            )
        id_to_class = MetadataCatalog.get("coco_2017_val").thing_dataset_id_to_contiguous_id
        order = sorted(id_to_class, key=id_to_class.get)
    elif class_map == "in-order":
        order = list(range(1, num_labels))
    else:
        raise ValueError(f"unknown class map {class_map!r}: use auto, coco or in-order")
    return order + [0]


def _permute_classes(tensor: torch.Tensor, num_labels: int, order: List[int]) -> torch.Tensor:
    """Reorder the class outputs of a (A * num_labels, ...) predictor, prior by prior."""
    grouped = tensor.reshape(-1, num_labels, *tensor.shape[1:])  # (A, labels, ...)
    return grouped[:, order].flatten(0, 1)


def convert(state_dict: Dict[str, torch.Tensor], class_map: str = "auto"):
    """torchvision ssd300_vgg16 state dict -> ({our key: tensor}, our NUM_CLASSES).

    Also converts anything keyed like the state dict, e.g. gradients. Unknown or missing keys are
    an error naming them.
    """
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]  # a checkpoint of torchvision's detection references
    modules = _module_map()
    modules.update({_TV_CLS.format(i): f"head.cls_score.{i}" for i in range(len(NUM_PRIORS))})
    expected = {f"{m}.{p}" for m in modules for p in ("weight", "bias")}
    expected.add("backbone.scale_weight")
    missing = sorted(expected - set(state_dict))
    unknown = sorted(set(state_dict) - expected)
    if missing or unknown:
        raise KeyError(
            "not a torchvision ssd300_vgg16 state dict: "
            + (f"missing {missing}" if missing else "")
            + ("; " if missing and unknown else "")
            + (f"unknown {unknown}" if unknown else "")
        )
    channels = [state_dict[f"{_TV_CLS.format(i)}.bias"].numel() for i in range(len(NUM_PRIORS))]
    num_labels = channels[0] // NUM_PRIORS[0]
    if channels != [a * num_labels for a in NUM_PRIORS]:
        raise ValueError(
            f"class predictors with {channels} outputs do not fit {NUM_PRIORS} priors per "
            "location and one class count"
        )
    order = class_order(num_labels, class_map)
    out = {"backbone.conv4_3_norm.weight": state_dict["backbone.scale_weight"]}
    for tv_name, name in modules.items():
        for param in ("weight", "bias"):
            value = state_dict[f"{tv_name}.{param}"]
            if tv_name.startswith(_TV_CLS.format("")):
                value = _permute_classes(value, num_labels, order)
            out[f"{name}.{param}"] = value.detach().contiguous()
    return out, len(order) - 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("torchvision_ssd", help="torchvision ssd300_vgg16 .pth (state dict)")
    parser.add_argument("output", help="output .pkl for MODEL.WEIGHTS")
    parser.add_argument(
        "--class-map",
        choices=["auto", "coco", "in-order"],
        default="auto",
        help="auto: COCO's category ids for 91 labels, in order otherwise",
    )
    args = parser.parse_args(argv)
    try:
        state_dict = torch.load(args.torchvision_ssd, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise SystemExit(
            f"{args.torchvision_ssd} holds more than tensors; save the model's state dict alone "
            f"(torch.save(checkpoint['model'], ...)) and convert that: {e}"
        ) from e
    model, num_classes = convert(state_dict, args.class_map)
    save_converted_weights(model, args.output, "torchvision ssd300_vgg16 (dssd_d2)")
    print(f"wrote {len(model)} tensors to {args.output}; use MODEL.SSD.NUM_CLASSES {num_classes}")


if __name__ == "__main__":
    main()
