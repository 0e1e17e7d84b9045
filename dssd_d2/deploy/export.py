"""TorchScript and ONNX export of SSD-family models, through Detectron2's TracingAdapter.

The exported graph is the whole eager inference: normalisation, network, softmax, box
decoding, per-class top-k and NMS. Input: one image tensor (C, H, W), float, in the model's
INPUT.FORMAT and pixel range (as ``{"image": ...}`` in eager mode), of the size it was exported
at (SSD-family models take a fixed square). Outputs, in this order: ``pred_boxes`` (N, 4) XYXY,
``pred_classes`` (N,), ``scores`` (N,) and ``image_size`` (2,), the fields of the eager
``Instances``; :func:`outputs_to_instances` rebuilds those.
"""

from collections.abc import Sequence

import torch
from torch import nn

from detectron2.export import TracingAdapter
from detectron2.structures import Boxes, Instances

__all__ = [
    "OUTPUT_NAMES",
    "export_onnx",
    "export_torchscript",
    "outputs_to_instances",
    "tracing_adapter",
]

OUTPUT_NAMES = ("pred_boxes", "pred_classes", "scores", "image_size")


def _single_image_inference(model, inputs):
    # Keep only the Instances: their fields flatten to tensors, in OUTPUT_NAMES order.
    return model(inputs)[0]["instances"]


def tracing_adapter(model: nn.Module, image: torch.Tensor) -> TracingAdapter:
    """Detectron2's TracingAdapter around ``model`` (eval mode) for one (C, H, W) image."""
    if model.training:
        raise ValueError("Export needs the model in eval mode (call model.eval()).")
    # In eval mode itself: exporters restore the adapter's mode afterwards, and a fresh module
    # is in training mode, which would propagate to ``model``.
    return TracingAdapter(model, [{"image": image}], _single_image_inference).eval()


@torch.no_grad()
def export_torchscript(model: nn.Module, image: torch.Tensor, path: str | None = None):
    """Trace ``model`` on ``image`` into TorchScript; save it to ``path`` if given.

    Tracing (not scripting): the backbones use Python control flow that depends only on the
    fixed input size, which tracing bakes in. Returns the traced module, which maps an image to
    the tuple of :data:`OUTPUT_NAMES`.
    """
    adapter = tracing_adapter(model, image)
    traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    if path:
        traced.save(path)
    return traced


@torch.no_grad()
def export_onnx(model: nn.Module, image: torch.Tensor, path: str, opset: int = 17):
    """Write ``model`` as an ONNX graph (NMS as NonMaxSuppression) to ``path``.

    Uses PyTorch's TorchScript-based exporter, which knows torchvision's NMS; needs the ``onnx``
    package (``pip install "dssd_d2[export]"``). Input name ``image``, outputs :data:`OUTPUT_NAMES`.
    """
    adapter = tracing_adapter(model, image)
    torch.onnx.export(
        adapter,
        adapter.flattened_inputs,
        path,
        input_names=["image"],
        output_names=list(OUTPUT_NAMES),
        opset_version=opset,
        dynamo=False,
    )


def outputs_to_instances(outputs: Sequence) -> Instances:
    """The eager model's ``Instances`` from the exported outputs (tensors or numpy arrays)."""
    boxes, classes, scores, image_size = (torch.as_tensor(x) for x in outputs)
    result = Instances(tuple(int(s) for s in image_size))
    result.pred_boxes = Boxes(boxes)
    result.pred_classes = classes
    result.scores = scores
    return result
