"""Importing dssd_d2 registers its parts, and without Detectron2 it says how to install it."""

import json
import os
import subprocess
import sys

# Run in a fresh interpreter: what Detectron2 registers by itself, then what importing dssd_d2
# adds, registry by registry (the dssd_d2 registries themselves count as new).
LIST_REGISTRATIONS = """
import json
from detectron2.data import DatasetCatalog
from detectron2.modeling import ANCHOR_GENERATOR_REGISTRY, BACKBONE_REGISTRY, META_ARCH_REGISTRY

registries = {
    "meta_arch": META_ARCH_REGISTRY,
    "anchor_generator": ANCHOR_GENERATOR_REGISTRY,
    "backbone": BACKBONE_REGISTRY,
}
before = {key: {name for name, _ in registry} for key, registry in registries.items()}
before["datasets"] = set(DatasetCatalog.list())

from dssd_d2.modeling import (
    PREDICTION_MODULE_REGISTRY,
    PREDICTOR_REGISTRY,
    SSD_HEAD_REGISTRY,
    SSD_MATCHER_REGISTRY,
)

registries.update(
    ssd_head=SSD_HEAD_REGISTRY,
    prediction_module=PREDICTION_MODULE_REGISTRY,
    predictor=PREDICTOR_REGISTRY,
    matcher=SSD_MATCHER_REGISTRY,
)
after = {key: {name for name, _ in registry} for key, registry in registries.items()}
after["datasets"] = set(DatasetCatalog.list())
print(json.dumps({key: sorted(after[key] - before.get(key, set())) for key in after}))
"""

EXPECTED = {
    "meta_arch": ["SSD"],
    "anchor_generator": ["SSDAnchorGenerator"],
    "backbone": [
        "build_dsod_backbone",
        "build_dssd_backbone",
        "build_mobilenet_v3_ssdlite_backbone",
        "build_resnet_ssd_backbone",
        "build_tiny_dsod_backbone",
        "build_vgg_ssd_backbone",
    ],
    "ssd_head": ["SSDHead"],
    "prediction_module": ["none", "residual", "residual_projection", "two_residual_projection"],
    "predictor": ["conv", "conv_bn", "pointwise_depthwise", "separable"],
    "matcher": ["caffe", "torchvision"],
}


def _registrations(datasets_root):
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root))
    result = subprocess.run(
        [sys.executable, "-c", LIST_REGISTRATIONS], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_import_registers_every_part_and_built_in_dataset(tmp_path):
    """Exactly these: a new registration must be listed here (and in docs/design.md)."""
    (tmp_path / "BCCD").mkdir()  # BCCD registers when its folder exists; nothing is read yet
    registered = _registrations(tmp_path)
    bccd = [f"bccd_{split}" for split in ("test", "train", "trainval", "val")]
    generated = ["digits_train", "digits_val", "small_digits_train", "small_digits_val"]
    assert registered == dict(EXPECTED, datasets=bccd + generated)


def test_bccd_is_registered_only_when_its_folder_exists(tmp_path):
    generated = ["digits_train", "digits_val", "small_digits_train", "small_digits_val"]
    assert _registrations(tmp_path)["datasets"] == generated


def test_import_without_detectron2_explains_how_to_install_it():
    code = "import sys; sys.modules['detectron2'] = None; import dssd_d2"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "dssd_d2 needs Detectron2" in result.stderr and "make install" in result.stderr
