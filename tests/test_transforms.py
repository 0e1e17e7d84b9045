"""SSD augmentations keep boxes valid; the mapper keeps a box only when its centre stays inside;
the photometric distortion's lookup tables give the pixels of SSD's float arithmetic."""

import random

import cv2
import numpy as np
import pytest

from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from dssd_d2.data import PhotometricDistortion, RandomExpand, SSDDatasetMapper
from dssd_d2.data.transforms import SSDMinIoURandomCrop, _distort, build_ssd_augmentation

from helpers import make_cfg


def _image_and_boxes(seed, h=120, w=160):
    rng = np.random.RandomState(seed)
    image = rng.randint(0, 256, (h, w, 3)).astype(np.uint8)
    xy = rng.uniform(0, [w - 20, h - 20], size=(5, 2))
    wh = rng.uniform(5, 40, size=(5, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], axis=1)
    return image, boxes


def _assert_valid(image, boxes):
    h, w = image.shape[:2]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert np.isfinite(boxes).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w + 1e-4).all() and (boxes[:, 3] <= h + 1e-4).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()


@pytest.mark.parametrize(
    "augmentation",
    [
        PhotometricDistortion(),
        RandomExpand(4.0, prob=1.0, fill=(10, 20, 30)),
        T.MinIoURandomCrop(),
        SSDMinIoURandomCrop(),
        T.Resize((300, 300)),
        T.RandomFlip(horizontal=True, vertical=False),
    ],
    ids=lambda a: type(a).__name__,
)
def test_each_augmentation_keeps_boxes_valid_and_inside(augmentation):
    random.seed(0)
    np.random.seed(0)
    for seed in range(20):
        image, boxes = _image_and_boxes(seed)
        aug_input = T.AugInput(image, boxes=boxes.copy())
        transform = augmentation(aug_input)
        out_boxes = np.clip(
            aug_input.boxes, 0, [aug_input.image.shape[1], aug_input.image.shape[0]] * 2
        )
        _assert_valid(aug_input.image, out_boxes)
        # Boxes move with the image: the transform applied to the originals gives the same.
        np.testing.assert_allclose(transform.apply_box(boxes.copy()), aug_input.boxes)


def test_expand_fills_with_the_mean_and_keeps_the_image():
    image, boxes = _image_and_boxes(0)
    aug_input = T.AugInput(image, boxes=boxes.copy())
    random.seed(3)
    transform = RandomExpand(4.0, prob=1.0, fill=(10, 20, 30))(aug_input)
    out = aug_input.image
    assert out.shape[0] >= image.shape[0] and out.shape[1] >= image.shape[1]
    x0, y0 = transform.x0, transform.y0
    np.testing.assert_array_equal(out[y0 : y0 + 120, x0 : x0 + 160], image)
    if x0 > 0:
        np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_allclose(aug_input.boxes, boxes + [x0, y0, x0, y0])


def _distort_arithmetic(image, brightness, contrast, saturation, hue, contrast_first, order):
    """SSD's distortion as float32 arithmetic on the whole image (the reference's recipe)."""
    img = image.astype(np.float32)
    img += brightness
    if contrast_first:
        img *= contrast
    if saturation != 1.0 or hue:  # the HSV round trip is lossy: only when it changes something
        hsv = cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV)
        hsv = hsv.astype(np.float32)
        hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
        hsv[..., 0] = (hsv[..., 0] + hue / 2.0) % 180.0
        img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    if not contrast_first:
        img *= contrast
    img = img[..., list(order)] if order is not None else img
    return np.clip(img, 0, 255).astype(np.uint8)


def test_photometric_tables_give_the_pixels_of_the_float_arithmetic():
    rng = np.random.RandomState(0)
    image, _ = _image_and_boxes(1)
    for _ in range(40):
        params = dict(
            brightness=rng.choice([0.0, rng.uniform(-32, 32)]),
            contrast=rng.choice([1.0, rng.uniform(0.5, 1.5)]),
            saturation=rng.choice([1.0, rng.uniform(0.5, 1.5)]),
            hue=rng.choice([0.0, rng.uniform(-18, 18)]),
            contrast_first=bool(rng.rand() < 0.5),
            order=tuple(rng.permutation(3)) if rng.rand() < 0.5 else None,
        )
        np.testing.assert_array_equal(
            _distort(image, **params), _distort_arithmetic(image, **params), err_msg=str(params)
        )


