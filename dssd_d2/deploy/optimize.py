"""CPU fast paths for inference: BN folding, channels-last, a frozen oneDNN graph, bf16.

``tools/benchmark.py`` measures each of these; what it shows (docs/speed.md): channels-last and
the frozen oneDNN graph help every model on CPU, folding removes the BatchNorm passes, and bf16
autocast roughly halves the network time on CPUs with AVX512-BF16 or AMX.
"""

import contextlib

import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone

from .fold import fold_batch_norm

__all__ = ["GraphBackbone", "TracedBackbone", "bf16_autocast", "optimize_for_inference"]


class GraphBackbone(Backbone):
    """A compiled graph in place of a backbone (TorchScript here, OpenVINO in quantize.py). It
    keeps the shapes and padding rules the meta-architecture reads when it batches images."""

    def __init__(self, shapes: dict, size_divisibility: int, padding_constraints: dict):
        super().__init__()
        self._shapes: dict[str, ShapeSpec] = dict(shapes)
        self._out_features = list(self._shapes)
        self._size_divisibility = size_divisibility
        self._padding_constraints = padding_constraints

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> dict[str, int]:
        return self._padding_constraints

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)


class TracedBackbone(GraphBackbone):
    """A frozen TorchScript graph with the original backbone's outputs."""

    def __init__(self, backbone: Backbone, graph: torch.jit.ScriptModule):
        super().__init__(
            backbone.output_shape(), backbone.size_divisibility, backbone.padding_constraints
        )
        self.graph = graph

    def forward(self, x):
        return self.graph(x)


class _TracedHead(nn.Module):
    def __init__(self, graph: torch.jit.ScriptModule):
        super().__init__()
        self.graph = graph

    def forward(self, features: list[torch.Tensor]):
        logits, deltas = self.graph(features)
        return list(logits), list(deltas)


def _freeze_for_onednn(module: nn.Module, example):
    """Trace, freeze (constant weights) and let PyTorch rewrite the graph for oneDNN: prepacked
    weights, conv + ReLU / add fusions, no layout reorders between convolutions."""
    traced = torch.jit.trace(module, example, strict=False, check_trace=False)
    return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))


@torch.no_grad()
def optimize_for_inference(
    model: nn.Module,
    image_size: int,
    *,
    fold: bool = True,
    channels_last: bool = True,
    onednn_graph: bool = True,
    batch_size: int = 1,
) -> nn.Module:
    """Make an SSD-family model (a DenseDetector) fast for inference on CPU, in place.

    Args:
        image_size: the square input size (INPUT.FIXED_SIZE) used to trace the graph.
        fold: fold BatchNorm into convolutions (:func:`fold_batch_norm`).
        channels_last: NHWC weights and activations, the layout oneDNN convolutions prefer.
        onednn_graph: replace ``backbone`` and ``head`` by frozen TorchScript graphs optimised
            for oneDNN. The graph is traced for ``batch_size`` images; other batch sizes run
            through the same graph. Not for training, nor for export (export the eager model).
    Returns:
        ``model``, in eval mode; outputs equal the original's within float tolerance.
    """
    model.eval()
    if fold:
        fold_batch_norm(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if onednn_graph:
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        channels = model.pixel_mean.shape[0]
        image = torch.zeros(batch_size, channels, image_size, image_size, device=model.device)
        image = image.contiguous(memory_format=memory_format)
        features = model.backbone(image)
        head_inputs = [features[f] for f in model.head_in_features]
        model.backbone = TracedBackbone(model.backbone, _freeze_for_onednn(model.backbone, image))
        model.head = _TracedHead(_freeze_for_onednn(model.head, (head_inputs,)))
    return model


def bf16_autocast(enabled: bool = True):
    """bfloat16 autocast on CPU for the network (post-processing stays in float32)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16)
