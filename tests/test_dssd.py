"""ResNet-SSD and DSSD: full-size geometry (DSSD paper, Tables 2 and 7), and shrunk models that
train: every prediction module and combination, staged freezing, SSD -> DSSD checkpoints,
RetinaNet over the DSSD decoder, SSD over Detectron2's FPN, and DSSD end to end."""

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from detectron2.utils.events import EventStorage

from dssd_d2.engine import SSDTrainer
from dssd_d2.engine.checkpoint import AtomicCheckpointer
from dssd_d2.modeling.backbone.dssd import deconv_geometry
from dssd_d2.shapes import feature_sizes
from dssd_d2.modeling.backbone.resnet import ExtraBottleneckBlock, build_resnet_ssd_backbone

from helpers import (
    DSSD321,
    DSSD513,
    SSD321,
    SSD513,
    make_cfg,
    random_image,
    register_random_dataset,
    tiny_resnet_cfg,
    tiny_ssd300_cfg,
    train_and_track,
    training_input,
)

MAPS_321 = [40, 20, 10, 5, 3, 1]
MAPS_513 = [64, 32, 16, 8, 4, 2, 1]


pytestmark = pytest.mark.usefixtures("single_thread")


def _batch(size):
    return [
        training_input(size, [[20, 30, 120, 150], [150, 160, 300, 290]], [0, 2], seed=0),
        training_input(size, [[60, 40, 100, 90]], [1], seed=1),
    ]


def _train_step(model, inputs, lr=0.05):
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    with EventStorage():
        losses = model(inputs)
    loss = sum(losses.values())
    assert torch.isfinite(loss), losses
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return losses


# ---------------------------------------------------------------- full size: structure only
@pytest.mark.parametrize(
    "config_file, maps, boxes",
    [
        (SSD321, MAPS_321, 17080),
        (SSD513, MAPS_513, 43688),
        (DSSD321, MAPS_321, 17080),
        (DSSD513, MAPS_513, 43688),
    ],
)
def test_prediction_maps_and_default_boxes(config_file, maps, boxes):
    cfg = make_cfg(config_file)
    model = build_model(cfg)
    size = cfg.INPUT.FIXED_SIZE
    sizes = feature_sizes(model.backbone, (size, size))
    assert [sizes[f] for f in model.head_in_features] == [(s, s) for s in maps]
    assert model.anchor_generator.num_cell_anchors == [8] * len(maps)
    shaped = [torch.empty(1, 1, s, s, device="meta") for s in maps]
    assert sum(len(b) for b in model.anchor_generator(shaped)) == boxes


@pytest.mark.parametrize(
    "config_file, maps, deconvs",
    [
        # (lateral, kernel, stride) per deconvolution module, coarse to fine (paper, Sec. 3).
        (
            DSSD321,
            MAPS_321,
            [("res8", 3, 1), ("res7", 3, 1), ("res6", 2, 2), ("res5", 2, 2), ("res3", 2, 2)],
        ),
        (
            DSSD513,
            MAPS_513,
            [
                ("res9", 2, 2),
                ("res8", 2, 2),
                ("res7", 2, 2),
                ("res6", 2, 2),
                ("res5", 2, 2),
                ("res3", 2, 2),
            ],
        ),
    ],
)
def test_full_size_dssd_backbone_forward(config_file, maps, deconvs):
    """A real forward of ResNet-101 + decoder on a zero image (no training at full size)."""
    cfg = make_cfg(config_file)
    backbone = build_backbone(cfg).eval()
    for lateral, kernel, stride in deconvs:
        deconv = getattr(backbone, f"deconv_{lateral}").deconv
        assert (deconv.kernel_size, deconv.stride) == ((kernel, kernel), (stride, stride))
    size = cfg.INPUT.FIXED_SIZE
    assert backbone.padding_constraints == {"square_size": size}
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, size, size))
    names = [f"dssd_{f}" for f in cfg.MODEL.DSSD.IN_FEATURES]
    assert list(features) == names == list(backbone.output_shape())
    channels = [512] * (len(maps) - 1) + [1024]  # the top map is the 1x1 ResNet-SSD level
    assert [tuple(features[n].shape[1:]) for n in names] == [
        (c, s, s) for c, s in zip(channels, maps)
    ]
    assert [backbone.output_shape()[n].channels for n in names] == channels


