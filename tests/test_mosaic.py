"""INPUT.MOSAIC: four images tiled into one (dssd_d2/data/mosaic.py). Boxes are drawn as solid
colours into synthetic images, so that a box that drifted from its object shows in the pixels."""

import os

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from detectron2.engine import SimpleTrainer
from detectron2.structures import BoxMode
from detectron2.utils.env import seed_all_rng

from dssd_d2.data import SSDDatasetMapper
from dssd_d2.data.mosaic import (
    CloseMosaicHook,
    SSDMosaicMapper,
    build_train_mapper,
    close_mosaic_hooks,
    mosaic,
)

from helpers import make_cfg

BACKGROUND = 0


def _colour(image_index, box_index):
    """A colour of its own for every object: no other object, background or fill matches it."""
    return (40 + 50 * box_index, 60 + 30 * image_index, 250 - 40 * box_index)


def _tile(image_index, h, w, boxes):
    image = np.full((h, w, 3), BACKGROUND, np.uint8)
    for j, (x0, y0, x1, y1) in enumerate(boxes):
        image[y0:y1, x0:x1] = _colour(image_index, j)
    return image, np.asarray(boxes, dtype=np.float64)


def _assert_boxes_fit_their_objects(image, boxes, colours, palette, atol=1.5):
    """Inside each box (less 2 pixels for the resizes' blur at the edges) every pixel has the
    box's colour, and the pixels nearest that colour among the ``palette`` (every colour the
    image may hold) span the box, near it, to within ``atol`` pixels."""
    h, w = image.shape[:2]
    palette = np.asarray(palette, dtype=float)
    nearest = np.abs(image[:, :, None].astype(float) - palette).max(axis=-1).argmin(axis=-1)
    for box, colour in zip(boxes, colours):
        x0, y0, x1, y1 = box
        inner = image[int(np.ceil(y0)) + 2 : int(y1) - 2, int(np.ceil(x0)) + 2 : int(x1) - 2]
        assert inner.size and (np.abs(inner.astype(int) - colour).max(axis=-1) <= 8).all(), box
        wx0, wy0 = max(int(x0) - 4, 0), max(int(y0) - 4, 0)
        wx1, wy1 = min(int(np.ceil(x1)) + 4, w), min(int(np.ceil(y1)) + 4, h)
        index = np.abs(palette - colour).max(axis=1).argmin()
        mask = (nearest[wy0:wy1, wx0:wx1] == index).nonzero()
        extent = [mask[1].min() + wx0, mask[0].min() + wy0, mask[1].max() + wx0 + 1,
                  mask[0].max() + wy0 + 1]  # fmt: skip
        np.testing.assert_allclose(extent, box, atol=atol)


def test_tiles_meet_at_the_centre_with_their_boxes_on_their_objects():
    tiles = [
        _tile(0, 100, 100, [[60, 55, 80, 70], [10, 10, 40, 40], [30, 75, 70, 95],
                            [85, 49, 99, 51], [0, 60, 55, 70]]),  # fmt: skip
        _tile(1, 60, 120, [[10, 10, 50, 50], [90, 20, 110, 55]]),
        _tile(2, 150, 45, [[5, 5, 40, 60], [10, 80, 35, 140]]),
        _tile(3, 40, 40, [[0, 0, 40, 40]]),
    ]
    fill = (11.0, 22.0, 33.0)
    image, kept = mosaic(tiles, 100, (50, 50), fill, min_area_fraction=0.1)
    assert image.shape == (100, 100, 3) and image.dtype == np.uint8

    # Tile 0 (100 x 100, scale 1) has its bottom-right corner at the centre: it shows its
    # [50, 100) x [50, 100) part in the top-left quadrant.
    indices, boxes = kept[0]
    assert indices.tolist() == [0, 2]  # 1 is outside, 3 keeps 1 pixel, 4 keeps 9% of its area
    np.testing.assert_allclose(boxes, [[10, 5, 30, 20], [0, 25, 20, 45]])
    # Tile 1 (60 x 120, resized by 100/120 to 50 x 100) has its bottom-left corner at the
    # centre: its left half shows; box 1 lies in the right half.
    indices, boxes = kept[1]
    assert indices.tolist() == [0]
    np.testing.assert_allclose(boxes, np.array([[10, 10, 50, 50]]) * 100 / 120 + [50, 0, 50, 0])
    # Tile 3 (40 x 40 -> 100 x 100) from the centre to the bottom-right corner.
    np.testing.assert_allclose(kept[3][1], [[50, 50, 100, 100]])
    # Tile 2 (150 x 45 -> 100 x 30) spans x 20 to 50 below the centre: the fill shows left of
    # it; its box 1 falls below the canvas.
    assert kept[2][0].tolist() == [0]
    np.testing.assert_allclose(kept[2][1], [np.array([5, 5, 40, 60]) * 2 / 3 + [20, 50, 20, 50]])
    assert (image[99, :20] == fill).all() and (image[:, 20:50][50:] != fill).any()

    all_boxes, colours = [], []
    for t, (indices, boxes) in enumerate(kept):
        all_boxes += list(boxes)
        colours += [_colour(t, int(i)) for i in indices]
    palette = [(BACKGROUND,) * 3, fill] + [_colour(t, j) for t in range(4) for j in range(5)]
    _assert_boxes_fit_their_objects(image, all_boxes, colours, palette)


