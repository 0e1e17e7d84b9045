"""Our SSD300 is torchvision's ssd300_vgg16: given its weights (a random-weight torchvision model
saved to a file and converted by tools/convert_torchvision_ssd.py), the same priors, outputs,
detections, loss and gradients, on real photos (scikit-learn's two sample photos, 300x300 crops).

Random weights do not look like trained ones: Xavier-initialised predictors over random VGG
features give logits up to +-25 (softmax scores saturate at 1.0, where float ties decide the
order) and box offsets up to +-19 (boxes many times the image). Before saving, each level's
class and box predictors are rescaled so that, on the photos, logits have standard deviation 1
and offsets 0.5: scores then spread up to 0.5-0.8, 150k-280k (prior, class) scores per image
pass the 0.01 threshold, each class sends its best 400 to NMS and 200 detections per image
remain, with boxes near their priors. In the 91-label COCO model the 11 unused "N/A" labels get
zero weights and bias -30, as in a trained model that never saw them: the converter drops them
(Detectron2's 80 COCO classes).

Figures: ``pytest -s`` prints the measured differences.
"""

import copy
import functools
import importlib.util
import os
import pickle

import numpy as np
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_anchor_generator, build_model
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from dssd_d2.data import SSDDatasetMapper
from dssd_d2.modeling.matcher import BipartiteMatcher, TorchvisionSSDMatcher

from helpers import ROOT, make_cfg

torchvision_detection = pytest.importorskip("torchvision.models.detection")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIG = "COCO-Detection/ssd300_vgg16_torchvision.yaml"
_spec = importlib.util.spec_from_file_location(
    "convert_torchvision_ssd", os.path.join(ROOT, "tools", "convert_torchvision_ssd.py")
)
TOOL = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(TOOL)


def _photos():
    """scikit-learn's sample photos (china.jpg, flower.jpg, 427 x 640) and two 300 x 300 crops
    of them, as (3, H, W) float RGB in 0-255; and their files."""
    sample = sklearn_datasets.load_sample_images()
    crops = [sample.images[0][50:350, 100:400], sample.images[1][100:400, 200:500]]

    def tensor(image):
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).float()

    return [tensor(i) for i in sample.images], [tensor(c) for c in crops], sample.filenames


@torch.no_grad()
def _calibrate(tv, images, unused_labels):
    """Rescale each level's predictors to logits of std 1 and offsets of std 0.5 on ``images``;
    unused labels never score (see the module docstring)."""
    batch, _ = tv.transform([image / 255 for image in images])
    features = list(tv.backbone(batch.tensors).values())
    heads = [(tv.head.classification_head, 1.0), (tv.head.regression_head, 0.5)]
    for head, std in heads:
        for conv, x in zip(head.module_list, features):
            scale = std / conv(x).std()
            conv.weight *= scale
            conv.bias *= scale
    for conv in tv.head.classification_head.module_list:
        num_labels = tv.head.classification_head.num_columns
        conv.weight.view(-1, num_labels, *conv.weight.shape[1:])[:, unused_labels] = 0
        conv.bias.view(-1, num_labels)[:, unused_labels] = -30