def test_resnet_ssd_keeps_detectron2_resnet_names():
    """Module names match Detectron2's ResNet, so R-101.pkl loads with its name heuristics."""
    model = build_model(make_cfg(SSD321))
    names = {k for k, _ in model.backbone.named_parameters()}
    assert {
        "stem.conv1.weight",
        "res2.0.conv1.weight",
        "res4.22.conv3.norm.weight",
        "res5.2.conv2.weight",
    } <= names
    assert model.backbone.res5[0].conv2.dilation == (2, 2)
    assert model.backbone.output_shape()["res5"].stride == 16


def test_imagenet_resnet_weights_load_into_the_decoder_by_name_heuristics(tmp_path):
    """A Detectron2-format ImageNet ResNet (e.g. converted from torchvision, loaded with
    matching heuristics like R-101.pkl) fills the ResNet inside the DSSD decoder."""
    cfg = tiny_resnet_cfg(DSSD321)
    resnet_cfg = cfg.clone()
    resnet_cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    resnet = build_resnet_backbone(resnet_cfg, ShapeSpec(channels=3))
    weights = {k: v.numpy() for k, v in resnet.state_dict().items()}
    with open(tmp_path / "resnet.pkl", "wb") as f:
        pickle.dump({"model": weights, "__author__": "test", "matching_heuristics": True}, f)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(tmp_path / "resnet.pkl"))
    loaded = model.backbone.bottom_up.state_dict()
    for key, value in weights.items():
        if key in loaded:  # FrozenBatchNorm2d (stage-1 freezing) has no batch counter
            assert np.array_equal(loaded[key].numpy(), value), key


# ---------------------------------------------------------------- geometry helpers
def test_deconv_geometry():
    assert deconv_geometry(20, 40) == (2, 2, 0)
    assert deconv_geometry(1, 2) == (2, 2, 0)  # the paper's 2x2 stride 1: the same map
    assert deconv_geometry(1, 3) == (3, 1, 0)
    assert deconv_geometry(3, 5) == (3, 1, 0)
    assert deconv_geometry(10, 19) == (3, 2, 1)
    assert deconv_geometry(10, 40) is None
    for coarse, fine in [(20, 40), (1, 2), (1, 3), (3, 5), (10, 19)]:
        k, s, p = deconv_geometry(coarse, fine)
        assert (
            nn.ConvTranspose2d(1, 1, k, s, p)(torch.zeros(1, 1, coarse, coarse)).shape[-1] == fine
        )


def test_extra_block_without_padding_keeps_shortcut_aligned():
    block = ExtraBottleneckBlock(8, 8, bottleneck_channels=4, stride=1, kernel_size=3, padding=0)
    assert block.shortcut is not None
    assert block(torch.randn(2, 8, 3, 3)).shape == (2, 8, 1, 1)
    assert block(torch.randn(2, 8, 7, 5)).shape == (2, 8, 5, 3)
    with pytest.raises(ValueError, match="MODEL.SSD_EXTRAS.PADDINGS"):
        ExtraBottleneckBlock(8, 8, bottleneck_channels=4, kernel_size=3, padding=2)


