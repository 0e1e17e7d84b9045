"""Post-training static int8 quantization of an SSD-family network for CPU inference.

The network (backbone and head) is converted to OpenVINO with its PyTorch frontend, quantized
by NNCF from calibration images (8-bit weights per channel, 8-bit activations) and run by
OpenVINO's CPU plugin, which uses VNNI / AMX int8 instructions where the CPU has them. The
rest stays in PyTorch and in float32: preprocessing, softmax, box decoding, top-k and NMS
(``SSD.forward_inference``), so results are Detectron2 ``Instances`` as usual.

Why OpenVINO and NNCF (measurements in docs/speed.md): on the development CPU (Xeon with
AVX512-VNNI and AMX) OpenVINO's int8 SSD300 network ran several times faster than ONNX Runtime's
int8 kernels on the same quantized graph, and PyTorch's PT2E int8 path needs ``torch.compile``,
which compiles for minutes on two cores before the first image; an OpenVINO int8 model loads
and compiles in about a second in a fresh process.

The artifact is OpenVINO IR: ``<name>.xml`` (graph, with what it was built for in its runtime
info) and ``<name>.bin`` (int8 weights). It holds no post-processing settings: load it with the
same config it was made from (:func:`load_int8_model`). Needs the ``int8`` extra
(``pip install "dssd_d2[int8]"``: ``openvino`` to run, ``nncf`` to quantize).
"""

import ast
import copy
import functools
import os
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import pairwise_iou

from .. import cpu
from .fold import fold_batch_norm
from .optimize import GraphBackbone

__all__ = [
    "Int8Network",
    "compare_detections",
    "convert_network",
    "load_int8_model",
    "quantize_network",
    "save_int8",
    "use_int8_network",
]

_INFO = "dssd_d2"  # runtime-info section of the IR with what the graph was built for


def _openvino():
    try:
        import openvino
    except ImportError as e:
        raise ImportError(
            'int8 inference needs OpenVINO: pip install "dssd_d2[int8]" (or `make install`)'
        ) from e
    return openvino


@functools.lru_cache(maxsize=None)
def _core():
    """The process's one OpenVINO Core: a second Core in a process has crashed OpenVINO 2026
    builds (openvinotoolkit/openvino#35338; Ultralytics' test runner died so after about 20
    model loads), and one Core serves any number of models."""
    return _openvino().Core()


