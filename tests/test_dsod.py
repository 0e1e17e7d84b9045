"""DSOD: DSOD300 against the paper (Table 1, Tables 3 and 4) and a shrunk DSOD end to end."""

import numpy as np
import pytest
import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from dssd_d2.analysis import model_stats
from dssd_d2.engine import SSDTrainer
from dssd_d2.modeling.backbone import L2Norm, build_dsod_backbone
from dssd_d2.shapes import feature_sizes

from helpers import DSOD300, make_cfg, register_cells_dataset, tiny_dsod_cfg, train_and_track

# Table 1 at 300 input, (channels, size) after each stage. The released model differs in two
# places, which the test states: transition3 keeps 1184 channels (Table 1 prints 1120, which
# does not add up: 1120 + 8 x 48 would be 1504, not the 1568 printed after dense4) and
# transition4 reduces to 256 (Table 1: 1568) to feed the dense prediction structure.
TABLE1 = {
    "stem": (128, 75),
    "dense1": (416, 75),
    "transition1": (416, 75),
    "pool1": (416, 38),
    "dense2": (800, 38),
    "transition2": (800, 38),
    "pool2": (800, 19),
    "dense3": (1184, 19),
    "transition3": (1120, 19),
    "dense4": (1568, 19),
    "transition4": (1568, 19),
}
RELEASED_MODEL = dict(TABLE1, transition3=(1184, 19), transition4=(256, 19))


def _stage(backbone, name):
    return backbone.stem if name == "stem" else getattr(backbone.stages, name)


def _params(model):
    return sum(p.numel() for p in model.parameters())


def _priors(model, features):
    anchors = model.anchor_generator([features[f] for f in model.head_in_features])
    return sum(len(boxes) for boxes in anchors)


@pytest.fixture(scope="module")
def dsod300():
    """DSOD300 dense (VOC, 20 classes), its stage outputs and its sources for a 300x300 image."""
    torch.manual_seed(0)
    model = build_model(make_cfg(DSOD300)).eval()
    stages = {}
    hooks = [
        _stage(model.backbone, name).register_forward_hook(
            lambda module, inputs, output, name=name: stages.__setitem__(name, output.shape)
        )
        for name in TABLE1
    ]
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, 300, 300))
    for hook in hooks:
        hook.remove()
    return model, stages, features


def test_dsod300_dense_parameters_priors_and_sources(dsod300):
    model, _, features = dsod300
    assert abs(_params(model) / 1e6 - 14.72) <= 0.01 * 14.72
    assert _priors(model, features) == 8744
    assert model.head_in_features == [f"dsod{i}" for i in range(1, 7)]
    shapes = [tuple(features[f].shape[1:]) for f in model.head_in_features]
    sizes = [38, 19, 10, 5, 3, 2]
    assert shapes == [(c, s, s) for c, s in zip([800, 512, 512, 256, 256, 256], sizes)]
    out_shape = model.backbone.output_shape()
    assert [out_shape[f].channels for f in model.head_in_features] == [s[0] for s in shapes]


def test_dsod300_stages_match_table1_where_the_released_model_does(dsod300):
    _, stages, _ = dsod300
    got = {name: (shape[1], shape[2]) for name, shape in stages.items()}
    assert got == RELEASED_MODEL
    assert {n for n in TABLE1 if TABLE1[n] != RELEASED_MODEL[n]} == {"transition3", "transition4"}


def test_plain_table1_backbone_and_the_papers_1x1_last_map():
    steps = [8, 16, 32, 64, 100, 300]  # SSD300's: the last prior is centred on the 1x1 map
    opts = ["MODEL.DSOD.LAST_MAP_SIZE", 1, "MODEL.ANCHOR_GENERATOR.STEPS", steps]
    model = build_model(make_cfg("PascalVOC-Detection/dsod300_plain.yaml", opts)).eval()
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, 300, 300))
    shapes = [tuple(features[f].shape[1:]) for f in model.head_in_features]
    sizes = [38, 19, 10, 5, 3, 1]
    assert shapes == [(c, s, s) for c, s in zip([800, 1568, 512, 256, 256, 256], sizes)]
    assert _priors(model, features) == 8732


@pytest.mark.parametrize(
    "config_file, ours, paper, tolerance",
    [
        # Plain: the paper gives no widths for its plain layers; with SSD300's extra-layer
        # widths and Table 1's 1568-channel source we are 4.6% above (see docs/papers.md).
        ("PascalVOC-Detection/dsod300_plain.yaml", 19.032, 18.2, 0.05),
        ("PascalVOC-Detection/dsod300_smallest.yaml", 5.833, 5.9, 0.015),
    ],
)
def test_plain_and_smallest_parameter_counts_against_the_paper(config_file, ours, paper, tolerance):
    millions = _params(build_model(make_cfg(config_file))) / 1e6
    assert abs(millions - ours) < 1e-3
    assert abs(millions - paper) <= tolerance * paper