def test_decoder_over_vgg_ssd300_maps():
    """Any bottom-up works: SSD300's 38, 19, 10, 5, 3, 1 need 19 -> 38, 10 -> 19 (2n - 1) ..."""
    cfg = tiny_ssd300_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_dssd_backbone"
    cfg.MODEL.DSSD.BOTTOM_UP = "build_vgg_ssd_backbone"
    cfg.MODEL.DSSD.IN_FEATURES = list(cfg.MODEL.SSD.IN_FEATURES)
    cfg.MODEL.DSSD.OUT_CHANNELS = 16
    cfg.MODEL.SSD.IN_FEATURES = [f"dssd_{f}" for f in cfg.MODEL.SSD.IN_FEATURES]
    model = build_model(cfg)
    assert model.backbone.deconv_conv4_3.deconv.kernel_size == (2, 2)
    assert model.backbone.deconv_fc7.deconv.kernel_size == (3, 3)
    _train_step(model, _batch(300))


def test_decoder_rejects_sizes_it_cannot_match():
    cfg = tiny_resnet_cfg(DSSD321)
    cfg.MODEL.DSSD.IN_FEATURES = ["res3", "res6"]  # 10 -> 40 has no deconvolution
    with pytest.raises(ValueError, match="MODEL.DSSD.IN_FEATURES"):
        build_backbone(cfg)


# ---------------------------------------------------------------- shrunk models that train
@pytest.mark.slow
@pytest.mark.parametrize(
    "config_file, prediction_module, combine",
    [
        (SSD321, "residual_projection", None),
        (DSSD321, "none", "prod"),
        (DSSD321, "residual", "prod"),
        (DSSD321, "residual_projection", "prod"),
        (DSSD321, "two_residual_projection", "prod"),
        (DSSD321, "residual_projection", "sum"),
    ],
)
def test_prediction_modules_and_combinations_train(config_file, prediction_module, combine):
    torch.manual_seed(0)
    cfg = tiny_resnet_cfg(config_file)
    cfg.MODEL.SSD_HEAD.PREDICTION_MODULE = prediction_module
    if combine:
        cfg.MODEL.DSSD.COMBINE = combine
    cfg.MODEL.SSD.FREEZE = []
    model = build_model(cfg)
    if combine:
        assert all(m.combine == combine for m in model.backbone.deconv_modules)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    losses = _train_step(model, _batch(cfg.INPUT.FIXED_SIZE))
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert any(k.startswith("head.prediction_modules") for k in changed) == (
        prediction_module != "none"
    )
    assert any(".stem." in k or k.startswith("backbone.stem") for k in changed)


@pytest.mark.parametrize("freeze_head", [False, True])
def test_stage1_freezing_trains_only_the_deconvolution_side(freeze_head):
    torch.manual_seed(0)
    cfg = tiny_resnet_cfg(DSSD321)
    cfg.MODEL.SSD.FREEZE = ["backbone.bottom_up"] + (["head"] if freeze_head else [])
    model = build_model(cfg)
    frozen_norms = [m for m in model.backbone.bottom_up.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not frozen_norms
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.bottom_up.modules())
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _train_step(model, _batch(cfg.INPUT.FIXED_SIZE), lr=0.5)
    after = model.state_dict()

    def frozen(key):
        return key.startswith("backbone.bottom_up.") or (freeze_head and key.startswith("head."))

    # Parameters and BatchNorm statistics of the SSD part stay; the decoder's change.
    assert all(torch.equal(after[k], v) for k, v in before.items() if frozen(k))
    decoder = [k for k in before if k.startswith("backbone.deconv_") and k.endswith("weight")]
    assert decoder and all(not torch.equal(after[k], before[k]) for k in decoder)
    head = [k for k in before if k.startswith("head.") and k.endswith("weight")]
    assert any(not torch.equal(after[k], before[k]) for k in head) != freeze_head
    assert all(not p.requires_grad for n, p in model.named_parameters() if frozen(n))


def _ssd_checkpoint(tmp_path):
    torch.manual_seed(0)
    ssd = build_model(tiny_resnet_cfg(SSD321))
    DetectionCheckpointer(ssd, save_dir=str(tmp_path)).save("ssd321")
    return ssd, str(tmp_path / "ssd321.pth")


