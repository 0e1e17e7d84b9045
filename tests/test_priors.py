"""Default boxes of SSD300 / SSD512: counts, map sizes and one cell's priors literally."""

import math

import pytest
import torch

from detectron2.modeling import build_model

from dssd_d2.modeling import SSDAnchorGenerator

from helpers import make_cfg


def _maps_and_priors(config_file):
    cfg = make_cfg(config_file)
    model = build_model(cfg)
    size = cfg.INPUT.FIXED_SIZE
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, size, size))
    features = [features[f] for f in model.head_in_features]
    anchors = model.anchor_generator(features)
    return model, [f.shape[-1] for f in features], anchors


@pytest.mark.parametrize(
    "config_file, maps, per_location, total",
    [
        ("PascalVOC-Detection/ssd300_vgg16.yaml", [38, 19, 10, 5, 3, 1], [4, 6, 6, 6, 4, 4], 8732),
        (
            "PascalVOC-Detection/ssd512_vgg16.yaml",
            [64, 32, 16, 8, 4, 2, 1],
            [4, 6, 6, 6, 6, 4, 4],
            24564,
        ),
    ],
)
def test_default_box_counts(config_file, maps, per_location, total):
    model, sizes, anchors = _maps_and_priors(config_file)
    assert sizes == maps
    assert model.anchor_generator.num_anchors == per_location
    assert [len(a) for a in anchors] == [m * m * a for m, a in zip(maps, per_location)]
    assert sum(len(a) for a in anchors) == total


def test_ssd300_first_cell_priors_literally():
    _, _, anchors = _maps_and_priors("PascalVOC-Detection/ssd300_vgg16.yaml")
    s2 = math.sqrt(2.0)
    big = math.sqrt(30 * 60)
    # conv4_3, cell (0, 0): centre (4, 4) = 0.5 * step 8; min 30, max 60, ratio 2 with flip.
    expected = [
        [4 - 15, 4 - 15, 4 + 15, 4 + 15],
        [4 - big / 2, 4 - big / 2, 4 + big / 2, 4 + big / 2],
        [4 - 15 * s2, 4 - 15 / s2, 4 + 15 * s2, 4 + 15 / s2],
        [4 - 15 / s2, 4 - 15 * s2, 4 + 15 / s2, 4 + 15 * s2],
    ]
    torch.testing.assert_close(anchors[0].tensor[:4], torch.tensor(expected), rtol=0, atol=1e-4)
    # conv8_2 (3x3, step 100), last cell: centre (250, 250), min 213, max 264.
    last = anchors[4].tensor[-4:]
    torch.testing.assert_close(last[0], torch.tensor([143.5, 143.5, 356.5, 356.5]))
    side = math.sqrt(213 * 264)
    torch.testing.assert_close(last[1], torch.tensor([250 - side / 2] * 2 + [250 + side / 2] * 2))
    # fc7, second cell in x: centre (24, 8) with step 16.
    centres = (anchors[1].tensor[6, :2] + anchors[1].tensor[6, 2:]) / 2
    torch.testing.assert_close(centres, torch.tensor([24.0, 8.0]))


def test_clip_keeps_priors_inside_the_square():
    generator = SSDAnchorGenerator(
        min_sizes=[30], max_sizes=[60], aspect_ratios=[[2, 3]], steps=[8], clip_size=32
    )
    anchors = generator([torch.zeros(1, 1, 4, 4)])[0].tensor
    assert anchors.min() >= 0 and anchors.max() <= 32
    assert len(anchors) == 16 * 6


def test_mismatched_lengths_name_the_key():
    with pytest.raises(ValueError, match="MAX_SIZES"):
        SSDAnchorGenerator(
            min_sizes=[30, 60], max_sizes=[60, 90, 120], aspect_ratios=[[2]], steps=[8, 16]
        )
    cfg = make_cfg("PascalVOC-Detection/ssd300_vgg16.yaml")
    cfg.MODEL.ANCHOR_GENERATOR.STEPS = [8, 16, 32]
    with pytest.raises(ValueError, match="STEPS"):
        build_model(cfg)


def test_clamp_keeps_centres_and_caps_width_and_height():
    """torchvision's prior clamp: the box keeps its centre (unlike CLIP), sides at most 32."""
    generator = SSDAnchorGenerator(
        min_sizes=[30], max_sizes=[60], aspect_ratios=[[2]], steps=[8], clamp_size=32
    )
    anchors = generator([torch.zeros(1, 1, 4, 4)])[0].tensor
    sides = anchors[:, 2:] - anchors[:, :2]
    assert sides.max() == 32 and sides.min() == pytest.approx(30 / math.sqrt(2))
    torch.testing.assert_close((anchors[:4, :2] + anchors[:4, 2:]) / 2, torch.full((4, 2), 4.0))
    assert anchors.min() < 0  # still reaches past the image, as torchvision's do


def test_ssd_priors_without_base_ssd_yaml():
    """add_ssd_config itself makes SSD's priors the default: a config that does not inherit
    Base-SSD.yaml gets SSD300's 8732, not Detectron2's anchors."""
    cfg = make_cfg()
    cfg.MODEL.META_ARCHITECTURE = "SSD"
    cfg.MODEL.BACKBONE.NAME = "build_vgg_ssd_backbone"
    reference = make_cfg("Base-SSD.yaml")
    for key in ("NAME", "OFFSET", "ASPECT_RATIOS", "MIN_SIZES", "MAX_SIZES", "STEPS"):
        assert cfg.MODEL.ANCHOR_GENERATOR[key] == reference.MODEL.ANCHOR_GENERATOR[key], key
    generator = build_model(cfg).anchor_generator
    assert isinstance(generator, SSDAnchorGenerator) and generator.num_anchors == [4, 6, 6, 6, 4, 4]
