"""Importing dssd_d2 registers its parts, and without Detectron2 it says how to install it."""

import subprocess
import sys

from detectron2.data import transforms  # noqa: F401
from detectron2.modeling import ANCHOR_GENERATOR_REGISTRY, BACKBONE_REGISTRY, META_ARCH_REGISTRY

import dssd_d2  # noqa: F401


def test_import_registers_the_public_parts():
    assert "SSD" in META_ARCH_REGISTRY
    assert "SSDAnchorGenerator" in ANCHOR_GENERATOR_REGISTRY
    assert "build_vgg_ssd_backbone" in BACKBONE_REGISTRY


def test_import_without_detectron2_explains_how_to_install_it():
    code = "import sys; sys.modules['detectron2'] = None; import dssd_d2"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "dssd_d2 needs Detectron2" in result.stderr and "make install" in result.stderr
