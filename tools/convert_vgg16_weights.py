#!/usr/bin/env python
"""Convert torchvision's ImageNet VGG16 weights into SSD's VGG16-reduced backbone keys.

    python tools/convert_vgg16_weights.py vgg16-397923af.pth pretrained/vgg16_reducedfc.pkl

The input is the state dict torchvision's ``vgg16`` loads (you download it; nothing is fetched
here). conv1_1 ... conv5_3 are copied. fc6 (4096 x 512x7x7) and fc7 (4096 x 4096) become SSD's
reduced convolutions by decimation, as in the SSD paper: every 4th output unit, and for fc6
every 3rd kernel position, giving a 3x3 kernel that fc6's dilation 6 spreads over the 7x7 field.
The output is a Detectron2 checkpoint (.pkl) for MODEL.WEIGHTS; the model must use torchvision's
input normalisation (RGB, PIXEL_MEAN [123.675, 116.28, 103.53], PIXEL_STD [58.395, 57.12,
57.375]), which configs/Base-SSD.yaml sets.
"""

import argparse

import torch

from dssd_d2.engine.checkpoint import save_converted_weights
from dssd_d2.modeling.backbone.vgg import torchvision_conv_indices


def convert(state_dict, prefix="backbone."):
    """torchvision VGG16 state dict -> {our key: numpy array}."""
    convs = torchvision_conv_indices()
    expected = [f"features.{i}.weight" for i in convs.values()] + ["classifier.0.weight"]
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise KeyError(f"not a torchvision VGG16 state dict: missing {missing[:3]}")
    out = {}
    for name, index in convs.items():
        out[f"{prefix}{name}.weight"] = state_dict[f"features.{index}.weight"]
        out[f"{prefix}{name}.bias"] = state_dict[f"features.{index}.bias"]
    fc6 = state_dict["classifier.0.weight"].view(4096, 512, 7, 7)
    out[f"{prefix}fc6.weight"] = fc6[::4, :, ::3, ::3]
    out[f"{prefix}fc6.bias"] = state_dict["classifier.0.bias"][::4]
    fc7 = state_dict["classifier.3.weight"]
    out[f"{prefix}fc7.weight"] = fc7[::4, ::4].reshape(1024, 1024, 1, 1)
    out[f"{prefix}fc7.bias"] = state_dict["classifier.3.bias"][::4]
    return {k: v.detach().contiguous().numpy() for k, v in out.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("torchvision_vgg16", help="path to torchvision's vgg16 .pth state dict")
    parser.add_argument("output", help="output .pkl for MODEL.WEIGHTS")
    args = parser.parse_args()
    state_dict = torch.load(args.torchvision_vgg16, map_location="cpu", weights_only=True)
    model = convert(state_dict)
    save_converted_weights(model, args.output, "torchvision VGG16 (dssd_d2)", exact_names=False)
    print(f"wrote {len(model)} tensors to {args.output}")


if __name__ == "__main__":
    main()
