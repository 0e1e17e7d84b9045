"""TorchScript and ONNX export of a shrunk model of each family: save, load, compare with eager
inference (and run the ONNX file in onnxruntime); smoke runs of tools/export_model.py and
tools/benchmark.py (figures are not checked: speed is never asserted)."""

import json

import os
import subprocess
import sys

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K

from dssd_d2.deploy import calibrate_batch_norms
from dssd_d2.deploy.export import (
    OUTPUT_NAMES,
    export_onnx,
    export_torchscript,
    outputs_to_instances,
)

from conftest import ROOT, random_image, tiny_ssd300_cfg
from test_dsod import tiny_dsod_cfg
from test_dssd import DSSD321, tiny_cfg

FAMILIES = {
    "ssd300": tiny_ssd300_cfg,
    "dssd321": lambda: tiny_cfg(DSSD321),
    "dsod300": tiny_dsod_cfg,
}

pytestmark = pytest.mark.usefixtures("single_thread")


def detector(family):
    return detector_from_cfg(FAMILIES[family]())


def detector_from_cfg(cfg):
    """A shrunk model and an image, with the score threshold put in a wide gap between the
    class scores of that image, so that about twenty candidates pass with clear margins: random
    weights give near-uniform scores, and tiny float differences would otherwise decide which
    of many near-ties pass the threshold, the per-class top k and the per-image cut."""
    torch.manual_seed(0)
    size = cfg.INPUT.FIXED_SIZE
    model = build_model(cfg)
    calibrate_batch_norms(model, torch.stack([random_image(size, size, seed) for seed in (1, 2)]))
    image = random_image(size, size)
    with torch.no_grad():
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        logits, _ = model.head([features[f] for f in model.head_in_features])
    num_classes = model.num_classes
    logits = torch.cat([permute_to_N_HWA_K(x, num_classes + 1) for x in logits], dim=1)
    scores = logits.softmax(-1)[..., :num_classes].flatten().sort(descending=True).values
    gaps = scores[:-1] - scores[1:]
    cut = 20 + int(gaps[20:].gt(1e-4).nonzero()[0])
    model.test_score_thresh = float(scores[cut] + scores[cut + 1]) / 2
    return model, image


def assert_same_detections(actual, expected, score_tol=1e-4, box_tol=1e-2):
    """Same detections up to float rounding, in any order among equal scores."""
    assert actual.image_size == expected.image_size
    assert 0 < len(actual) == len(expected)
    unmatched = list(range(len(actual)))
    for box, score, label in zip(
        expected.pred_boxes.tensor, expected.scores, expected.pred_classes
    ):
        match = [
            j
            for j in unmatched
            if actual.pred_classes[j] == label
            and abs(actual.scores[j] - score) <= score_tol
            and (actual.pred_boxes.tensor[j] - box).abs().max() <= box_tol
        ]
        assert match, f"no exported detection matches {label}, {score}, {box}"
        unmatched.remove(match[0])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_torchscript_round_trip(family, tmp_path):
    model, image = detector(family)
    path = str(tmp_path / "model.ts")
    export_torchscript(model, image, path)
    loaded = torch.jit.load(path)
    with torch.no_grad():
        expected = model([{"image": image}])[0]["instances"]
        actual = outputs_to_instances(loaded(image))
    assert_same_detections(actual, expected)


@pytest.mark.parametrize("family", sorted(FAMILIES))
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


TINY_SSD300_OPTS = [
    "MODEL.WEIGHTS",
    "",
    "MODEL.VGG.CONV_DIMS",
    "[4, 8, 8, 16, 16]",
    "MODEL.VGG.FC_DIM",
    "16",
    "MODEL.SSD_EXTRAS.CONV_DIMS",
    "[[8, 16], [8, 16], [8, 16], [8, 16]]",
    "MODEL.VGG.NORM",
    "BN",
]


def run_tool(name, *args):
    command = [sys.executable, os.path.join(ROOT, "tools", name), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_export_tool_writes_torchscript(tmp_path):
    output = tmp_path / "ssd.ts"
    config = os.path.join(ROOT, "configs", "Base-SSD.yaml")
    stdout = run_tool(
        "export_model.py", "--config-file", config, "--output", str(output), *TINY_SSD300_OPTS
    )
    assert "sorted scores differ" in stdout
    assert output.exists()
    outputs = torch.jit.load(str(output))(random_image(300, 300))
    assert len(outputs) == len(OUTPUT_NAMES)


def test_benchmark_tool_writes_every_figure(tmp_path):
    output = tmp_path / "benchmark.json"
    config = os.path.join(ROOT, "configs", "Base-SSD.yaml")
    args = ["--configs", config, "--modes", "eager", "folded", "fast", "--iters", "1"]
    args += ["--batch", "2", "--batch-iters", "1", "--train-batch", "2", "--train-iters", "1"]
    args += ["--no-flops", "--threads", "1", "--output", str(output)]
    stdout = run_tool("benchmark.py", *args, *TINY_SSD300_OPTS)
    assert "| fast |" in stdout
    (result,) = json.loads(output.read_text())["results"]
    assert set(result["latency"]) == {"eager", "folded", "fast"}
    assert result["default_boxes"] == 8732 and result["train_images_per_s"] > 0