class Pair:
    """A calibrated random torchvision ssd300_vgg16, saved and converted by the tool, and our
    SSD300 built from CONFIG with the converted file loaded by Detectron2's checkpointer."""

    def __init__(self, num_labels, folder):
        torch.manual_seed(num_labels)
        self.tv = torchvision_detection.ssd300_vgg16(
            weights=None, weights_backbone=None, num_classes=num_labels
        ).eval()
        self.order = TOOL.class_order(num_labels)  # torchvision label of our classes, bg last
        self.labels = torch.tensor(self.order[:-1])
        self.images_full, self.images, self.files = _photos()
        _calibrate(self.tv, self.images, sorted(set(range(1, num_labels)) - set(self.order)))
        torch.save(self.tv.state_dict(), folder / "torchvision.pth")
        self.weights = str(folder / "converted.pkl")
        TOOL.main([str(folder / "torchvision.pth"), self.weights])
        self.cfg = make_cfg(CONFIG, ["MODEL.SSD.NUM_CLASSES", len(self.order) - 1])
        self.ours = build_model(self.cfg).eval()
        DetectionCheckpointer(self.ours).load(self.weights)

    @functools.cached_property
    @torch.no_grad()
    def raw_outputs(self):
        """Network input, priors, logits (in our class order) and box offsets of the photos:
        ours, then torchvision's."""
        tv_batch, _ = self.tv.transform([image / 255 for image in self.images])
        tv_features = list(self.tv.backbone(tv_batch.tensors).values())
        tv_out = self.tv.head(tv_features)
        tv_priors = self.tv.anchor_generator(tv_batch, tv_features)[0]
        ours = self.ours
        batch = ours.preprocess_image([{"image": image} for image in self.images])
        features = ours.backbone(batch.tensor)
        features = [features[f] for f in ours.head_in_features]
        logits, deltas = ours._transpose_dense_predictions(
            ours.head(features), [ours.num_classes + 1, 4]
        )
        priors = Boxes.cat(ours.anchor_generator(features)).tensor
        return (
            (batch.tensor, priors, torch.cat(logits, 1), torch.cat(deltas, 1)),
            (tv_batch.tensors, tv_priors, tv_out["cls_logits"][..., self.order],
             tv_out["bbox_regression"]),
        )  # fmt: skip


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Pair of a label count, built once for the module (each costs seconds and 300 MB)."""
    built = {}

    def get(num_labels):
        if num_labels not in built:
            built[num_labels] = Pair(num_labels, tmp_path_factory.mktemp(f"tv{num_labels}"))
        return built[num_labels]

    yield get
    built.clear()


@pytest.fixture(scope="module", params=[91, 21], ids=["coco91", "voc21"])
def pair(request, pairs):
    return pairs(request.param)


@pytest.fixture(scope="module")
def coco_pair(pairs):
    return pairs(91)


@pytest.fixture(scope="module")
def voc_pair(pairs):
    return pairs(21)


def _same_detections(tv_det, ours, labels, box_tol=0.05, max_detections=200):
    """Assert torchvision's detections and ours are the same sets of (label, box within
    ``box_tol`` px, score within 1e-5); return the largest box and score differences.

    Boxes that clipping made empty are left out (torchvision keeps them, Detectron2's
    detector_postprocess drops them), and so, when the 200-detection cap cut the list, are
    detections within 1e-5 of the cut-off score (a near tie decides which one is kept).
    """
    boxes, scores, tv_labels = tv_det["boxes"], tv_det["scores"], tv_det["labels"]
    keep = (boxes[:, 2:] > boxes[:, :2]).all(dim=1)
    ours_keep = torch.ones_like(ours.scores, dtype=torch.bool)
    if len(scores) == max_detections:
        cut = scores.min() + 1e-5
        keep &= scores > cut
        ours_keep &= ours.scores > cut
    boxes, scores, tv_labels = boxes[keep], scores[keep], tv_labels[keep]
    ours_boxes, ours_scores = ours.pred_boxes.tensor[ours_keep], ours.scores[ours_keep]
    ours_labels = labels[ours.pred_classes[ours_keep]]
    box_diff = (boxes[:, None] - ours_boxes[None]).abs().amax(dim=-1)
    score_diff = (scores[:, None] - ours_scores[None]).abs()
    same = (box_diff <= box_tol) & (score_diff <= 1e-5) & (tv_labels[:, None] == ours_labels[None])
    assert len(boxes) == len(ours_boxes) > 0, (len(boxes), len(ours_boxes))
    assert (
        same.any(dim=1).all() and same.any(dim=0).all()
    ), f"{(~same.any(dim=1)).sum()} of torchvision's {len(boxes)} detections unmatched"
    rows, matched = torch.arange(len(boxes)), same.float().argmax(dim=1)
    return len(boxes), box_diff[rows, matched].max().item(), score_diff[rows, matched].max().item()


def _max_diff(a, b):
    return (a - b).abs().max().item()


def test_converted_checkpoint_holds_exactly_our_keys(pair):
    with open(pair.weights, "rb") as f:
        converted = pickle.load(f)["model"]
    state = pair.ours.state_dict()
    assert set(converted) == set(state)
    for key, value in converted.items():
        assert torch.equal(state[key], torch.from_numpy(value)), key


def test_coco_labels_map_to_detectron2_classes_by_name():
    from torchvision.models._meta import _COCO_CATEGORIES  # torchvision's 91 label names

    order = TOOL.class_order(91)
    thing_classes = MetadataCatalog.get("coco_2017_val").thing_classes
    assert [_COCO_CATEGORIES[label] for label in order[:-1]] == thing_classes
    assert order[-1] == 0
    assert TOOL.class_order(21) == list(range(1, 21)) + [0]
    assert TOOL.class_order(91, "in-order") == list(range(1, 91)) + [0]
    with pytest.raises(ValueError, match="coco needs torchvision's 91 COCO labels, not 21"):
        TOOL.class_order(21, "coco")


def test_unknown_and_missing_keys_are_named(voc_pair):
    state = dict(voc_pair.tv.state_dict())
    state["head.extra_conv.weight"] = torch.zeros(1)
    del state["backbone.scale_weight"]
    with pytest.raises(
        KeyError, match=r"missing \['backbone.scale_weight'\]; unknown \['head.extra_conv.weight'\]"
    ):
        TOOL.convert(state)


def test_priors_identical_only_with_the_size_clamp(pair):
    """torchvision clamps each prior's width and height to the image (the last two maps' 2:1
    priors would be 1.23 x 300 wide): MODEL.ANCHOR_GENERATOR.CLAMP_SIZES does the same."""
    (_, priors, _, _), (_, tv_priors, _, _) = pair.raw_outputs
    assert priors.shape == tv_priors.shape == (8732, 4)
    print(f"\npriors: max |ours - torchvision| {_max_diff(priors, tv_priors):.3g} px")
    torch.testing.assert_close(priors, tv_priors, rtol=0, atol=1e-4)
    cfg = pair.cfg.clone()
    cfg.MODEL.ANCHOR_GENERATOR.CLAMP_SIZES = False
    shapes = [pair.ours.backbone.output_shape()[f] for f in pair.ours.head_in_features]
    unclamped = list(build_anchor_generator(cfg, shapes).cell_anchors)[5]
    clamped = list(pair.ours.anchor_generator.cell_anchors)[5]
    assert (unclamped[:, 2] - unclamped[:, 0]).max().item() == pytest.approx(261 * 2**0.5)
    assert (clamped[:, 2] - clamped[:, 0]).max().item() == pytest.approx(300)


def test_network_outputs_equal(pair):
    (x, _, logits, deltas), (tv_x, _, tv_logits, tv_deltas) = pair.raw_outputs
    figures = [_max_diff(x, tv_x), _max_diff(logits, tv_logits), _max_diff(deltas, tv_deltas)]
    scores = logits.softmax(-1)[..., :-1]
    candidates = (scores > 0.01).sum(dim=(1, 2)).tolist()
    print(
        f"\n{len(pair.order)} classes: max |ours - torchvision| of the network input "
        f"{figures[0]:.3g}, logits {figures[1]:.3g} (|logit| up to {logits.abs().max():.3g}), "
        f"box offsets {figures[2]:.3g}; scores > 0.01 per image: {candidates}, highest "
        f"{scores.max():.3g}"
    )
    torch.testing.assert_close(x, tv_x, rtol=0, atol=1e-4)
    torch.testing.assert_close(logits, tv_logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(deltas, tv_deltas, rtol=0, atol=1e-4)


@torch.no_grad()
def test_same_detections(pair):
    tv_detections = pair.tv([image / 255 for image in pair.images])
    inputs = [{"image": image, "height": 300, "width": 300} for image in pair.images]
    for tv_det, out in zip(tv_detections, pair.ours(inputs)):
        count, box, score = _same_detections(tv_det, out["instances"], pair.labels)
        print(
            f"\n{len(pair.order)} classes: {count} detections (of torchvision's "
            f"{len(tv_det['boxes'])}) the same; max box difference {box:.3g} px, score {score:.3g}"
        )


def _resize_effect(tv_det, ours, labels):
    """How far our detections are from torchvision's: for each of torchvision's, ours of the
    same label with the highest IoU; IoUs, and corner shift (px) and score change at IoU >= 0.5."""
    iou = pairwise_iou(Boxes(tv_det["boxes"]), ours.pred_boxes)
    iou[tv_det["labels"][:, None] != labels[ours.pred_classes][None]] = 0
    best_iou, match = iou.max(dim=1)
    close = best_iou >= 0.5
    shift = (tv_det["boxes"] - ours.pred_boxes.tensor[match]).abs().amax(dim=1)[close]
    score = (tv_det["scores"] - ours.scores[match]).abs()[close]
    return best_iou, shift, score


@torch.no_grad()
def test_resizers_are_the_only_difference_on_an_image_that_must_be_resized(coco_pair):
    """china.jpg (427 x 640) resized to 300 x 300: torchvision interpolates the normalised float
    image (bilinear, no antialiasing), Detectron2's mapper resizes the 8-bit image with PIL
    (bilinear, antialiased). Given our resized image, torchvision's detections are ours; given
    the original, they move by what ``pytest -s`` prints."""
    pair = coco_pair
    height, width = pair.images_full[0].shape[-2:]
    mapper = SSDDatasetMapper(pair.cfg, is_train=False)
    sample = mapper({"file_name": pair.files[0], "image_id": 0, "height": height, "width": width})
    ours = pair.ours([sample])[0]["instances"]

    resized = sample["image"].float()
    on_ours = pair.tv([resized / 255])[0]
    scale = torch.tensor([width / 300, height / 300] * 2)
    on_ours["boxes"] = (on_ours["boxes"] * scale).clamp(min=0)
    on_ours["boxes"] = torch.min(on_ours["boxes"], torch.tensor([width, height] * 2))
    _same_detections(on_ours, ours, pair.labels, box_tol=0.05 * width / 300)

    tv_batch, _ = pair.tv.transform([pair.images_full[0] / 255])
    tv_input = tv_batch.tensors[0] + pair.ours.pixel_mean.view(3, 1, 1)
    tv_det = pair.tv([pair.images_full[0] / 255])[0]
    iou, shift, score = _resize_effect(tv_det, ours, pair.labels)
    print(
        f"\nresized input: mean |torchvision - ours| {(tv_input - resized).abs().mean():.3g}, "
        f"max {(tv_input - resized).abs().max():.3g} grey levels. Of torchvision's {len(iou)} "
        f"detections, {(iou >= 0.9).sum()} have one of ours of the same label at IoU >= 0.9 and "
        f"{(iou >= 0.5).sum()} at >= 0.5 (median IoU {iou.median():.3g}, top 20 by score "
        f"{iou[:20].median():.3g}); those at >= 0.5 moved by a median {shift.median():.3g} px "
        f"(90th percentile {shift.quantile(0.9):.3g}, of a {width} x {height} image), their "
        f"scores by a median {score.median():.3g} (max {score.max():.3g})"
    )


# Targets on the two crops: boxes of many sizes, including two near-identical ones that share
# their best prior (where the matching rules differ); our classes (torchvision's labels are
# pair.labels[class]).
TRAIN_BOXES = [
    [[30.0, 40, 120, 150], [31, 41, 121, 151], [200, 180, 260, 290], [10, 10, 290, 280]],
    [[140.0, 60, 152, 75], [100, 100, 180, 160], [0, 150, 300, 300]],
]
TRAIN_CLASSES = [[3, 7, 15, 19], [0, 11, 5]]


def _training_batch(pair, images):
    """torchvision's targets and our inputs for ``images`` with TRAIN_BOXES."""
    tv_targets, ours = [], []
    for image, b, c in zip(images, TRAIN_BOXES, TRAIN_CLASSES):
        instances = Instances((300, 300))
        instances.gt_boxes = Boxes(torch.tensor(b))
        instances.gt_classes = torch.tensor(c)
        ours.append({"image": image, "instances": instances})
        tv_targets.append({"boxes": torch.tensor(b), "labels": pair.labels[c]})
    return tv_targets, ours


