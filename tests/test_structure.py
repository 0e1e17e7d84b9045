"""Full-size structure: parameter counts against the SSD paper's models; every config builds."""

import glob
import os

import pytest

from detectron2.modeling import build_model

from helpers import CONFIGS, make_cfg


def _params(cfg):
    return sum(p.numel() for p in build_model(cfg).parameters())


@pytest.mark.parametrize(
    "config_file, millions",
    [
        ("PascalVOC-Detection/ssd300_vgg16.yaml", 26.285),
        ("PascalVOC-Detection/ssd512_vgg16.yaml", 27.189),
    ],
)
def test_vgg_ssd_parameter_counts(config_file, millions):
    assert abs(_params(make_cfg(config_file)) / 1e6 - millions) <= 0.01


def _config_files():
    files = sorted(glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True))
    return [os.path.relpath(f, CONFIGS) for f in files]


@pytest.mark.parametrize("config_file", _config_files())
def test_every_config_loads_and_builds(config_file):
    cfg = make_cfg(config_file)
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize(
    "config_file",
    ["PascalVOC-Detection/ssd300_vgg16.yaml", "PascalVOC-Detection/ssd321_R_101.yaml"],
)
def test_extra_layer_settings_of_mismatched_lengths_name_the_key(config_file):
    cfg = make_cfg(config_file)
    cfg.MODEL.SSD_EXTRAS.STRIDES = cfg.MODEL.SSD_EXTRAS.STRIDES[:-1]
    with pytest.raises(ValueError, match=r"MODEL.SSD_EXTRAS.\{CONV_DIMS, STRIDES"):
        build_model(cfg)