def test_ssd_crop_accepts_a_patch_that_fits_one_box_of_many():
    # 16 small boxes on a grid: no patch overlaps all of them, so Detectron2's rule never crops.
    grid = np.array([[x, y, x + 20, y + 20] for x in range(0, 160, 40) for y in range(0, 120, 30)])
    image = np.zeros((120, 160, 3), np.uint8)
    random.seed(0)
    ssd_crop = SSDMinIoURandomCrop(min_ious=(0.1,), mode_trials=1)
    detectron2_crop = T.MinIoURandomCrop(min_ious=(0.1,), mode_trials=1)
    for crop in (ssd_crop, detectron2_crop):
        crop.sample_mode = (0.1,)  # only "IoU >= 0.1", not "no crop" (1) or "any patch" (0)
    ours = [ssd_crop.get_transform(image, grid) for _ in range(20)]
    theirs = [detectron2_crop.get_transform(image, grid) for _ in range(20)]
    assert any(isinstance(t, T.CropTransform) for t in ours)
    assert not any(isinstance(t, T.CropTransform) for t in theirs)
    for t in ours:
        if isinstance(t, T.CropTransform):
            # The crop holds the centre of some box and overlaps it at IoU >= 0.1.
            centres = (grid[:, :2] + grid[:, 2:]) / 2
            lo, hi = np.array([t.x0, t.y0]), np.array([t.x0 + t.w, t.y0 + t.h])
            assert ((centres > lo) & (centres < hi)).all(axis=1).any()
    assert isinstance(SSDMinIoURandomCrop().get_transform(image, np.zeros((0, 4))), T.NoOpTransform)


def _mapper_input(boxes, h=100, w=200):
    return {
        "file_name": "unused.jpg",
        "height": h,
        "width": w,
        "annotations": [
            {"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": i % 3}
            for i, b in enumerate(boxes)
        ],
    }


def test_mapper_centre_rule_and_degenerate_boxes(monkeypatch, caplog):
    from detectron2.data import detection_utils

    monkeypatch.setattr(
        detection_utils, "read_image", lambda *a, **k: np.zeros((100, 200, 3), np.uint8)
    )
    cfg = make_cfg("Base-SSD.yaml")
    # The crop keeps x in [50, 150): a box whose centre is at x=40 goes even though it overlaps.
    crop = T.CropTransform(50, 0, 100, 100)
    mapper = SSDDatasetMapper(cfg, is_train=True)
    mapper.augmentations = T.AugmentationList([crop, T.Resize((300, 300))])
    boxes = [
        [20, 10, 60, 50],  # centre x 40: outside the crop, dropped
        [60, 10, 120, 50],  # centre x 90: kept, unclipped
        [140, 20, 190, 60],  # centre x 165: outside, dropped
        [130, 20, 160, 60],  # centre x 145: kept, clipped to the crop
        [80, 30, 80, 70],  # zero width: dropped with a warning
    ]
    out = mapper(_mapper_input(boxes))
    got = out["instances"].gt_boxes.tensor.numpy()
    expected = np.array([[10, 10, 70, 50], [80, 20, 100, 60]], dtype=np.float32) * [3, 3, 3, 3]
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert out["instances"].gt_classes.tolist() == [1, 0]
    assert out["image"].shape == (3, 300, 300)
    assert "zero or negative size" in caplog.text


def test_mapper_with_full_ssd_augmentation_gives_valid_boxes(monkeypatch):
    from detectron2.data import detection_utils

    rng = np.random.RandomState(0)
    monkeypatch.setattr(
        detection_utils,
        "read_image",
        lambda *a, **k: rng.randint(0, 256, (100, 200, 3)).astype(np.uint8),
    )
    cfg = make_cfg("Base-SSD.yaml")
    mapper = SSDDatasetMapper(cfg, is_train=True)
    assert [type(a).__name__ for a in mapper.augmentations.augs] == [
        "PhotometricDistortion",
        "RandomExpand",
        "SSDMinIoURandomCrop",
        "Resize",
        "RandomFlip",
    ]
    random.seed(0)
    for _ in range(30):
        out = mapper(_mapper_input([[10, 10, 60, 50], [100, 20, 190, 90], [0, 0, 200, 100]]))
        assert out["image"].shape == (3, 300, 300)
        boxes = out["instances"].gt_boxes.tensor.numpy()
        _assert_valid(out["image"].permute(1, 2, 0).numpy(), boxes)
        assert ((boxes[:, 2] - boxes[:, 0]) > 0).all() and ((boxes[:, 3] - boxes[:, 1]) > 0).all()


def test_test_time_augmentation_is_a_fixed_square_resize():
    cfg = make_cfg("Base-SSD.yaml")
    cfg.INPUT.FIXED_SIZE = 320
    (resize,) = build_ssd_augmentation(cfg, is_train=False)
    assert isinstance(resize, T.Resize) and resize.shape == (320, 320)
