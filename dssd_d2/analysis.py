"""Measuring models: size, cost and prior count (tools/model_stats.py, tools/benchmark.py, the
tests), BatchNorm statistics for models with random weights (benchmarks, export tests), and how
a trained model scores its priors (tools/inspect_priors.py)."""

import torch
import torch.nn.functional as F
from fvcore.nn import parameter_count
from torch import nn

from detectron2.modeling import build_model
from detectron2.utils.analysis import FlopCountAnalysis
from detectron2.utils.events import EventStorage

from .shapes import feature_sizes

__all__ = [
    "batch_norm_statistics",
    "calibrate_batch_norms",
    "count_gflops",
    "default_boxes",
    "model_stats",
    "prior_scores",
]


def model_stats(cfg, flops: bool = True):
    """dict with params, params_with_bn_stats, backbone_params, gflops (None unless ``flops``),
    default_boxes, boxes_per_location and map_sizes."""
    if cfg.MODEL.SSD.FREEZE:
        # Freezing turns BatchNorm's scale and shift into buffers; count the architecture.
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.SSD.FREEZE = []
    model = build_model(cfg).eval()
    size = cfg.INPUT.FIXED_SIZE
    params = parameter_count(model)
    stats = {
        "params": params[""],
        "params_with_bn_stats": params[""] + batch_norm_statistics(model),
        "backbone_params": params["backbone"],
        **default_boxes(model, size),
        "gflops": None,
    }
    if flops:
        stats["gflops"] = count_gflops(model, size)
    return stats


def batch_norm_statistics(model: nn.Module) -> int:
    """Number of BatchNorm running means and variances. A Caffe model file stores them with the
    weights, and papers that count parameters from it include them: DSOD's 14.8M is our 14.716M
    learnable plus 0.080M statistics."""
    return sum(
        buffer.numel()
        for name, buffer in model.named_buffers()
        if name.endswith(("running_mean", "running_var"))
    )


def default_boxes(model, image_size: int):
    """dict with default_boxes (the prior count), map_sizes and boxes_per_location of an
    SSD-family model at a square ``image_size``, from shapes only."""
    channels = model.pixel_mean.shape[0]
    sizes = feature_sizes(model.backbone, (image_size, image_size), channels)
    map_sizes = [sizes[f] for f in model.head_in_features]
    per_location = model.anchor_generator.num_cell_anchors
    return {
        "default_boxes": sum(a * h * w for a, (h, w) in zip(per_location, map_sizes)),
        "map_sizes": map_sizes,
        "boxes_per_location": per_location,
    }


def count_gflops(model, size: int) -> float:
    """GFLOPs of one zero image of ``size`` x ``size`` through ``model`` in inference mode."""
    image = torch.zeros(model.pixel_mean.shape[0], size, size, device=model.device)
    with torch.no_grad():
        analysis = FlopCountAnalysis(model.eval(), [{"image": image}])
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return analysis.total() / 1e9


@torch.no_grad()
def calibrate_batch_norms(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Set the running statistics of every trainable BatchNorm of an SSD-family model to those of
    ``images`` (N, C, H, W, before normalisation), then put it in eval mode.

    For models with random weights (tests, benchmarks): fresh statistics (mean 0, variance 1)
    let activations grow layer after layer, up to inf through DSSD's products, whereas a
    trained model's BatchNorms keep them near unit scale.
    """
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm))]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch gives exactly its statistics
    model.train()
    features = model.backbone((images - model.pixel_mean) / model.pixel_std)
    model.head([features[f] for f in model.head_in_features])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


@torch.no_grad()
def prior_scores(model, batched_inputs) -> dict:
    """What the training loss hides about a trained SSD-family model on annotated images: the loss
    sees the positives and ``neg_pos_ratio`` hard negatives per positive, AP ranks every prior.
    In the model's current mode (train: batch statistics, eval: running statistics), returns the
    two losses and, per class: positives (priors matched to the class), the mean probability of
    the class at them, and background priors per image that score the class above the median
    positive (each one outranks half of the true detections before NMS)."""
    images = model.preprocess_image(batched_inputs)
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    predictions = model.head(features)
    gt_instances = [x["instances"].to(model.device) for x in batched_inputs]
    logits, deltas = model._transpose_dense_predictions(predictions, [model.num_classes + 1, 4])
    anchors = model.anchor_generator(features)
    labels, gt_boxes = model.label_anchors(anchors, gt_instances)
    with EventStorage():  # the loss logs the positives per image
        losses = model.losses(anchors, logits, labels, deltas, gt_boxes)
    probs = F.softmax(torch.cat(logits, dim=1).float(), dim=-1)  # (N, R, K + 1)
    labels = torch.stack(labels)
    background = labels == model.num_classes
    per_class = []
    for c in range(model.num_classes):
        positive = probs[labels == c][:, c]
        median = positive.median() if len(positive) else torch.tensor(1.0)
        per_class.append(
            {
                "positives": len(positive),
                "mean_prob": float(positive.mean()) if len(positive) else float("nan"),
                "background_above_median": float(
                    (probs[..., c][background] > median).sum() / len(batched_inputs)
                ),
            }
        )
    return {"losses": {k: float(v) for k, v in losses.items()}, "classes": per_class}
