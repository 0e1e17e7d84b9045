"""torchvision VGG16 weights convert into SSD's backbone and load with Detectron2's checkpointer."""

import subprocess
import sys

import pytest
import torch
import torchvision

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from helpers import ROOT, make_cfg


@pytest.mark.slow
def test_converted_vgg16_loads_into_ssd300(tmp_path):
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None).state_dict()
    source, target = tmp_path / "vgg16.pth", tmp_path / "vgg16_reducedfc.pkl"
    torch.save(vgg, source)
    subprocess.run(
        [sys.executable, f"{ROOT}/tools/convert_vgg16_weights.py", str(source), str(target)],
        check=True,
    )
    model = build_model(make_cfg("PascalVOC-Detection/ssd300_vgg16.yaml"))
    DetectionCheckpointer(model).load(str(target))
    backbone = model.backbone
    torch.testing.assert_close(backbone.conv1_1.weight, vgg["features.0.weight"])
    torch.testing.assert_close(backbone.conv5_3.bias, vgg["features.28.bias"])
    fc6 = vgg["classifier.0.weight"].view(4096, 512, 7, 7)
    torch.testing.assert_close(backbone.fc6.weight, fc6[::4, :, ::3, ::3])
    torch.testing.assert_close(backbone.fc7.weight[5, 7, 0, 0], vgg["classifier.3.weight"][20, 28])