@pytest.mark.parametrize("exclude", [[], ["head"]])
def test_ssd_checkpoint_into_dssd_reports_exactly_the_new_weights(tmp_path, exclude):
    """Stage 1 starts from an SSD checkpoint: the ResNet-SSD is read into the bottom-up, the
    checkpointer names every weight that is not (decoder; prediction-module convs whose input
    width the decoder changed; with MODEL.WEIGHTS_EXCLUDE ["head"], every predictor) and the
    rest holds the SSD's values, BatchNorm statistics included."""
    ssd, path = _ssd_checkpoint(tmp_path)
    cfg = tiny_resnet_cfg(DSSD321)  # FREEZE ["backbone.bottom_up"]: BatchNorm frozen
    cfg.MODEL.WEIGHTS_EXCLUDE = exclude
    dssd = build_model(cfg)
    checkpointer = AtomicCheckpointer(dssd, weights_exclude=exclude)
    checkpointer.resume_or_load(path, resume=False)

    state = {k: v for k, v in dssd.state_dict().items() if not k.endswith("num_batches_tracked")}
    decoder = {k for k in state if k.startswith("backbone.deconv_")}
    if exclude:
        expected = {k: "MODEL.WEIGHTS_EXCLUDE" for k in state if k.startswith("head.")}
    else:
        # Tiny widths: res3 32, res5 128, res6-res8 32 channels become 16 decoder channels;
        # res9 is passed through. Only the convs that read the input change shape.
        expected = {
            f"head.prediction_modules.{level}.{conv}.weight": "shape"
            for level in range(5)
            for conv in ("conv1", "shortcut")
        }
    expected.update({k: "not in the file" for k in decoder})
    assert set(checkpointer.new_weights) == set(expected)
    for key, reason in expected.items():
        assert checkpointer.new_weights[key].startswith(reason), key

    ssd_state = ssd.state_dict()
    for key, value in state.items():
        if key in expected:
            continue
        source = key.replace("backbone.bottom_up.", "backbone.", 1)
        assert torch.equal(value, ssd_state[source]), key

    # A DSSD checkpoint loads back into DSSD whole.
    AtomicCheckpointer(dssd, save_dir=str(tmp_path)).save("dssd321")
    again = AtomicCheckpointer(build_model(cfg))
    incompatible = again._load_model(torch.load(tmp_path / "dssd321.pth"))
    assert not again.new_weights and not incompatible.unexpected_keys


def test_weights_exclude_is_for_the_initial_weights_only(tmp_path):
    _, path = _ssd_checkpoint(tmp_path)
    cfg = tiny_resnet_cfg(DSSD321)
    model = build_model(cfg)
    with pytest.raises(ValueError, match=r"MODEL.WEIGHTS_EXCLUDE has \['heads'\]"):
        AtomicCheckpointer(model, weights_exclude=["heads"])
    run = tmp_path / "run"
    run.mkdir()
    checkpointer = AtomicCheckpointer(model, save_dir=str(run), weights_exclude=["head"])
    checkpointer.resume_or_load(path, resume=True)  # nothing to resume: starts from the SSD
    assert "head.cls_score.0.weight" in checkpointer.new_weights
    with torch.no_grad():
        model.head.cls_score[0].weight.add_(1.0)
    checkpointer.save("model_0000001")
    resumed = build_model(cfg)
    checkpointer = AtomicCheckpointer(resumed, save_dir=str(run), weights_exclude=["head"])
    checkpointer.resume_or_load(path, resume=True)  # resumes its own run: reads everything
    assert not checkpointer.new_weights
    assert torch.equal(resumed.head.cls_score[0].weight, model.head.cls_score[0].weight)


