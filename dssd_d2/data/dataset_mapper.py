"""Box-aware dataset mapper: SSD's crop needs the boxes and keeps a box only by its centre."""

import copy
import logging

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .transforms import build_ssd_augmentation
from .validation import (
    BAD_IMAGE_POLICIES,
    SKIPPED_KEY,
    BadImageError,
    clean_annotations,
    num_classes_of,
    read_image,
)

__all__ = ["SSDDatasetMapper"]

logger = logging.getLogger(__name__)

# A wrong dataset path makes every image unreadable: stop after this many skips in a row rather
# than warn through the whole dataset.
MAX_SKIPS_IN_A_ROW = 50


class SSDDatasetMapper(DatasetMapper):
    """DatasetMapper for single-shot detectors.

    Differences from Detectron2's: the augmentations see the boxes (``T.AugInput(image, boxes=)``)
    so that the min-IoU crop can use them; a box survives the augmentations only if its centre
    is still inside the image (SSD's rule for crops); the default augmentations are SSD's (a
    fixed-square resize at test time); and bad input is handled by rule rather than fed to the
    model:

    - an image that cannot be read (:func:`validation.read_image`) or whose size disagrees with
      the dataset's height/width is skipped with a warning (the mapper returns None, and
      Detectron2's MapDataset loads another image) or raises, per ``bad_image_policy``. The
      number skipped before a sample rides on that sample as ``SKIPPED_KEY``, so that skips in
      DataLoader workers reach the trainer's metrics;
    - training boxes go through :func:`validation.clean_annotations` (drop non-finite and empty
      boxes, clip to the image, raise on unknown category ids).
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        bad_image_policy: str = "raise",
        num_classes: int | None = None,
        **kwargs,
    ):
        """
        Args:
            is_train, kwargs: as in :class:`DatasetMapper`.
            bad_image_policy: "skip" or "raise", for unreadable or mis-sized images.
            num_classes: category ids must lie in [0, num_classes) (None: not checked).
        """
        super().__init__(is_train, **kwargs)
        if bad_image_policy not in BAD_IMAGE_POLICIES:
            split = "TRAIN" if is_train else "TEST"
            raise ValueError(
                f"DATALOADER.BAD_IMAGE_POLICY_{split} must be one of {BAD_IMAGE_POLICIES}, got "
                f"{bad_image_policy!r}"
            )
        self.bad_image_policy = bad_image_policy
        self.num_classes = num_classes
        self._skipped = 0  # images skipped since the last one returned (in this process)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        ret["augmentations"] = build_ssd_augmentation(cfg, is_train)
        ret["bad_image_policy"] = (
            cfg.DATALOADER.BAD_IMAGE_POLICY_TRAIN
            if is_train
            else cfg.DATALOADER.BAD_IMAGE_POLICY_TEST
        )
        ret["num_classes"] = num_classes_of(cfg)[1]
        return ret

    def _count_skip(self, error: Exception):
        """Raise ``error`` under the "raise" policy; otherwise count and log the skip."""
        if self.bad_image_policy == "raise":
            raise error
        self._skipped += 1
        if self._skipped >= MAX_SKIPS_IN_A_ROW:
            raise BadImageError(
                f"{self._skipped} images in a row could not be used; is the dataset in place? "
                f"The last: {error}"
            ) from error
        logger.warning(f"Skipping an image: {error}")

    def read(self, dataset_dict):
        """The image of ``dataset_dict`` (a copy, which loses its "annotations"), its usable
        annotations and their XYXY boxes (none at test time: evaluators read the ground truth
        themselves); None for an image that is skipped."""
        dataset_dict = copy.deepcopy(dataset_dict)
        try:
            image = read_image(dataset_dict["file_name"], format=self.image_format)
            utils.check_image_size(dataset_dict, image)
        except (BadImageError, utils.SizeMismatchError) as e:
            self._count_skip(e)
            return None
        annos = dataset_dict.pop("annotations", [])
        if not self.is_train:
            return dataset_dict, image, [], np.zeros((0, 4))
        annos, boxes = clean_annotations(
            annos, dataset_dict["file_name"], image.shape[:2], self.num_classes
        )
        return dataset_dict, image, annos, boxes

    def __call__(self, dataset_dict):
        loaded = self.read(dataset_dict)
        if loaded is None:
            return None  # Detectron2's MapDataset then loads another image
        return self.augment(*loaded)

    def augment(self, dataset_dict, image, annos, boxes):
        """The model's input from a read image: augmentations, then the boxes whose centre is
        still inside the image (training)."""
        if self._skipped:
            dataset_dict[SKIPPED_KEY], self._skipped = self._skipped, 0
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