@pytest.fixture
def colour_dataset(tmp_path):
    """Six images of varied sizes with two to three solid-colour boxes each, and the class of a
    box in its blue-green-red order: class j for box j."""
    rng = np.random.RandomState(0)
    dicts = []
    for i in range(6):
        h, w = int(rng.randint(90, 200)), int(rng.randint(90, 200))
        boxes = []
        for j in range(int(rng.randint(2, 4))):  # one per horizontal band, apart
            band = h // 3
            x0 = int(rng.randint(0, w - 40))
            y0 = j * band + int(rng.randint(0, band - 25))
            boxes.append([x0, y0, x0 + int(rng.randint(20, 40)), y0 + int(rng.randint(15, 25))])
        image, _ = _tile(i, h, w, boxes)
        path = os.path.join(str(tmp_path), f"{i}.png")
        cv2.imwrite(path, image)
        annotations = [
            {"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": j}
            for j, b in enumerate(boxes)
        ]
        dicts.append(
            {"file_name": path, "image_id": i, "height": h, "width": w, "annotations": annotations}
        )
    return dicts


def _mosaic_cfg(**ssd_aug):
    cfg = make_cfg("Base-SSD.yaml")
    cfg.MODEL.SSD.NUM_CLASSES = 3
    cfg.INPUT.FIXED_SIZE = 160
    cfg.INPUT.MOSAIC.ENABLED = True
    cfg.INPUT.SSD_AUG.PHOTOMETRIC = False
    cfg.INPUT.SSD_AUG.EXPAND_RATIO = 1.0
    for key, value in ssd_aug.items():
        cfg.INPUT.SSD_AUG[key] = value
    return cfg


@pytest.mark.parametrize("crop", [False, True])
def test_mapper_output_boxes_lie_on_their_objects(colour_dataset, crop):
    """Through the whole mapper: mosaic, then (optionally) SSD's crop, resize and flip. A crop
    can enlarge the mosaic 3x, and with it the blur and aliasing of the two resizes: 3 pixels."""
    cfg = _mosaic_cfg(MIN_IOU_CROP=crop)
    mapper = build_train_mapper(cfg, colour_dataset)
    assert isinstance(mapper, SSDMosaicMapper)
    fill = cfg.MODEL.PIXEL_MEAN[::-1] if cfg.INPUT.FORMAT == "RGB" else cfg.MODEL.PIXEL_MEAN
    palette = [(BACKGROUND,) * 3, fill] + [_colour(i, j) for i in range(6) for j in range(3)]
    seed_all_rng(0)
    images_seen = 0
    for i in range(12):
        out = mapper(colour_dataset[i % 6])
        image = out["image"].permute(1, 2, 0).numpy()
        assert image.shape == (160, 160, 3)
        image = image[..., ::-1] if cfg.INPUT.FORMAT == "RGB" else image  # as written, BGR
        boxes = out["instances"].gt_boxes.tensor.numpy()
        classes = out["instances"].gt_classes.tolist()
        # Which image a box came from is unknown here; its colour says it, and its class.
        colours = []
        for box, category in zip(boxes, classes):
            x0, y0, x1, y1 = box
            centre = image[int((y0 + y1) / 2), int((x0 + x1) / 2)].astype(int)
            candidates = [_colour(i, category) for i in range(6)]
            colours.append(min(candidates, key=lambda c: np.abs(centre - c).max()))
        big = [(b, c) for b, c in zip(boxes, colours) if min(b[2] - b[0], b[3] - b[1]) > 6]
        if big:
            _assert_boxes_fit_their_objects(image, *zip(*big), palette, 3.0 if crop else 1.5)
        images_seen += len({c[1] for c in colours})
    assert images_seen > 12  # boxes of several images per sample: mosaics


