"""Full-size structure: parameter counts against the SSD paper's models; every config builds and
predicts one set of scores and box deltas per prior."""

import glob
import os

import pytest
import torch

from detectron2.modeling import build_model

from dssd_d2.modeling.meta_arch import SSD
from dssd_d2.shapes import meta_call

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
def test_every_config_builds_with_one_prediction_per_prior(config_file):
    """Finite initial weights, and at the config's input size (a shape-only pass) every level's
    head outputs hold the class scores (SSD's with background) and 4 box deltas of each of that
    level's priors."""
    cfg = make_cfg(config_file)
    model = build_model(cfg)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    divisor = max(model.backbone.size_divisibility, 1)
    size = -(-cfg.INPUT.FIXED_SIZE // divisor) * divisor
    image = torch.empty(1, len(cfg.MODEL.PIXEL_MEAN), size, size, device="meta")
    features = meta_call(model.backbone, image)
    levels = [features[f] for f in model.head_in_features]
    logits, deltas = meta_call(model.head, levels)
    priors = model.anchor_generator(levels)
    scores_per_prior = model.num_classes + isinstance(model, SSD)
    assert len(logits) == len(deltas) == len(priors) == len(levels)
    for level_logits, level_deltas, level_priors in zip(logits, deltas, priors):
        locations = level_logits.shape[-2] * level_logits.shape[-1]
        assert level_logits.shape[1] * locations == len(level_priors) * scores_per_prior
        assert level_deltas.shape[1] * locations == len(level_priors) * 4


@pytest.mark.parametrize(
    "config_file",
    ["PascalVOC-Detection/ssd300_vgg16.yaml", "PascalVOC-Detection/ssd321_R_101.yaml"],
)
def test_extra_layer_settings_of_mismatched_lengths_name_the_key(config_file):
    cfg = make_cfg(config_file)
    cfg.MODEL.SSD_EXTRAS.STRIDES = cfg.MODEL.SSD_EXTRAS.STRIDES[:-1]
    with pytest.raises(ValueError, match=r"MODEL.SSD_EXTRAS.\{CONV_DIMS, STRIDES"):
        build_model(cfg)