def test_from_scratch_init_norm_from_config_and_l2norm_on_every_source():
    cfg = tiny_dsod_cfg()
    cfg.MODEL.DSOD.NORM = "SyncBN"
    backbone = build_dsod_backbone(cfg, ShapeSpec(channels=3))
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs:
        area = conv.kernel_size[0] * conv.kernel_size[1]
        xavier_bound = (6.0 / ((conv.in_channels + conv.out_channels) * area)) ** 0.5
        assert conv.bias is None and conv.weight.abs().max() <= xavier_bound
    l2norms = [m for m in backbone.modules() if isinstance(m, L2Norm)]
    assert len(l2norms) == 6 and all(torch.all(m.weight == 20.0) for m in l2norms)


@pytest.mark.slow
def test_shrunk_dsod_trains_with_accumulation_and_evaluates(tmp_path):
    name = "dssd_d2_test_dsod_cells"
    register_cells_dataset(name, str(tmp_path))
    cfg = tiny_dsod_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = (name,)
    cfg.SOLVER.MAX_ITER = 3
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000

    trainer, changed = train_and_track(cfg, tmp_path / "out")
    assert type(trainer._trainer).__name__ == "GradientAccumulationTrainer"
    assert {"backbone.stem.0.weight", "backbone.source_norms.0.weight"} <= changed
    assert any(k.startswith("head.cls_score") for k in changed)
    assert np.isfinite(trainer.storage.history("total_loss").latest())

    results = SSDTrainer.test(cfg, trainer.model)
    assert "AP" in results["bbox"]


@pytest.mark.parametrize(
    "opts",
    [
        ["MODEL.DSOD.STEM", "densenet"],
        ["MODEL.DSOD.TRANSITION_WITHOUT_POOLING", False],
        ["MODEL.DSOD.PREDICTION", "plain", "MODEL.DSOD.TRANSITION_CHANNELS", [0, 0, 0, 0]],
        ["MODEL.DSOD.GROWTH_RATE", 16, "MODEL.DSOD.BOTTLENECK_WIDTH", 64],
        ["MODEL.DSOD.COMPRESSION", 0.5],
    ],
    ids=["densenet_stem", "three_dense_blocks", "plain", "growth_16_bottleneck_64", "theta_0.5"],
)
def test_table3_ablations_keep_dsod300_maps_and_priors(opts):
    """Every row of the paper's Table 3 is a config change that keeps DSOD300's six maps."""
    model = build_model(make_cfg(DSOD300, opts)).eval()
    sizes = feature_sizes(model.backbone, (300, 300))
    assert [sizes[f] for f in model.head_in_features] == [(s, s) for s in (38, 19, 10, 5, 3, 2)]
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, 300, 300))
    assert _priors(model, features) == 8744


def test_ablation_structures():
    densenet_stem = build_model(make_cfg(DSOD300, ["MODEL.DSOD.STEM", "densenet"])).backbone
    assert densenet_stem.stem[0].kernel_size == (7, 7) and densenet_stem.stem.out_channels == 128
    three_blocks = make_cfg(DSOD300, ["MODEL.DSOD.TRANSITION_WITHOUT_POOLING", False])
    stages = build_model(three_blocks).backbone.stages
    assert stages.num_blocks == 3 and len(stages.dense3) == 16 and not hasattr(stages, "dense4")


def test_dense_prediction_reuses_then_learns_as_the_released_model():
    """Sources 3-6 concatenate (pooled, learned) like the released model's Concat(conv2, conv)."""
    level = build_model(make_cfg(DSOD300)).backbone.prediction.levels[0].eval()
    x = torch.randn(1, 512, 19, 19)
    with torch.no_grad():
        out = level(x)
    assert torch.equal(out[:, :256], level.reused(x)) and torch.equal(
        out[:, 256:], level.learned(x)
    )


@pytest.mark.parametrize(
    "config_file", [DSOD300, "COCO-Detection/dsod300.yaml", "BCCD/dsod300_smallest_paper_rate.yaml"]
)
def test_dsod_configs_predict_through_batch_norm(config_file):
    """The released DSOD's predictors: bias-free conv, BatchNorm with learned scale and shift."""
    head = build_model(make_cfg(config_file)).head
    for predictor in list(head.cls_score) + list(head.bbox_pred):
        assert predictor.bias is None and isinstance(predictor.norm, nn.BatchNorm2d)
        assert predictor.norm.affine


@pytest.mark.parametrize(
    "config_file, learnable, with_statistics, paper",
    [
        (DSOD300, 14.716, 14.796, 14.8),
        ("PascalVOC-Detection/dsod300_smallest.yaml", 5.833, 5.872, 5.9),
    ],
)
def test_parameter_counts_with_batch_norm_statistics_match_the_paper(
    config_file, learnable, with_statistics, paper
):
    """The paper counts BatchNorm running statistics, as a Caffe model file stores them."""
    stats = model_stats(make_cfg(config_file), flops=False)
    assert round(stats["params"] / 1e6, 3) == learnable
    assert round(stats["params_with_bn_stats"] / 1e6, 3) == with_statistics
    assert abs(with_statistics - paper) <= 0.005 * paper
