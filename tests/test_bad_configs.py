"""Bad configs fail when the model or trainer is built, with an error naming the key. (Mismatched
MAX_SIZES / STEPS and MODEL.SSD_EXTRAS lengths are covered in test_priors and test_structure.)"""

import pytest

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from dssd_d2.engine import SSDTrainer
from dssd_d2.modeling.heads import SSDHead
from dssd_d2.modeling.meta_arch import SSD

from helpers import make_cfg, register_random_dataset, tiny_ssd300_cfg


@pytest.mark.parametrize(
    "key, value",
    [("MIN_SIZES", [30, 60, 111]), ("ASPECT_RATIOS", [[2], [2, 3], [2, 3], [2, 3]])],
)
def test_per_level_prior_settings_of_the_wrong_length_name_the_key(key, value):
    cfg = tiny_ssd300_cfg()
    setattr(cfg.MODEL.ANCHOR_GENERATOR, key, value)
    with pytest.raises(ValueError, match=f"MODEL.ANCHOR_GENERATOR.{key} has {len(value)} entries"):
        build_model(cfg)


def _ssd_kwargs_with_head(**head_kwargs):
    cfg = tiny_ssd300_cfg()
    kwargs = SSD.from_config(cfg)
    shapes = [kwargs["backbone"].output_shape()[f] for f in kwargs["head_in_features"]]
    head = {"input_shape": shapes, "num_classes": 3, "num_anchors": [4, 6, 6, 6, 4, 4]}
    kwargs["head"] = SSDHead(**{**head, **head_kwargs})
    return kwargs


def test_head_built_for_other_priors_or_classes_is_refused():
    SSD(**_ssd_kwargs_with_head())  # the matching head is fine
    with pytest.raises(ValueError, match=r"\[6, 6, 6, 6, 6, 6\] boxes per location.*ASPECT_RAT"):
        SSD(**_ssd_kwargs_with_head(num_anchors=[6] * 6))
    with pytest.raises(ValueError, match="predicts 5 classes but MODEL.SSD.NUM_CLASSES is 3"):
        SSD(**_ssd_kwargs_with_head(num_classes=5))


def test_head_for_fewer_levels_is_refused():
    with pytest.raises(ValueError, match="MODEL.SSD.IN_FEATURES"):
        SSDHead(input_shape=[ShapeSpec(channels=8)] * 2, num_classes=3, num_anchors=[4, 6, 6])


@pytest.mark.parametrize(
    "config_file, size",
    [("PascalVOC-Detection/ssd300_vgg16.yaml", 200), ("PascalVOC-Detection/ssd321_R_101.yaml", 96)],
)
def test_input_size_the_backbone_cannot_take_names_the_key(config_file, size):
    cfg = make_cfg(config_file)
    cfg.INPUT.FIXED_SIZE = size
    with pytest.raises(ValueError, match=f"cannot take INPUT.FIXED_SIZE={size}"):
        build_model(cfg)


def test_prior_steps_left_from_another_input_size_name_the_key():
    cfg = tiny_ssd300_cfg()
    cfg.INPUT.FIXED_SIZE = 512  # maps 64, 32, 16, 8, 6, 4 but SSD300's steps
    with pytest.raises(ValueError, match=r"STEPS\[5\]=300 on a 4x4 map spans 1200"):
        build_model(cfg)
    cfg.MODEL.ANCHOR_GENERATOR.STEPS = [8, 16, 32, 64, 85.33, 128]
    build_model(cfg)


def test_num_classes_must_match_the_datasets(tmp_path):
    name = register_random_dataset("dssd_d2_test_random", tmp_path)  # classes a, b, c
    cfg = tiny_ssd300_cfg(num_classes=5)
    cfg.DATASETS.TRAIN = (name,)
    message = r"MODEL.SSD.NUM_CLASSES is 5 but dataset 'dssd_d2_test_random' has 3 classes"
    with pytest.raises(ValueError, match=message):
        SSDTrainer.build_train_loader(cfg)
    with pytest.raises(ValueError, match=message):
        SSDTrainer.build_test_loader(cfg, name)
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.RETINANET.NUM_CLASSES = 4
    with pytest.raises(ValueError, match="MODEL.RETINANET.NUM_CLASSES is 4"):
        SSDTrainer.build_train_loader(cfg)
    cfg.MODEL.RETINANET.NUM_CLASSES = 3
    SSDTrainer.build_train_loader(cfg)
