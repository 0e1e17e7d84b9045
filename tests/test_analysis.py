"""dssd_d2.analysis.prior_scores: the numbers tools/inspect_priors.py prints."""

import math

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from dssd_d2.analysis import prior_scores

from helpers import tiny_ssd300_cfg, training_input

INPUTS = [
    training_input(300, [[20, 20, 120, 140], [150, 160, 260, 290]], [0, 2], seed=1),
    training_input(300, [[40, 60, 200, 180]], [1], seed=2),
]


def test_losses_are_the_training_losses():
    torch.manual_seed(0)
    model = build_model(tiny_ssd300_cfg()).train()
    report = prior_scores(model, INPUTS)
    with EventStorage(), torch.no_grad():
        losses = model(INPUTS)
    for key, value in losses.items():
        assert math.isclose(report["losses"][key], float(value), rel_tol=1e-5)
    assert all(row["positives"] > 0 for row in report["classes"])


def test_constant_predictions_rank_no_background_prior_above_a_positive():
    """Every prior scores each class the same: the mean probability is the softmax of the class
    biases and no background prior is strictly above the median positive."""
    torch.manual_seed(0)
    model = build_model(tiny_ssd300_cfg()).eval()
    biases = torch.tensor([0.5, -1.0, 2.0, 0.0])  # 3 classes, then background
    for predictor in model.head.cls_score:
        torch.nn.init.zeros_(predictor.weight)
        predictor.bias.data = biases.repeat(predictor.out_channels // 4)
    report = prior_scores(model, INPUTS)
    expected = torch.softmax(biases, 0)
    for c, row in enumerate(report["classes"]):
        assert math.isclose(row["mean_prob"], float(expected[c]), rel_tol=1e-5)
        assert row["background_above_median"] == 0