def test_freeze_all_bn_trains_convolutions_with_every_norm_fixed():
    """DSSD stage 2 as the official code fine-tunes: everything but BatchNorm trains."""
    torch.manual_seed(0)
    cfg = tiny_resnet_cfg(DSSD321)
    cfg.MODEL.SSD.FREEZE = []
    cfg.MODEL.SSD.FREEZE_ALL_BN = True
    model = build_model(cfg)
    assert not [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    norms = {n for n, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)}
    assert any(n.startswith("backbone.bottom_up.") for n in norms)
    assert any(n.startswith("backbone.deconv_") for n in norms)
    assert any(n.startswith("head.") for n in norms)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _train_step(model, _batch(cfg.INPUT.FIXED_SIZE))
    after = model.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(after[k], v)}
    assert not [k for k in changed if k.rpartition(".")[0] in norms]
    for part in ("backbone.bottom_up.", "backbone.deconv_", "head."):
        assert any(k.startswith(part) for k in changed), part


def test_backbones_own_their_outputs():
    """A backbone's outputs come from its own keys, never from the model that uses it: VGG
    outputs all its maps whatever MODEL.SSD.IN_FEATURES says, and the DSSD decoder's bottom-up is
    the backbone its config builds on its own (the config is not rewritten)."""
    cfg = tiny_ssd300_cfg()
    cfg.MODEL.SSD.IN_FEATURES = ["fc7", "conv6_2", "conv7_2", "conv8_2"]
    cfg.MODEL.ANCHOR_GENERATOR.MIN_SIZES = cfg.MODEL.ANCHOR_GENERATOR.MIN_SIZES[1:5]
    cfg.MODEL.ANCHOR_GENERATOR.MAX_SIZES = cfg.MODEL.ANCHOR_GENERATOR.MAX_SIZES[1:5]
    cfg.MODEL.ANCHOR_GENERATOR.STEPS = cfg.MODEL.ANCHOR_GENERATOR.STEPS[1:5]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[1:5]
    model = build_model(cfg)
    assert list(model.backbone.output_shape()) == [
        "conv4_3", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2"
    ]  # fmt: skip
    assert model.head_in_features == cfg.MODEL.SSD.IN_FEATURES
    _train_step(model, _batch(300))

    cfg = tiny_resnet_cfg(DSSD321)
    cfg.freeze()
    decoder = build_backbone(cfg)
    standalone = build_resnet_ssd_backbone(cfg, ShapeSpec(channels=3))
    assert decoder.bottom_up.output_shape() == standalone.output_shape()
    assert list(standalone.output_shape()) == ["res3", "res5", "res6", "res7", "res8", "res9"]


@pytest.mark.slow
@pytest.mark.skipif(
    "KERNEL_SIZES" not in make_cfg().MODEL.SSD_HEAD,
    reason="needs MODEL.SSD_HEAD.KERNEL_SIZES / PREDICTION_MODULE_DIMS_PER_LEVEL (heads.py)",
)
def test_official_per_level_kernels_and_widths_build_and_train():
    """The official DSSD321's 5, 5, 3, 3, 3, 3 predictors and per-level prediction-module widths
    (as its SSD513 varies them), on the shrunk DSSD321."""
    torch.manual_seed(0)
    cfg = tiny_resnet_cfg(DSSD321)
    cfg.MODEL.SSD.FREEZE = []
    cfg.MODEL.SSD_HEAD.KERNEL_SIZES = [5, 5, 3, 3, 3, 3]
    widths = [[4, 16], [8, 32], [8, 24], [4, 16], [4, 16], [8, 32]]
    cfg.MODEL.SSD_HEAD.PREDICTION_MODULE_DIMS_PER_LEVEL = widths
    model = build_model(cfg)

    def first_conv(module):
        return next(m for m in module.modules() if isinstance(m, nn.Conv2d))

    for level, (kernel, (_, out)) in enumerate(zip([5, 5, 3, 3, 3, 3], widths)):
        for predictor in (model.head.cls_score[level], model.head.bbox_pred[level]):
            conv = first_conv(predictor)
            assert conv.kernel_size == (kernel, kernel) and conv.in_channels == out
        assert model.head.prediction_modules[level].out_channels == out
    before = [first_conv(model.head.cls_score[level]).weight.detach().clone() for level in (0, 1)]
    _train_step(model, _batch(cfg.INPUT.FIXED_SIZE))
    for level, weight in zip((0, 1), before):  # the 5x5 predictors learn
        assert not torch.equal(first_conv(model.head.cls_score[level]).weight, weight)


