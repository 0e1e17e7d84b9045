"""BatchNorm folding (DSSD paper, Eq. 1-4) and the CPU fast path: same outputs as the eager
model for DSSD, DSOD300, SSD with BN and Detectron2's ResNet-FPN."""

import copy

import pytest
import torch
from torch import nn

from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_backbone, build_model

import dssd_d2
from dssd_d2.deploy import count_batch_norms, fold_batch_norm, fold_conv_bn, optimize_for_inference
from dssd_d2.modeling.backbone.dsod import PreActConv

from helpers import (
    DSOD300,
    assert_close,
    check_fold,
    randomize_batch_norms,
    DSSD321,
    make_cfg,
    network_outputs,
    random_image,
    tiny_dsod_cfg,
    tiny_resnet_cfg,
    tiny_ssd300_cfg,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("transposed", [False, True])
def test_fold_conv_bn_is_conv_then_bn(transposed):
    torch.manual_seed(0)
    conv_type = nn.ConvTranspose2d if transposed else nn.Conv2d
    conv = conv_type(8, 6, 3, stride=2, groups=2, bias=True)
    bn = randomize_batch_norms(nn.BatchNorm2d(6)).eval()
    x = torch.randn(2, 8, 7, 7)
    with torch.no_grad():
        expected = bn(conv(x))
        fold_conv_bn(conv, bn)
        assert_close(conv(x), expected)


def test_fold_detectron2_conv_with_frozen_bn_and_activation():
    torch.manual_seed(0)
    conv = Conv2d(4, 5, 3, padding=1, bias=False, norm=FrozenBatchNorm2d(5), activation=nn.ReLU())
    randomize_batch_norms(conv)
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        expected = conv(x)
        folded = fold_batch_norm(conv)
        assert folded.norm is None and folded.bias is not None
        assert_close(folded(x), expected)


class ConvThenNormed(nn.Module):
    """A conv whose output feeds a BN-ReLU-conv unit, through a custom forward; with
    ``reuse`` the conv output is also added to the result, so its BN cannot be folded."""

    def __init__(self, reuse: bool):
        super().__init__()
        self.reuse = reuse
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.unit = nn.Sequential(nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 1))

    def forward(self, x):
        y = self.conv(x)
        return self.unit(y) + y if self.reuse else self.unit(y)


@pytest.mark.parametrize("reuse", [False, True])
def test_fold_follows_the_forward_of_any_module(reuse):
    """Folding reads the data flow (torch.fx), not a list of known module types."""
    torch.manual_seed(0)
    module = randomize_batch_norms(ConvThenNormed(reuse)).eval()
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        expected = module(x)
        folded = fold_batch_norm(copy.deepcopy(module))
        assert_close(folded(x), expected)
    assert count_batch_norms(folded) == (1 if reuse else 0)


def test_top_level_export():
    assert dssd_d2.fold_batch_norm is fold_batch_norm


@pytest.mark.parametrize("prediction_module", ["residual_projection", "two_residual_projection"])
def test_fold_shrunk_dssd(prediction_module):
    torch.manual_seed(0)
    cfg = tiny_resnet_cfg(DSSD321)
    cfg.MODEL.SSD.FREEZE = ["backbone.bottom_up"]  # FrozenBatchNorm2d in the bottom-up part
    cfg.MODEL.SSD_HEAD.PREDICTION_MODULE = prediction_module
    model = build_model(cfg)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    check_fold(model, cfg.INPUT.FIXED_SIZE)


def test_fold_dsod300_keeps_only_preactivation_norms_over_concatenations():
    torch.manual_seed(0)
    model = build_model(make_cfg(DSOD300))
    # DSOD's predictors are conv + BatchNorm (MODEL.SSD_HEAD.PREDICTOR "conv_bn"): all fold.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.head.modules()) == 12
    folded = check_fold(model, 300, expect_all_folded=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.head.modules())
    # What remains are BN-ReLU-conv units whose input is a concatenation (dense layers,
    # transitions) or a pooled map: no convolution directly before them.
    left = [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
    preact_norms = {id(m[0]) for m in folded.modules() if isinstance(m, PreActConv)}
    assert left and all(id(m) in preact_norms for m in left)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.backbone.stem.modules())
    assert all(isinstance(layer.conv[0], nn.Identity) for layer in folded.backbone.stages.dense1)


def test_fold_shrunk_dsod_plain():
    torch.manual_seed(0)
    cfg = tiny_dsod_cfg()
    cfg.MODEL.DSOD.PREDICTION = "plain"
    cfg.MODEL.DSOD.PLAIN_CHANNELS = [[8, 8], [4, 8], [4, 8], [4, 8]]
    check_fold(build_model(cfg), cfg.INPUT.FIXED_SIZE, expect_all_folded=False)


def test_fold_ssd300_with_batch_norm():
    torch.manual_seed(0)
    cfg = tiny_ssd300_cfg()
    cfg.MODEL.VGG.NORM = "BN"
    cfg.MODEL.SSD_EXTRAS.NORM = "BN"
    check_fold(build_model(cfg), 300)


def test_fold_detectron2_resnet_fpn():
    torch.manual_seed(0)
    cfg = make_cfg("Misc/ssd_R_50_FPN.yaml")
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 8
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 4
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.FPN.NORM = "BN"
    backbone = randomize_batch_norms(build_backbone(cfg, ShapeSpec(channels=3)).eval())
    folded = fold_batch_norm(copy.deepcopy(backbone))
    assert count_batch_norms(folded) == 0
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        expected, actual = backbone(x), folded(x)
    for name in expected:
        assert_close(actual[name], expected[name])


@pytest.mark.parametrize("channels_last", [False, True])
def test_optimize_for_inference_matches_eager(channels_last):
    torch.manual_seed(0)
    model = randomize_batch_norms(build_model(tiny_dsod_cfg()).eval())
    size = 150
    fast = optimize_for_inference(copy.deepcopy(model), size, channels_last=channels_last)
    for actual, expected in zip(network_outputs(fast, size), network_outputs(model, size)):
        assert_close(actual, expected)
    with torch.no_grad():
        detections = fast([{"image": random_image(size, size)}])[0]["instances"]
    assert len(detections) > 0
