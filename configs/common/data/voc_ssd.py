"""Pascal VOC 07+12 trainval -> VOC 2007 test for single-shot detectors (LazyConfig).

SSD's augmentations (``dssd_d2.data.ssd_augmentations``) through ``SSDDatasetMapper``, and the
VOC evaluator with per-class AP50, as ``train_net.py`` uses them for the YAML configs. Image
format, pixel mean (the zoom-out fill) and class count come from ``model``; a leaf sets the
input square in ``dataloader.train.mapper.augmentations.image_size`` (the test loader follows).
"""

from omegaconf import OmegaConf

from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)

from dssd_d2.data import SSDDatasetMapper, ssd_augmentations
from dssd_d2.evaluation import PascalVOCDetectionEvaluatorWithClassAP

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names=("voc_2007_trainval", "voc_2012_trainval")),
    mapper=L(SSDDatasetMapper)(
        is_train=True,
        augmentations=L(ssd_augmentations)(
            image_size=300, is_train=True, expand_fill="${model.pixel_mean}"
        ),
        image_format="${model.input_format}",
        bad_image_policy="skip",
        num_classes="${model.num_classes}",
    ),
    total_batch_size=32,
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="voc_2007_test", filter_empty=False),
    mapper=L(SSDDatasetMapper)(
        is_train=False,
        augmentations=L(ssd_augmentations)(
            image_size="${....train.mapper.augmentations.image_size}", is_train=False
        ),
        image_format="${model.input_format}",
        bad_image_policy="raise",
        num_classes="${model.num_classes}",
    ),
    num_workers=4,
)

dataloader.evaluator = L(PascalVOCDetectionEvaluatorWithClassAP)(
    dataset_name="${..test.dataset.names}"
)
