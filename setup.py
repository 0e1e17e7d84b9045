import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
    LONG_DESCRIPTION = f.read()

setup(
    name="dssd_d2",
    version="0.1.0",
    description="SSD, DSSD, DSOD, Tiny-DSOD and SSDlite single-shot detectors for Detectron2",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["dssd_d2", "dssd_d2.*"]),
    python_requires=">=3.10",
    # Detectron2 itself is not listed: pip cannot resolve it. `make install` detects an installed
    # Detectron2 or installs one (README.md, "Install"); `import dssd_d2` without it says how.
    # scikit-learn ships the digits behind the built-in quick-start dataset.
    install_requires=[
        "torch>=1.13",
        "torchvision",
        "numpy",
        "Pillow",
        "opencv-python-headless",
        "matplotlib",
        "scikit-learn",
    ],
    extras_require={
        # pytest for `make test` (tests/).
        "test": ["pytest"],
        # ONNX export and its check in onnxruntime (tools/export_model.py --format onnx).
        "export": ["onnx", "onnxruntime"],
        # int8 CPU inference (dssd_d2/deploy/quantize.py): OpenVINO runs it, NNCF quantizes.
        "int8": ["openvino>=2025.0", "nncf>=2.16"],
        # tools/peer_yolo.py only (Ultralytics is AGPL-3.0; the package never imports it).
        "peer": ["ultralytics>=8.3"],
    },
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Developers",
        "Intended Audience :: Science/Research",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