class _Network(nn.Module):
    """Backbone and head as one module: normalised images (N, C, S, S) in, one map per level
    out, the class logits and box deltas of that level concatenated on channels (so that the
    graph has one output per level, at the level's own grid size)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone, self.head = model.backbone, model.head
        self.in_features = list(model.head_in_features)

    def forward(self, images):
        features = self.backbone(images)
        logits, deltas = self.head([features[f] for f in self.in_features])
        return tuple(torch.cat(pair, dim=1) for pair in zip(logits, deltas))


def _build_info(model: nn.Module, image_size: int) -> dict:
    """What the graph was built for; checked against the config when it is loaded."""
    return {
        "image_size": image_size,
        "in_channels": int(model.pixel_mean.shape[0]),
        "num_classes": int(model.num_classes),
        "num_anchors": [int(a) for a in model.anchor_generator.num_anchors],
        "head_in_features": list(model.head_in_features),
    }


@torch.no_grad()
def convert_network(model: nn.Module, image_size: int):
    """The float32 OpenVINO model of ``model``'s backbone and head (any batch size, images of
    ``image_size`` squared), with BatchNorm folded (on a copy: ``model`` is unchanged)."""
    ov = _openvino()
    info = _build_info(model, image_size)
    network = _Network(fold_batch_norm(copy.deepcopy(model).cpu().float())).eval()
    example = torch.zeros(1, info["in_channels"], image_size, image_size)
    ov_model = ov.convert_model(
        network,
        example_input=example,
        input=[ov.PartialShape([-1, info["in_channels"], image_size, image_size])],
    )
    for key, value in info.items():
        ov_model.set_rt_info(str(value), [_INFO, key])
    return ov_model


def quantize_network(
    model: nn.Module,
    calibration_images: Sequence[torch.Tensor],
    image_size: int,
    *,
    preset: str = "mixed",
    fast_bias_correction: bool = True,
    overflow_fix: str | None = None,
):
    """Post-training static quantization of ``model``'s network with NNCF.

    Args:
        calibration_images: images (C, S, S) as the model takes them (INPUT.FORMAT, 0-255,
            resized to the square); activation ranges are taken from all of them.
        preset: NNCF's "mixed" (symmetric weights, asymmetric activations; the default, for
            accuracy: DSOD's and SSD's L2-normalised sources are not centred) or "performance"
            (symmetric both).
        fast_bias_correction: NNCF's bias correction of the quantized convolutions.
        overflow_fix: NNCF's OverflowFix ("enable", "first_layer_only", "disable"): weights
            in half the 8-bit range where the CPU's int8 instructions saturate. None: "enable"
            when this CPU has no VNNI or AMX int8 (int8 on AVX2 alone lost float32's detections
            in the agreement test without it), else NNCF's default.
    Returns:
        (OpenVINO int8 model, report dict with the image count, seconds and quantized layers).
    """
    import nncf

    if not calibration_images:
        raise ValueError("Quantization needs at least one calibration image")
    start = time.perf_counter()
    float_model = convert_network(model, image_size)
    normalised = [_normalise(model, image) for image in calibration_images]
    if overflow_fix is None and not cpu.has_int8_dot_product():
        overflow_fix = "enable"
    advanced = nncf.AdvancedQuantizationParameters(
        overflow_fix=nncf.OverflowFix(overflow_fix) if overflow_fix else None
    )
    int8_model = nncf.quantize(
        float_model,
        nncf.Dataset(normalised),
        preset=nncf.QuantizationPreset(preset),
        target_device=nncf.TargetDevice.CPU,
        subset_size=len(normalised),
        fast_bias_correction=fast_bias_correction,
        advanced_parameters=advanced,
    )
    convolutions = [op for op in int8_model.get_ops() if op.get_type_name() == "Convolution"]
    report = {
        "calibration_images": len(normalised),
        "seconds": round(time.perf_counter() - start, 1),
        "preset": preset,
        "overflow_fix": overflow_fix or "nncf default",
        "fake_quantize_nodes": sum(
            op.get_type_name() == "FakeQuantize" for op in int8_model.get_ops()
        ),
        "convolutions": len(convolutions),
    }
    return int8_model, report


@torch.no_grad()
def _normalise(model: nn.Module, image: torch.Tensor) -> np.ndarray:
    """One (1, C, S, S) float32 array normalised as the model's preprocessing does it."""
    image = image.to(model.pixel_mean.device, torch.float32)
    return ((image - model.pixel_mean) / model.pixel_std)[None].cpu().numpy()


