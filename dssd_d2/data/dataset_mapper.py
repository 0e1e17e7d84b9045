"""Box-aware dataset mapper: SSD's crop needs the boxes and keeps a box only by its centre."""

import copy
import logging

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from .transforms import build_ssd_augmentation

__all__ = ["SSDDatasetMapper"]

logger = logging.getLogger(__name__)


def _boxes_xyxy(annotations) -> np.ndarray:
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


class SSDDatasetMapper(DatasetMapper):
    """DatasetMapper for single-shot detectors.

    Differences from Detectron2's: the augmentations see the boxes (``T.AugInput(image, boxes=)``)
    so that the min-IoU crop can use them; a box survives the augmentations only if its centre
    is still inside the image (SSD's rule for crops); boxes of zero width or height are dropped
    with a warning; and the default augmentations are SSD's (a fixed-square resize at test time).
    """

    @configurable
    def __init__(self, is_train: bool, **kwargs):
        super().__init__(is_train, **kwargs)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        ret["augmentations"] = build_ssd_augmentation(cfg, is_train)
        return ret

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)

        annos = [a for a in dataset_dict.pop("annotations", []) if a.get("iscrowd", 0) == 0]
        for a in annos:  # boxes only: SSD predicts no masks or keypoints
            a.pop("segmentation", None)
            a.pop("keypoints", None)
        boxes = _boxes_xyxy(annos)
        degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if degenerate.any():
            logger.warning(
                f"{dataset_dict['file_name']}: dropping {int(degenerate.sum())} box(es) of zero "
                f"or negative size: {boxes[degenerate].tolist()}"
            )
            annos = [a for a, bad in zip(annos, degenerate) if not bad]
            boxes = boxes[~degenerate]

        aug_input = T.AugInput(image, boxes=boxes)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            return dataset_dict

        centres = transforms.apply_coords((boxes[:, :2] + boxes[:, 2:]) / 2.0)
        h, w = image_shape
        inside = (
            (centres[:, 0] > 0) & (centres[:, 0] < w) & (centres[:, 1] > 0) & (centres[:, 1] < h)
        )
        annos = [
            utils.transform_instance_annotations(a, transforms, image_shape)
            for a, keep in zip(annos, inside)
            if keep
        ]
        instances = utils.annotations_to_instances(annos, image_shape)
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
        return dataset_dict
