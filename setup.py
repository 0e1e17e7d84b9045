from setuptools import find_packages, setup

setup(
    name="dssd_d2",
    version="0.1.0",
    description="SSD, DSSD and DSOD single-shot detectors for Detectron2",
    packages=find_packages(include=["dssd_d2", "dssd_d2.*"]),
    python_requires=">=3.10",
    # Detectron2 itself is not listed: pip cannot resolve it. See README (Installation).
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
        "test": ["pytest"],
        "export": ["onnx", "onnxruntime"],
        # int8 CPU inference (dssd_d2/deploy/quantize.py): OpenVINO runs it, NNCF quantizes.
        "int8": ["openvino>=2025.0", "nncf>=2.16"],
        # tools/peer_yolo.py only (Ultralytics is AGPL-3.0; the package never imports it).
        "peer": ["ultralytics>=8.3"],
    },
)
