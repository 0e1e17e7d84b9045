"""TorchScript and ONNX export of a shrunk model of each family: save, load, compare with eager
inference (and run the ONNX file in onnxruntime); smoke runs of tools/export_model.py and
tools/benchmark.py (figures are not checked: speed is never asserted)."""

import json

import os
import subprocess
import sys

import pytest
import torch

from dssd_d2.deploy.export import (
    OUTPUT_NAMES,
    export_onnx,
    export_torchscript,
    outputs_to_instances,
)

from helpers import (
    assert_same_detections,
    detector_from_cfg,
    ROOT,
    TINY_FAMILIES,
    TINY_SSD300_OPTS,
    random_image,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def detector(family):
    return detector_from_cfg(TINY_FAMILIES[family]())


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_torchscript_round_trip(family, tmp_path):
    model, image = detector(family)
    path = str(tmp_path / "model.ts")
    export_torchscript(model, image, path)
    loaded = torch.jit.load(path)
    with torch.no_grad():
        expected = model([{"image": image}])[0]["instances"]
        actual = outputs_to_instances(loaded(image))
    assert_same_detections(actual, expected)


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_onnx_round_trip_in_onnxruntime(family, tmp_path):
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    model, image = detector(family)
    path = str(tmp_path / "model.onnx")
    export_onnx(model, image, path)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(OUTPUT_NAMES)
    actual = outputs_to_instances(session.run(None, {"image": image.numpy()}))
    with torch.no_grad():
        expected = model([{"image": image}])[0]["instances"]
    assert_same_detections(actual, expected)


# The tools get the tiny SSD300 with BatchNorm (something to fold) and no weights file.
TOOL_OPTS = ["MODEL.WEIGHTS", "", *TINY_SSD300_OPTS, "MODEL.VGG.NORM", "BN"]


def run_tool(name, *args):
    command = [sys.executable, os.path.join(ROOT, "tools", name), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_export_tool_writes_torchscript(tmp_path):
    output = tmp_path / "ssd.ts"
    config = os.path.join(ROOT, "configs", "Base-SSD.yaml")
    stdout = run_tool(
        "export_model.py", "--config-file", config, "--output", str(output), *TOOL_OPTS
    )
    assert "sorted scores differ" in stdout
    assert output.exists()
    outputs = torch.jit.load(str(output))(random_image(300, 300))
    assert len(outputs) == len(OUTPUT_NAMES)


@pytest.mark.slow
def test_benchmark_tool_writes_every_figure(tmp_path):
    output = tmp_path / "benchmark.json"
    config = os.path.join(ROOT, "configs", "Base-SSD.yaml")
    args = ["--configs", config, "--modes", "eager", "folded", "fast", "--iters", "1"]
    args += ["--batch", "2", "--batch-iters", "1", "--train-batch", "2", "--train-iters", "1"]
    args += ["--no-flops", "--threads", "1", "--output", str(output)]
    stdout = run_tool("benchmark.py", *args, *TOOL_OPTS)
    assert "| fast |" in stdout
    (result,) = json.loads(output.read_text())["results"]
    assert set(result["latency"]) == {"eager", "folded", "fast"}
    assert result["default_boxes"] == 8732
    assert set(result["train_images_per_s"]) == {"fp32", "fp32-cl", "bf16-cl"}
    assert all(speed > 0 for speed in result["train_images_per_s"].values())
    assert "bf16-cl" in stdout
