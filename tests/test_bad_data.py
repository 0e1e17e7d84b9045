"""Bad images and bad annotations: every case is either mapped to a valid sample, skipped with a
warning and a count (training), or refused with an error naming the file."""

import io
import json
import logging
import os
import random

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from dssd_d2.data import SSDDatasetMapper
from dssd_d2.data import dataset_mapper
from dssd_d2.data.validation import SKIPPED_KEY, BadImageError, read_image
from dssd_d2.engine import SSDTrainer

from helpers import tiny_ssd300_cfg, without_random_augmentation

SIZE = 300


def _jpeg_bytes(array, **kwargs):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def _write(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def _record(path, h, w, boxes=((10, 10, 30, 30),), category_id=0):
    return {
        "file_name": str(path),
        "image_id": os.path.basename(str(path)),
        "height": h,
        "width": w,
        "annotations": [
            {"bbox": list(b), "bbox_mode": BoxMode.XYXY_ABS, "category_id": category_id}
            for b in boxes
        ],
    }


def _plain_cfg():
    """The tiny SSD300 with only the resize, so that output boxes are predictable."""
    cfg = tiny_ssd300_cfg()
    without_random_augmentation(cfg)
    return cfg


def _assert_valid_sample(out, num_classes=3):
    image, instances = out["image"], out["instances"]
    assert image.dtype == torch.uint8 and image.shape == (3, SIZE, SIZE)
    boxes = instances.gt_boxes.tensor
    assert torch.isfinite(boxes).all()
    assert (boxes >= 0).all() and (boxes <= SIZE).all()
    assert ((boxes[:, 2:] - boxes[:, :2]) > 0).all()
    classes = instances.gt_classes
    assert len(classes) == len(boxes) and ((classes >= 0) & (classes < num_classes)).all()


# ---------------------------------------------------------------- unreadable images
def _bad_files(folder):
    """(file name, dataset-dict height, width) of images no reader can use."""
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, (40, 60, 3)).astype(np.uint8)
    jpeg = _jpeg_bytes(image)
    png = cv2.imencode(".png", image)[1].tobytes()
    broken_png = bytearray(png)
    broken_png[len(png) // 2 : len(png) // 2 + 16] = b"\xff" * 16
    float_tiff = os.path.join(folder, "float.tif")
    Image.fromarray(rng.rand(40, 60).astype(np.float32)).save(float_tiff)
    return {
        "missing": os.path.join(folder, "missing.jpg"),
        "empty": _write(os.path.join(folder, "empty.jpg"), b""),
        "truncated_jpeg": _write(os.path.join(folder, "truncated.jpg"), jpeg[: len(jpeg) // 2]),
        "truncated_png": _write(os.path.join(folder, "truncated.png"), png[: len(png) // 2]),
        "random_bytes": _write(os.path.join(folder, "noise.jpg"), rng.bytes(2000)),
        "corrupt_png_data": _write(os.path.join(folder, "corrupt.png"), bytes(broken_png)),
        "float32_tiff": float_tiff,
        "size_mismatch": _write(os.path.join(folder, "wrong_size.jpg"), jpeg),  # 60x40, not 50x50
    }


BAD_CASES = [
    "missing",
    "empty",
    "truncated_jpeg",
    "truncated_png",
    "random_bytes",
    "corrupt_png_data",
    "float32_tiff",
    "size_mismatch",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_image_raises_naming_the_file_under_raise(tmp_path, case):
    path = _bad_files(str(tmp_path))[case]
    h, w = (50, 50) if case == "size_mismatch" else (40, 60)
    cfg = _plain_cfg()
    cfg.DATALOADER.BAD_IMAGE_POLICY_TRAIN = "raise"
    for mapper in (SSDDatasetMapper(cfg, is_train=True), SSDDatasetMapper(cfg, is_train=False)):
        with pytest.raises(ValueError, match=os.path.basename(path)):
            mapper(_record(path, h, w))


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_image_is_skipped_with_a_warning_and_counted_under_skip(tmp_path, case, caplog):
    files = _bad_files(str(tmp_path))
    h, w = (50, 50) if case == "size_mismatch" else (40, 60)
    good = _write(tmp_path / "good.png", cv2.imencode(".png", np.zeros((40, 60, 3), np.uint8))[1])
    mapper = SSDDatasetMapper(_plain_cfg(), is_train=True)  # training default: skip
    with caplog.at_level(logging.WARNING):
        assert mapper(_record(files[case], h, w)) is None
        assert mapper(_record(files[case], h, w)) is None
    assert caplog.text.count(os.path.basename(files[case])) >= 2
    out = mapper(_record(good, 40, 60))
    assert out[SKIPPED_KEY] == 2  # reported once, on the next sample, then reset
    assert SKIPPED_KEY not in mapper(_record(good, 40, 60))
    _assert_valid_sample(out)


def test_a_run_of_unreadable_images_stops_instead_of_warning_forever(tmp_path):
    mapper = SSDDatasetMapper(_plain_cfg(), is_train=True)
    record = _record(tmp_path / "gone.jpg", 40, 60)
    for _ in range(dataset_mapper.MAX_SKIPS_IN_A_ROW - 1):
        assert mapper(record) is None
    with pytest.raises(BadImageError, match="in a row.*gone.jpg"):
        mapper(record)


def test_policy_values_are_checked():
    cfg = _plain_cfg()
    cfg.DATALOADER.BAD_IMAGE_POLICY_TEST = "ignore"
    with pytest.raises(ValueError, match="DATALOADER.BAD_IMAGE_POLICY_TEST"):
        SSDDatasetMapper(cfg, is_train=False)


# ---------------------------------------------------------------- unusual but valid images
def _unusual_images(folder):
    """(path, expected HxWx3 BGR pixels or None) for images Pillow opens in odd modes."""
    rng = np.random.RandomState(1)
    gray = rng.randint(0, 256, (20, 30)).astype(np.uint8)
    rgba = rng.randint(0, 256, (20, 30, 4)).astype(np.uint8)
    gray16 = rng.randint(0, 65536, (20, 30)).astype(np.uint16)
    rgb16 = rng.randint(0, 65536, (20, 30, 3)).astype(np.uint16)
    palette = Image.fromarray(rng.randint(0, 256, (20, 30, 3)).astype(np.uint8)).quantize(8)
    bits = rng.rand(20, 30) > 0.5
    files = {}

    def save(name, image, expected):
        path = os.path.join(folder, name)
        image.save(path) if isinstance(image, Image.Image) else cv2.imwrite(path, image)
        files[name] = (path, expected)

    save("gray.png", Image.fromarray(gray), np.repeat(gray[..., None], 3, axis=2))
    save("rgba.png", Image.fromarray(rgba), rgba[..., 2::-1])
    save("palette.png", palette, np.asarray(palette.convert("RGB"))[..., ::-1])
    save("gray16.png", gray16, np.repeat(np.round(gray16 / 257.0)[..., None], 3, 2))
    save("rgb16.png", rgb16, np.round(rgb16 / 257.0))  # written as BGR by OpenCV
    save("bilevel.png", Image.fromarray(bits), np.repeat(bits[..., None] * 255, 3, axis=2))
    save("one_pixel.png", np.full((1, 1, 3), 200, np.uint8), np.full((1, 1, 3), 200))
    save("tall.png", np.full((600, 2, 3), 90, np.uint8), np.full((600, 2, 3), 90))
    save("wide.png", np.full((1, 900, 3), 30, np.uint8), np.full((1, 900, 3), 30))
    return files


def test_unusual_images_read_as_their_8bit_bgr_pixels(tmp_path):
    for name, (path, expected) in _unusual_images(str(tmp_path)).items():
        image = read_image(path, "BGR")
        assert image.dtype == np.uint8 and image.shape == expected.shape, name
        assert np.abs(image.astype(int) - expected).max() <= 1, name  # 16-bit: rounding


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path):
    path = str(tmp_path / "ramp16.png")
    cv2.imwrite(path, np.array([[0, 257, 32896, 65535]], np.uint16))
    assert read_image(path, "BGR")[0, :, 0].tolist() == [0, 1, 128, 255]
    assert read_image(path, "RGB").shape == (1, 4, 3)


def test_exif_rotated_jpeg_is_upright_and_its_size_checked(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high; left half white
    stored[:, :20] = 255
    exif = Image.Exif()
    exif[274] = 6  # "rotate 90 degrees clockwise to display"
    path = _write(tmp_path / "rotated.jpg", _jpeg_bytes(stored, exif=exif, quality=95))
    image = read_image(path, "BGR")
    assert image.shape == (40, 20, 3)  # displayed: 20 wide, 40 high, white half on top
    assert image[:18].mean() > 230 and image[22:].mean() < 25
    mapper = SSDDatasetMapper(_plain_cfg(), is_train=True)
    _assert_valid_sample(mapper(_record(path, 40, 20, boxes=[(2, 2, 18, 38)])))
    assert mapper(_record(path, 20, 40)) is None  # sizes of the stored, unrotated pixels


def test_unusual_images_map_to_valid_samples(tmp_path):
    mapper = SSDDatasetMapper(tiny_ssd300_cfg(), is_train=True)  # full SSD augmentation
    random.seed(0)
    for path, expected in _unusual_images(str(tmp_path)).values():
        h, w = expected.shape[:2]
        for _ in range(3):
            out = mapper(_record(path, h, w, boxes=[(0, 0, w, h), (0, 0, w / 2, h / 2)]))
            _assert_valid_sample(out)


# ---------------------------------------------------------------- bad annotations
@pytest.fixture
def blank_image(tmp_path):
    path = str(tmp_path / "blank.png")
    cv2.imwrite(path, np.zeros((100, 200, 3), np.uint8))
    return path


def test_annotation_rules_clip_drop_and_warn(blank_image, caplog):
    nan, inf = float("nan"), float("inf")
    record = _record(blank_image, 100, 200, boxes=[])
    boxes = [
        ([20, 10, 60, 50], BoxMode.XYXY_ABS),  # kept as is
        ([-20, 50, 40, 150], BoxMode.XYXY_ABS),  # partly outside: clipped to (0, 50, 40, 100)
        ([150, 0, 100, 50], BoxMode.XYWH_ABS),  # partly outside: clipped to (150, 0, 200, 50)
        ([300, 10, 350, 50], BoxMode.XYXY_ABS),  # wholly outside: dropped
        ([80, 30, 80, 70], BoxMode.XYXY_ABS),  # zero width: dropped
        ([10, 10, -5, 20], BoxMode.XYWH_ABS),  # negative width: dropped
        ([60, 70, 40, 90], BoxMode.XYXY_ABS),  # corners swapped: dropped
        ([nan, 10, 50, 50], BoxMode.XYXY_ABS),  # NaN: dropped
        ([10, 10, inf, 50], BoxMode.XYXY_ABS),  # infinite: dropped
    ]
    record["annotations"] = [
        {"bbox": b, "bbox_mode": mode, "category_id": i % 3} for i, (b, mode) in enumerate(boxes)
    ]
    record["annotations"].append(  # crowd regions are not SSD targets
        {"bbox": [0, 0, 50, 50], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 1}
    )
    mapper = SSDDatasetMapper(_plain_cfg(), is_train=True)
    with caplog.at_level(logging.WARNING):
        out = mapper(record)
    _assert_valid_sample(out)
    scale = np.array([SIZE / 200, SIZE / 100] * 2)
    expected = np.array([[20, 10, 60, 50], [0, 50, 40, 100], [150, 0, 200, 50]]) * scale
    np.testing.assert_allclose(out["instances"].gt_boxes.tensor.numpy(), expected, atol=1e-3)
    assert out["instances"].gt_classes.tolist() == [0, 1, 2]
    assert "1 box(es) outside the 200x100 image" in caplog.text
    assert "3 box(es) of zero or negative size" in caplog.text
    assert "2 box(es) with a NaN or infinite coordinate" in caplog.text
    assert caplog.text.count("blank.png") == 3


@pytest.mark.parametrize("category_id", [3, -1, 1.5])
def test_unknown_category_id_raises_naming_the_file(blank_image, category_id):
    record = _record(blank_image, 100, 200, category_id=category_id)
    with pytest.raises(ValueError, match=r"blank.png: category_id \[.*\] is not one of"):
        SSDDatasetMapper(_plain_cfg(), is_train=True)(record)
    # Evaluation ignores the annotations (evaluators read the ground truth themselves).
    assert SSDDatasetMapper(_plain_cfg(), is_train=False)(record)["image"].shape == (3, 300, 300)


def test_image_without_boxes_gives_empty_instances(blank_image):
    mapper = SSDDatasetMapper(tiny_ssd300_cfg(), is_train=True)
    without_key = _record(blank_image, 100, 200)
    del without_key["annotations"]
    for record in (_record(blank_image, 100, 200, boxes=[]), without_key):
        out = mapper(record)
        _assert_valid_sample(out)
        assert len(out["instances"]) == 0


def _random_box(rng, h, w):
    """A box that is valid, partly or wholly outside, degenerate, swapped or non-finite."""
    kind = rng.randint(7)
    x0, y0 = rng.uniform(-0.5 * w, 1.5 * w), rng.uniform(-0.5 * h, 1.5 * h)
    bw, bh = rng.uniform(0, w), rng.uniform(0, h)
    if kind == 0:  # inside the image
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        return [x0, y0, rng.uniform(x0, w), rng.uniform(y0, h)], BoxMode.XYXY_ABS
    if kind == 1:
        return [x0, y0, bw, bh], BoxMode.XYWH_ABS
    if kind == 2:  # zero width or height
        return [x0, y0, x0, y0 + bh] if rng.rand() < 0.5 else [x0, y0, x0 + bw, y0], 0
    if kind == 3:  # negative size
        return [x0, y0, -bw, -bh], BoxMode.XYWH_ABS
    if kind == 4:  # a coordinate NaN or infinite
        box = [x0, y0, x0 + bw, y0 + bh]
        box[rng.randint(4)] = rng.choice([np.nan, np.inf, -np.inf])
        return box, BoxMode.XYXY_ABS
    if kind == 5:  # tiny
        return [x0, y0, x0 + 1e-3, y0 + 1e-3], BoxMode.XYXY_ABS
    return [x0, y0, x0 + bw, y0 + bh], BoxMode.XYXY_ABS


def test_randomized_mapper_always_gives_valid_samples(monkeypatch):
    """Random image sizes (1 pixel, extreme ratios, large) and random, often broken, boxes
    through the full SSD augmentation: every output is a valid training sample."""
    rng = np.random.RandomState(0)
    random.seed(0)
    monkeypatch.setattr(
        dataset_mapper,
        "read_image",
        lambda file_name, format: rng.randint(0, 256, images[file_name]).astype(np.uint8),
    )
    mapper = SSDDatasetMapper(tiny_ssd300_cfg(), is_train=True)
    logging.getLogger("dssd_d2.data.validation").setLevel(logging.ERROR)  # drops are expected
    images, kept = {}, 0
    try:
        for i in range(300):
            h, w = (int(rng.choice([1, 2, 3, 7, rng.randint(8, 700)])) for _ in range(2))
            if i % 10 == 0:  # extreme aspect ratios
                h, w = (
                    (1, int(rng.randint(200, 2000))) if i % 20 else (int(rng.randint(200, 2000)), 1)
                )
            images[f"{i}.jpg"] = (h, w, 3)
            annotations = []
            for _ in range(rng.randint(0, 6)):
                box, mode = _random_box(rng, h, w)
                annotations.append({"bbox": box, "bbox_mode": mode, "category_id": rng.randint(3)})
            out = mapper(
                {"file_name": f"{i}.jpg", "height": h, "width": w, "annotations": annotations}
            )
            _assert_valid_sample(out)
            kept += len(out["instances"])
    finally:
        logging.getLogger("dssd_d2.data.validation").setLevel(logging.NOTSET)
    assert kept > 100  # the test is not vacuous: many boxes survive


# ---------------------------------------------------------------- through the trainer
def _register_with_bad_files(name, folder, bad):
    """Three good 60x90 images with a box each, plus ``bad`` missing files."""
    if name not in DatasetCatalog.list():
        dicts = []
        for i in range(3):
            path = os.path.join(folder, f"{name}_{i}.png")
            cv2.imwrite(path, np.full((60, 90, 3), 40 * i, np.uint8))
            dicts.append(_record(path, 60, 90, boxes=[(10, 10, 50, 40)], category_id=i))
        dicts += [_record(os.path.join(folder, f"gone_{i}.jpg"), 60, 90) for i in range(bad)]
        for i, d in enumerate(dicts):
            d["image_id"] = i
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).set(thing_classes=["a", "b", "c"])
    return name


@pytest.mark.slow
def test_training_skips_bad_images_and_logs_the_count(tmp_path):
    """With a DataLoader worker, the skips happen in another process and still reach the
    logged metrics."""
    name = _register_with_bad_files("dssd_d2_test_bad_files", str(tmp_path), bad=1)
    cfg = tiny_ssd300_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 1
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    cfg.SOLVER.MAX_ITER = 3  # 6 samples: the sampler goes through all 4 images first
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    trainer = SSDTrainer(cfg)
    trainer.train()
    assert trainer.iter == 3
    assert trainer.storage.history("data/skipped_images").latest() >= 1
    with open(os.path.join(cfg.OUTPUT_DIR, "metrics.json")) as f:
        records = [json.loads(line) for line in f]
    assert records[-1]["data/skipped_images"] >= 1


@pytest.mark.slow
def test_evaluation_raises_by_default_or_leaves_bad_images_out(tmp_path):
    name = _register_with_bad_files("dssd_d2_test_bad_files_eval", str(tmp_path), bad=2)
    cfg = tiny_ssd300_cfg()
    with pytest.raises(BadImageError, match="gone_0.jpg"):
        list(SSDTrainer.build_test_loader(cfg, name))
    cfg.DATALOADER.BAD_IMAGE_POLICY_TEST = "skip"
    batches = list(SSDTrainer.build_test_loader(cfg, name))
    # Left out, not replaced by another image that would then be evaluated twice.
    assert sorted(b[0]["image_id"] for b in batches) == [0, 1, 2]