def test_retinanet_over_dssd_decoder_trains_and_infers():
    torch.manual_seed(0)
    cfg = tiny_resnet_cfg("Misc/retinanet_dssd_R_101.yaml")
    model = build_model(cfg)
    assert type(model).__name__ == "RetinaNet"
    losses = _train_step(model, _batch(cfg.INPUT.FIXED_SIZE), lr=0.01)
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    model.eval()
    # Smaller, non-square images: the decoder pads each batch to its 321 square.
    images = [{"image": random_image(300, 250, 2)}, {"image": random_image(200, 321, 3)}]
    with torch.no_grad():
        outputs = model(images)
    assert [o["instances"].image_size for o in outputs] == [(300, 250), (200, 321)]


def test_ssd_over_detectron2_fpn_trains_a_step():
    torch.manual_seed(0)
    cfg = tiny_resnet_cfg("Misc/ssd_R_50_FPN.yaml")
    cfg.INPUT.FIXED_SIZE = 256
    model = build_model(cfg)
    assert model.head_in_features == ["p3", "p4", "p5", "p6", "p7"]
    assert model.anchor_generator.strides == [8, 16, 32, 64, 128]
    _train_step(model, _batch(256))
    model.eval()
    with torch.no_grad():
        (output,) = model([{"image": random_image(256, 256, 4)}])
    assert output["instances"].image_size == (256, 256)


# ---------------------------------------------------------------- with Detectron2's trainer
@pytest.fixture(scope="module")
def random_dataset(tmp_path_factory):
    """Four random images of varied sizes with two boxes each, registered once."""
    return register_random_dataset(
        "dssd_d2_test_dssd_random",
        tmp_path_factory.mktemp("images"),
        size_range=(120, 240),
        boxes_per_image=2,
        min_box=20,
    )


def _train(cfg, output_dir, dataset):
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.DATASETS.TEST = (dataset,)
    cfg.SOLVER.MAX_ITER = 2
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.BASE_LR = 0.01
    cfg.TEST.EVAL_PERIOD = 0
    trainer, _ = train_and_track(cfg, output_dir)
    return trainer


@pytest.mark.slow
def test_shrunk_ssd_then_dssd_train_and_evaluate(tmp_path, random_dataset):
    torch.manual_seed(0)
    ssd = _train(tiny_resnet_cfg(SSD321), str(tmp_path / "ssd"), random_dataset)

    cfg = tiny_resnet_cfg(DSSD321)
    cfg.MODEL.WEIGHTS = str(tmp_path / "ssd" / "model_final.pth")
    trainer = _train(cfg, str(tmp_path / "dssd"), random_dataset)
    bottom_up = trainer.model.backbone.bottom_up.state_dict()
    for key, value in ssd.model.backbone.state_dict().items():
        if key in bottom_up:  # SSD's BatchNorm counters have no FrozenBatchNorm2d slot
            assert torch.equal(bottom_up[key], value), key
    results = SSDTrainer.test(cfg, trainer.model)
    assert "AP" in results["bbox"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "config_file, size", [("Misc/retinanet_dssd_R_101.yaml", 321), ("Misc/ssd_R_50_FPN.yaml", 256)]
)
def test_mixed_models_train_and_evaluate(tmp_path, random_dataset, config_file, size):
    """RetinaNet over the DSSD decoder, and SSD over Detectron2's FPN, through the trainer."""
    torch.manual_seed(0)
    cfg = tiny_resnet_cfg(config_file)
    cfg.INPUT.FIXED_SIZE = size
    trainer = _train(cfg, str(tmp_path), random_dataset)
    assert trainer.iter == cfg.SOLVER.MAX_ITER
    results = SSDTrainer.test(cfg, trainer.model)
    assert "AP" in results["bbox"]