def _training_losses(pair, ours_model, tv_images, ours_images, backward):
    """Training losses of torchvision's model and ours on the same targets, with gradients."""
    tv_targets, batch = _training_batch(pair, ours_images)
    pair.tv.train()
    ours_model.train()
    try:
        with torch.set_grad_enabled(backward):
            tv_losses = pair.tv(tv_images, tv_targets)
            with EventStorage():
                losses = ours_model(batch)
        if backward:
            pair.tv.zero_grad()
            ours_model.zero_grad()
            sum(tv_losses.values()).backward()
            sum(losses.values()).backward()
    finally:
        pair.tv.eval()
        ours_model.eval()
    return (
        [losses["loss_cls"].item(), losses["loss_box_reg"].item()],
        [tv_losses["classification"].item(), tv_losses["bbox_regression"].item()],
    )


@torch.no_grad()
def test_training_loss_equals_torchvision_compute_loss(voc_pair):
    """From the same photos (each model normalising them its own way) and targets, with
    MODEL.SSD.MATCHER "torchvision": classification and box losses within 1e-4."""
    pair = voc_pair
    # The targets exercise the rule: two share their best prior, and Caffe's rule would label
    # the priors otherwise.
    priors = [Boxes(pair.raw_outputs[0][1])]
    gt = _training_batch(pair, pair.images)[1][0]["instances"]
    assert pairwise_iou(gt.gt_boxes[:2], priors[0]).argmax(dim=1).unique().numel() == 1
    caffe = copy.copy(pair.ours)  # shallow: its own anchor_matcher, the same weights
    caffe.anchor_matcher = BipartiteMatcher(pair.cfg.MODEL.SSD.IOU_THRESHOLD)
    assert isinstance(pair.ours.anchor_matcher, TorchvisionSSDMatcher)
    assert not torch.equal(
        pair.ours.label_anchors(priors, [gt])[0][0], caffe.label_anchors(priors, [gt])[0][0]
    )
    ours, tv = _training_losses(
        pair, pair.ours, [i / 255 for i in pair.images], pair.images, backward=False
    )
    print(f"\nlosses (cls, box): ours {ours}, torchvision {tv}")
    assert ours == pytest.approx(tv, rel=0, abs=1e-4)