def test_mapper_is_deterministic_under_a_seed(colour_dataset):
    mapper = SSDMosaicMapper(_mosaic_cfg(), is_train=True, dataset=colour_dataset)

    def sample(seed):
        seed_all_rng(seed)
        out = mapper(colour_dataset[0])
        return out["image"], out["instances"].gt_boxes.tensor

    (image, boxes), (again, boxes_again), (other, _) = sample(3), sample(3), sample(4)
    assert torch.equal(image, again) and torch.equal(boxes, boxes_again)
    assert not torch.equal(image, other)


def test_prob_zero_is_the_plain_mapper(colour_dataset):
    cfg = _mosaic_cfg(MIN_IOU_CROP=False)
    cfg.INPUT.RANDOM_FLIP = "none"  # no random augmentation left: the outputs must be equal
    cfg.INPUT.MOSAIC.PROB = 0.0
    mosaic_off = SSDMosaicMapper(cfg, is_train=True, dataset=colour_dataset)(colour_dataset[1])
    cfg.INPUT.MOSAIC.ENABLED = False
    plain = build_train_mapper(cfg, colour_dataset)
    assert type(plain) is SSDDatasetMapper
    expected = plain(colour_dataset[1])
    assert torch.equal(mosaic_off["image"], expected["image"])
    assert torch.equal(
        mosaic_off["instances"].gt_boxes.tensor, expected["instances"].gt_boxes.tensor
    )


@pytest.mark.parametrize(
    "key, value",
    [("PROB", 1.5), ("MIN_AREA_FRACTION", -0.1), ("CENTER_RANGE", (0.8, 0.2))],
)
def test_bad_settings_name_their_key(colour_dataset, key, value):
    cfg = _mosaic_cfg()
    cfg.INPUT.MOSAIC[key] = value
    with pytest.raises(ValueError, match=f"INPUT.MOSAIC.{key}"):
        build_train_mapper(cfg, colour_dataset)


# ---------------------------------------------------------------- close mosaic
class _Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, batch):
        return {"loss": (self.w - batch).pow(2).sum()}


class _Loader:
    """An endless loader of one value, which says which loader fed a step."""

    def __init__(self, value, fed):
        self.value, self.fed = value, fed

    def __iter__(self):
        while True:
            self.fed.append(self.value)
            yield torch.tensor(1.0)


class _FakeClock:
    def __init__(self, fractions):
        self.fractions = fractions

    def fraction(self):
        return self.fractions.pop(0) if len(self.fractions) > 1 else self.fractions[0]


def _run(close_fraction, max_iter, start_iter=0, clock=None):
    fed = []
    model = _Constant()
    trainer = SimpleTrainer(model, _Loader("mosaic", fed), torch.optim.SGD(model.parameters(), 0.1))
    trainer.register_hooks(
        [CloseMosaicHook(close_fraction, lambda: _Loader("plain", fed), clock=clock)]
    )
    trainer.train(start_iter, max_iter)
    return fed


def test_close_mosaic_switches_the_loader_for_the_last_fraction():
    assert _run(0.3, 10) == ["mosaic"] * 7 + ["plain"] * 3
    # A run resumed past the switch trains without mosaic from its first step.
    assert _run(0.3, 10, start_iter=8) == ["plain"] * 2
    # Under a time budget the clock can be further along than the iterations: it reads 0 before
    # training, then 0.1, 0.5 and 0.8 after the first three steps.
    clock = _FakeClock([0.0, 0.1, 0.5, 0.8])
    assert _run(0.25, 100, clock=clock)[:6] == ["mosaic"] * 3 + ["plain"] * 3


def test_close_mosaic_hooks_from_config():
    cfg = _mosaic_cfg()
    assert close_mosaic_hooks(cfg, build_train_loader=list) == []  # CLOSE_FRACTION 0: never
    cfg.INPUT.MOSAIC.CLOSE_FRACTION = 0.1
    (hook,) = close_mosaic_hooks(cfg, build_train_loader=lambda c: c)
    assert isinstance(hook, CloseMosaicHook) and hook.fraction == 0.1
    assert hook.build_loader().INPUT.MOSAIC.ENABLED is False and cfg.INPUT.MOSAIC.ENABLED
    cfg.INPUT.MOSAIC.CLOSE_FRACTION = 1.0
    with pytest.raises(ValueError, match="INPUT.MOSAIC.CLOSE_FRACTION"):
        close_mosaic_hooks(cfg, build_train_loader=list)