def save_int8(ov_model, path: str):
    """Write the IR to ``path`` (.xml) and the weights beside it (.bin)."""
    if not path.endswith(".xml"):
        raise ValueError(f"The int8 model is OpenVINO IR: give a .xml path, not {path!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # No fp16 compression of the remaining float constants (biases, L2Norm scales).
    _openvino().save_model(ov_model, path, compress_to_fp16=False)


class Int8Network(GraphBackbone):
    """A compiled OpenVINO graph in place of the backbone: returns, per head input feature, the
    level's class logits and box deltas concatenated on channels. The maps have the features'
    grid sizes, which is all the anchor generator reads; :class:`_SplitHead` splits them."""

    def __init__(self, compiled, info: dict, size_divisibility: int, padding_constraints):
        channels = [a * (info["num_classes"] + 5) for a in info["num_anchors"]]
        shapes = {f: ShapeSpec(channels=c) for f, c in zip(info["head_in_features"], channels)}
        super().__init__(shapes, size_divisibility, padding_constraints)
        self.compiled = compiled

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        array = images.detach().cpu().float().contiguous().numpy()
        outputs = self.compiled(array)  # OpenVINO reuses one infer request; outputs copied
        return {
            f: torch.from_numpy(outputs[i]).to(images.device)
            for i, f in enumerate(self._out_features)
        }


class _SplitHead(nn.Module):
    """The head's interface over :class:`Int8Network`'s maps: (logits, deltas) per level."""

    def __init__(self, num_classes: int, num_anchors: Sequence[int]):
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = list(num_anchors)

    def forward(self, maps: list[torch.Tensor]):
        logits, deltas = [], []
        for x, anchors in zip(maps, self.num_anchors):
            split = anchors * (self.num_classes + 1)
            logits.append(x[:, :split])
            deltas.append(x[:, split:])
        return logits, deltas


def _read_info(ov_model, path: str) -> dict:
    info = {}
    for key in ("image_size", "in_channels", "num_classes", "num_anchors", "head_in_features"):
        if not ov_model.has_rt_info([_INFO, key]):
            raise ValueError(f"{path} is not a dssd_d2 int8 model (no {_INFO}/{key} in it)")
        info[key] = ast.literal_eval(ov_model.get_rt_info([_INFO, key]).astype(str))
    return info


def _check_info(info: dict, model: nn.Module, image_size: int, path: str):
    """Refuse an artifact made for another geometry: its outputs would be paired with the
    wrong priors or classes without any error."""
    expected = _build_info(model, image_size)
    keys = {
        "image_size": "INPUT.FIXED_SIZE",
        "in_channels": "MODEL.PIXEL_MEAN (channels)",
        "num_classes": "MODEL.SSD.NUM_CLASSES",
        "num_anchors": "MODEL.ANCHOR_GENERATOR (priors per location)",
        "head_in_features": "MODEL.SSD.IN_FEATURES",
    }
    for key, config_key in keys.items():
        if info[key] != expected[key]:
            raise ValueError(
                f"{path} was made for {key}={info[key]}, but the config gives {config_key}="
                f"{expected[key]}: load it with the config it was quantized from"
            )


def use_int8_network(
    model: nn.Module,
    ov_model,
    image_size: int,
    *,
    path: str = "<model>",
    num_threads: int | None = None,
) -> nn.Module:
    """Replace ``model``'s backbone and head by the int8 graph ``ov_model`` (an
    ``openvino.Model``), compiled for the CPU with ``num_threads`` threads (default: PyTorch's
    ``torch.get_num_threads()``). Returns ``model``, in eval mode, for inference only."""
    info = _read_info(ov_model, path)
    _check_info(info, model, image_size, path)
    threads = num_threads or torch.get_num_threads()
    compiled = _core().compile_model(
        ov_model,
        "CPU",
        {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"},
    )
    backbone = model.backbone
    model.backbone = Int8Network(
        compiled, info, backbone.size_divisibility, backbone.padding_constraints
    )
    model.head = _SplitHead(info["num_classes"], info["num_anchors"])
    return model.eval()


def load_int8_model(cfg, path: str, num_threads: int | None = None) -> nn.Module:
    """The SSD-family model of ``cfg`` running the int8 network saved at ``path`` (.xml).

    ``cfg`` gives preprocessing and post-processing (thresholds, top-k, NMS, priors); the
    artifact's recorded geometry must match it. Weights in ``cfg.MODEL.WEIGHTS`` are not read.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"int8 model {path!r} not found (tools/quantize.py writes it)")
    model = build_model(cfg)
    ov_model = _core().read_model(path)
    return use_int8_network(
        model, ov_model, cfg.INPUT.FIXED_SIZE, path=path, num_threads=num_threads
    )


def compare_detections(reference, candidate, score_thresh: float = 0.5, iou_thresh: float = 0.5):
    """Which of ``reference``'s detections with score >= ``score_thresh`` ``candidate``
    reproduces: a candidate detection of the same class at IoU >= ``iou_thresh``, each used
    once, greedily from the highest reference score. Returns (number of such reference
    detections, |score difference| of each one reproduced)."""
    ref = reference[reference.scores >= score_thresh]
    ref = ref[ref.scores.argsort(descending=True)]
    if len(ref) == 0 or len(candidate) == 0:
        return len(ref), []
    iou = pairwise_iou(ref.pred_boxes, candidate.pred_boxes)
    same_class = ref.pred_classes[:, None] == candidate.pred_classes[None, :]
    iou = torch.where(same_class, iou, torch.zeros_like(iou))
    used = torch.zeros(len(candidate), dtype=torch.bool)
    differences = []
    for i in range(len(ref)):
        overlaps = iou[i].masked_fill(used, 0)
        if overlaps.max() >= iou_thresh:
            j = int(overlaps.argmax())
            used[j] = True
            differences.append(abs(float(ref.scores[i] - candidate.scores[j])))
    return len(ref), differences