def test_gradients_equal_torchvision(voc_pair):
    """Gradients of every weight within 1e-4, both models given torchvision's normalised
    tensor (ours with zero mean and unit std). With each normalising the photos itself, the
    inputs differ by 1.5e-5 (float32 rounding of two formulas); a ReLU whose input is that
    close to 0 then passes the gradient in one model and not the other, and VGG conv1-conv4
    gradients differ by up to 1.2e-3 (of up to 3.4) while the head and extra layers agree to
    8e-6 (measured; in float64 with the same mean, 1.6e-6 everywhere)."""
    pair = voc_pair
    ours_model = copy.deepcopy(pair.ours)
    ours_model.pixel_mean.zero_()
    ours_model.pixel_std.fill_(1.0)
    tv_inputs = [i / 255 for i in pair.images]
    with torch.no_grad():
        normalised = list(pair.tv.transform(tv_inputs)[0].tensors)
    ours, tv = _training_losses(pair, ours_model, tv_inputs, normalised, backward=True)
    assert ours == pytest.approx(tv, rel=0, abs=1e-4)
    tv_grads, _ = TOOL.convert({k: p.grad for k, p in pair.tv.named_parameters()})
    grads = {k: p.grad for k, p in ours_model.named_parameters()}
    assert set(grads) == set(tv_grads)
    diffs = {k: _max_diff(g, tv_grads[k]) for k, g in grads.items()}
    worst = max(diffs, key=diffs.get)
    print(
        f"\nlosses (cls, box): ours {ours}, torchvision {tv}; gradients of {len(diffs)} "
        f"weights: max |ours - torchvision| {diffs[worst]:.3g} ({worst}, |gradient| up to "
        f"{grads[worst].abs().max():.3g})"
    )
    assert diffs[worst] <= 1e-4
