"""Caffe's text format (deploy.prototxt): a small reader and writer, and the deploy nets of our
architectures as the official generator scripts write them.

A message is a list of ``(key, value)`` pairs (order kept, keys repeat); a value is a string,
an :class:`Enum` identifier, a bool, an int, a float or a nested message. :func:`deploy_net`
writes the deploy net of a config with the layer names and parameters of weiliu89/caffe's
``ssd_pascal.py`` / ``model_libs.py`` (SSD) and szq0214/DSOD's ``DSOD300_pascal.py`` (DSOD,
whose unnamed layers get NetSpec's automatic names, ``Convolution17``, in NetSpec's order).
Each layer with weights also records the module of our model it maps to (:class:`Layer`).
"""

import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from torch import nn

__all__ = [
    "Enum",
    "Layer",
    "Net",
    "parse_prototxt",
    "format_message",
    "format_net",
    "net_from_message",
    "deploy_net",
]

Message = List[Tuple[str, object]]


class Enum(str):
    """An enum value, written without quotes (``pool: MAX``)."""


# ---------------------------------------------------------------- text format
_TOKEN = re.compile(
    r'\s+|#[^\n]*|(?P<str>"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')|(?P<punct>[{}:\[\],;<>])'
    r"|(?P<word>[^\s{}:\[\],;<>\"'#]+)"
)


def _tokens(text: str, source: str):
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            line = text.count("\n", 0, pos) + 1
            raise ValueError(f"{source}: cannot parse line {line}: {text[pos:pos + 40]!r}")
        pos = match.end()
        if match.lastgroup:
            yield match.lastgroup, match.group(match.lastgroup), text.count("\n", 0, pos) + 1


def _scalar(word: str):
    if word in ("true", "false"):
        return word == "true"
    try:
        return int(word)
    except ValueError:
        pass
    try:
        return float(word)
    except ValueError:
        return Enum(word)


def parse_prototxt(text: str, source: str = "prototxt") -> Message:
    """Parse protobuf text format (what deploy.prototxt files hold) into a message."""
    stack: List[Message] = [[]]
    tokens = list(_tokens(text, source))
    i = 0
    while i < len(tokens):
        kind, value, line = tokens[i]
        if kind == "punct" and value == "}":
            if len(stack) == 1:
                raise ValueError(f"{source}: unmatched '}}' at line {line}")
            stack.pop()
            i += 1
            continue
        if kind != "word":
            raise ValueError(f"{source}: expected a field name at line {line}, got {value!r}")
        key = value
        i += 1
        if i < len(tokens) and tokens[i][1] == ":":
            i += 1
        if i >= len(tokens):
            raise ValueError(f"{source}: field {key!r} has no value (line {line})")
        kind, value, line = tokens[i]
        if value == "{":
            child: Message = []
            stack[-1].append((key, child))
            stack.append(child)
        elif kind == "str":
            stack[-1].append((key, bytes(value[1:-1], "utf-8").decode("unicode_escape")))
        elif kind == "word":
            stack[-1].append((key, _scalar(value)))
        else:
            raise ValueError(f"{source}: bad value {value!r} for {key!r} at line {line}")
        i += 1
    if len(stack) != 1:
        raise ValueError(f"{source}: a '{{' is never closed")
    return stack[0]


def _format_scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value)
    return str(value)


def format_message(message: Message, indent: int = 0) -> str:
    """The text format of ``message``, two spaces per level as protobuf prints it."""
    pad = "  " * indent
    lines = []
    for key, value in message:
        if isinstance(value, list):
            lines.append(f"{pad}{key} {{\n{format_message(value, indent + 1)}{pad}}}\n")
        else:
            lines.append(f"{pad}{key}: {_format_scalar(value)}\n")
    return "".join(lines)


def get(message: Message, key: str, default=None):
    """The last value of ``key`` in ``message`` (protobuf's rule for a repeated optional)."""
    values = [v for k, v in message if k == key]
    return values[-1] if values else default


def get_all(message: Message, key: str) -> list:
    return [v for k, v in message if k == key]


# ---------------------------------------------------------------- nets
@dataclass
class Layer:
    """A Caffe layer: its text-format fields, plus, for a layer with weights written by
    :func:`deploy_net`, the module of our model it maps to (``target``) and how (``kind``:
    "conv", "bn", "scale", "normalize", "deconv"; ``classes`` when its output channels are
    class scores per prior, background first)."""

    name: str
    type: str
    bottom: List[str]
    top: List[str]
    params: Message = field(default_factory=list)
    target: str = ""
    kind: str = ""
    classes: int = 0

    def message(self) -> Message:
        fields: Message = [("name", self.name), ("type", self.type)]
        fields += [("bottom", b) for b in self.bottom] + [("top", t) for t in self.top]
        return fields + list(self.params)


@dataclass
class Net:
    name: str
    input_size: Tuple[int, int]
    layers: List[Layer]

    def message(self) -> Message:
        shape = [("dim", d) for d in (1, 3, *self.input_size)]
        return [("name", self.name), ("input", "data"), ("input_shape", shape)] + [
            ("layer", layer.message()) for layer in self.layers
        ]

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r} in net {self.name!r}")


def format_net(net: Net) -> str:
    return format_message(net.message())


def net_from_message(message: Message, source: str = "prototxt") -> Net:
    """A :class:`Net` from a parsed deploy.prototxt (new ``layer`` or old V1 ``layers``)."""
    if get_all(message, "layers") and not get_all(message, "layer"):
        raise ValueError(
            f"{source} uses the old V1 'layers' format; upgrade it with Caffe's "
            "upgrade_net_proto_text tool (the .caffemodel may stay V1)"
        )
    shape = get(message, "input_shape")
    dims = [d for _, d in shape] if shape else get_all(message, "input_dim")
    layers = []
    for fields in get_all(message, "layer"):
        base = {"name", "type", "bottom", "top"}
        layers.append(
            Layer(
                name=get(fields, "name", ""),
                type=get(fields, "type", ""),
                bottom=get_all(fields, "bottom"),
                top=get_all(fields, "top"),
                params=[(k, v) for k, v in fields if k not in base],
            )
        )
    size = tuple(dims[2:4]) if len(dims) >= 4 else (0, 0)
    return Net(get(message, "name", ""), size, layers)


# ---------------------------------------------------------------- net builder
def _xavier_conv(num_output, kernel, pad=None, stride=None, dilation=None, order="pks"):
    """SSD's biased conv (xavier weights) with the fields its generator sets, in its order."""
    params: Message = [("num_output", num_output)]
    for key in order:
        value = {"p": ("pad", pad), "k": ("kernel_size", kernel), "s": ("stride", stride)}[key]
        if value[1] is not None:
            params.append(value)
    params += [("weight_filler", [("type", "xavier")])]
    params += [("bias_filler", [("type", "constant"), ("value", 0)])]
    if dilation is not None:
        params.append(("dilation", dilation))
    return params


_SSD_CONV_PARAMS: Message = [
    ("param", [("lr_mult", 1), ("decay_mult", 1)]),
    ("param", [("lr_mult", 2), ("decay_mult", 0)]),
]
_BN_PARAMS: Message = [("param", [("lr_mult", 0), ("decay_mult", 0)])] * 3


class _Builder:
    """Appends layers; unnamed ones get NetSpec's automatic name (type + per-type count)."""

    def __init__(self):
        self.layers: List[Layer] = []
        self.counts: Dict[str, int] = {}

    def auto(self, type_name: str) -> str:
        self.counts[type_name] = self.counts.get(type_name, 0) + 1
        return f"{type_name}{self.counts[type_name]}"

    def add(self, type_name, bottom, params=(), name=None, top=None, in_place=False, **mapping):
        name = name or self.auto(type_name)
        bottoms = [bottom] if isinstance(bottom, str) else list(bottom)
        top = bottoms[0] if in_place else (top or name)
        self.layers.append(Layer(name, type_name, bottoms, [top], list(params), **mapping))
        return top

    def conv(self, bottom, conv_params, name=None, params=_SSD_CONV_PARAMS, **mapping):
        return self.add(
            "Convolution",
            bottom,
            list(params) + [("convolution_param", conv_params)],
            name=name,
            kind="conv",
            **mapping,
        )

    def relu(self, bottom, name=None, in_place=True):
        return self.add("ReLU", bottom, name=name, in_place=in_place)

    def max_pool(self, bottom, kernel, stride, pad=None, name=None):
        params: Message = [("pool", Enum("MAX")), ("kernel_size", kernel), ("stride", stride)]
        if pad is not None:
            params.append(("pad", pad))
        return self.add("Pooling", bottom, [("pooling_param", params)], name=name)

    def batch_norm(self, bottom, target, eps=None, name=None, in_place=False):
        bn_params: Message = [("eps", eps), ("moving_average_fraction", 0.999)] if eps else []
        params = list(_BN_PARAMS) + ([("batch_norm_param", bn_params)] if bn_params else [])
        return self.add(
            "BatchNorm", bottom, params, name=name, in_place=in_place, target=target, kind="bn"
        )

    def scale(self, bottom, target, name=None, lr_params=False):
        params: Message = []
        if lr_params:
            params += [("param", [("lr_mult", 1), ("decay_mult", 0)])] * 2
        filler = [("type", "constant"), ("value", 1.0)] if lr_params else [("value", 1)]
        bias = [("type", "constant"), ("value", 0.0)] if lr_params else [("value", 0)]
        scale_params = [("filler", filler), ("bias_term", True), ("bias_filler", bias)]
        return self.add(
            "Scale",
            bottom,
            params + [("scale_param", scale_params)],
            name=name,
            in_place=True,
            target=target,
            kind="scale",
        )

    def concat(self, bottoms, axis=1, name=None):
        return self.add("Concat", bottoms, [("concat_param", [("axis", axis)])], name=name)


# ---------------------------------------------------------------- SSD head (model_libs.py)
def _prior_box_params(cfg, level: int, step, offset) -> Message:
    anchors = cfg.MODEL.ANCHOR_GENERATOR
    params: Message = [("min_size", float(anchors.MIN_SIZES[level]))]
    if anchors.MAX_SIZES and anchors.MAX_SIZES[level]:
        params.append(("max_size", float(anchors.MAX_SIZES[level])))
    ratios = (
        anchors.ASPECT_RATIOS[level] if len(anchors.ASPECT_RATIOS) > 1 else anchors.ASPECT_RATIOS[0]
    )
    params += [("aspect_ratio", r) for r in ratios]
    params += [("flip", bool(anchors.FLIP)), ("clip", bool(anchors.CLIP))]
    params += [("variance", v) for v in (0.1, 0.1, 0.2, 0.2)]
    params += [("step", step), ("offset", offset)]
    return params


def _num_priors(cfg, level: int) -> int:
    anchors = cfg.MODEL.ANCHOR_GENERATOR
    ratios = (
        anchors.ASPECT_RATIOS[level] if len(anchors.ASPECT_RATIOS) > 1 else anchors.ASPECT_RATIOS[0]
    )
    ratios = [r for r in ratios if r != 1.0]
    has_max = bool(anchors.MAX_SIZES and anchors.MAX_SIZES[level])
    return 1 + has_max + len(ratios) * (2 if anchors.FLIP else 1)


def _step_value(step):
    return int(step) if float(step).is_integer() else float(step)


# Caffe fillers of the official generators: DSOD's convs, and SSD513 / DSSD513's ConvBNLayer.
_XAVIER: Message = [
    ("weight_filler", [("type", "xavier")]),
    ("bias_filler", [("type", "constant")]),
]
_GAUSSIAN: Message = [("weight_filler", [("type", "gaussian"), ("std", 0.01)])]


def _bias_free_conv(out, k, pad, stride, fillers: Message) -> Message:
    """convolution_param of a bias-free conv (followed by BatchNorm and Scale)."""
    return [
        ("num_output", out),
        ("bias_term", False),
        ("pad", pad),
        ("kernel_size", k),
        ("stride", stride),
        *fillers,
    ]


def _multibox_head(b: _Builder, cfg, sources: Sequence[str], normalize: Sequence[bool], conv_bn):
    """CreateMultiBoxHead: per source an optional Normalize, loc and conf convs (+ BN and Scale
    for DSOD), Permute + Flatten, PriorBox; then the three Concats."""
    num_classes = cfg.MODEL.SSD.NUM_CLASSES + 1
    kernels = cfg.MODEL.SSD_HEAD.KERNEL_SIZES or [cfg.MODEL.SSD_HEAD.KERNEL_SIZE] * len(sources)
    outputs = {"loc": [], "conf": [], "priorbox": []}
    for level, (source, norm) in enumerate(zip(sources, normalize)):
        if norm:
            scale = cfg.MODEL.DSOD.L2NORM_SCALE if conv_bn else cfg.MODEL.VGG.L2NORM_SCALE
            source = b.add(
                "Normalize",
                source,
                [
                    (
                        "norm_param",
                        [
                            ("across_spatial", False),
                            ("scale_filler", [("type", "constant"), ("value", _step_value(scale))]),
                            ("channel_shared", False),
                        ],
                    )
                ],
                name=f"{source}_norm",
                target=norm if isinstance(norm, str) else "",
                kind="normalize",
            )
        priors = _num_priors(cfg, level)
        k = kernels[level]
        for what, channels, module in (
            ("loc", priors * 4, "bbox_pred"),
            ("conf", priors * num_classes, "cls_score"),
        ):
            name = f"{source}_mbox_{what}"
            target = f"head.{module}.{level}"
            classes = num_classes if what == "conf" else 0
            if conv_bn:
                conv_params = _bias_free_conv(channels, k, k // 2, 1, _GAUSSIAN)
                b.conv(
                    source,
                    conv_params,
                    name=name,
                    params=[("param", [("lr_mult", 1), ("decay_mult", 1)])],
                    target=target,
                    classes=classes,
                )
                b.batch_norm(name, f"{target}.norm", eps=0.001, name=f"{name}_bn", in_place=True)
                b.scale(name, f"{target}.norm", name=f"{name}_scale", lr_params=True)
                b.layers[-2].classes = b.layers[-1].classes = classes
            else:
                b.conv(
                    source,
                    _xavier_conv(channels, k, k // 2, 1),
                    name=name,
                    target=target,
                    classes=classes,
                )
            b.add(
                "Permute",
                name,
                [("permute_param", [("order", o) for o in (0, 2, 3, 1)])],
                name=f"{name}_perm",
            )
            outputs[what].append(
                b.add(
                    "Flatten",
                    f"{name}_perm",
                    [("flatten_param", [("axis", 1)])],
                    name=f"{name}_flat",
                )
            )
        step = _step_value(cfg.MODEL.ANCHOR_GENERATOR.STEPS[level])
        outputs["priorbox"].append(
            b.add(
                "PriorBox",
                [source, "data"],
                [
                    (
                        "prior_box_param",
                        _prior_box_params(cfg, level, step, cfg.MODEL.ANCHOR_GENERATOR.OFFSET),
                    )
                ],
                name=f"{source}_mbox_priorbox",
            )
        )
    b.concat(outputs["loc"], name="mbox_loc")
    b.concat(outputs["conf"], name="mbox_conf")
    b.concat(outputs["priorbox"], axis=2, name="mbox_priorbox")


def _detection_output(b: _Builder, cfg, confidence_threshold, label_map_file):
    num_classes = cfg.MODEL.SSD.NUM_CLASSES + 1
    b.add(
        "Reshape",
        "mbox_conf",
        [("reshape_param", [("shape", [("dim", 0), ("dim", -1), ("dim", num_classes)])])],
        name="mbox_conf_reshape",
    )
    b.add(
        "Softmax", "mbox_conf_reshape", [("softmax_param", [("axis", 2)])], name="mbox_conf_softmax"
    )
    b.add(
        "Flatten", "mbox_conf_softmax", [("flatten_param", [("axis", 1)])], name="mbox_conf_flatten"
    )
    params: Message = [
        ("num_classes", num_classes),
        ("share_location", True),
        ("background_label_id", 0),
        (
            "nms_param",
            [
                ("nms_threshold", cfg.MODEL.SSD.NMS_THRESH_TEST),
                ("top_k", cfg.MODEL.SSD.TOPK_CANDIDATES_TEST),
            ],
        ),
    ]
    if label_map_file:
        params.append(("save_output_param", [("label_map_file", label_map_file)]))
    params += [
        ("code_type", Enum("CENTER_SIZE")),
        ("keep_top_k", cfg.TEST.DETECTIONS_PER_IMAGE),
        ("confidence_threshold", confidence_threshold),
    ]
    b.add(
        "DetectionOutput",
        ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"],
        [("include", [("phase", Enum("TEST"))]), ("detection_output_param", params)],
        name="detection_out",
    )


# ---------------------------------------------------------------- VGG16 SSD (ssd_pascal.py)
def _vgg_ssd(b: _Builder, cfg) -> Tuple[List[str], List[object]]:
    vgg = cfg.MODEL.VGG
    if vgg.NORM or cfg.MODEL.SSD_EXTRAS.NORM:
        raise ValueError("The Caffe SSD has no norm in VGG or its extra layers (MODEL.VGG.NORM)")
    x = "data"
    for stage, (dim, count) in enumerate(zip(vgg.CONV_DIMS, (2, 2, 3, 3, 3)), start=1):
        if stage > 1:
            x = b.max_pool(x, 2, 2, name=f"pool{stage - 1}")
        for i in range(1, count + 1):
            name = f"conv{stage}_{i}"
            dilation = 1 if stage == 5 else None
            x = b.conv(
                x,
                _xavier_conv(dim, 3, 1, dilation=dilation, order="pk"),
                name=name,
                target=f"backbone.{name}",
            )
            b.relu(x, name=f"relu{stage}_{i}")
    x = b.max_pool(x, 3, 1, pad=1, name="pool5")
    d = vgg.FC6_DILATION
    x = b.conv(
        x, _xavier_conv(vgg.FC_DIM, 3, d, dilation=d, order="pk"), name="fc6", target="backbone.fc6"
    )
    b.relu(x, name="relu6")
    x = b.conv(x, _xavier_conv(vgg.FC_DIM, 1, order="k"), name="fc7", target="backbone.fc7")
    b.relu(x, name="relu7")
    extras = cfg.MODEL.SSD_EXTRAS
    for i, ((mid, out), stride, pad, k) in enumerate(
        zip(extras.CONV_DIMS, extras.STRIDES, extras.PADDINGS, extras.KERNEL_SIZES)
    ):
        level = f"conv{6 + i}"
        target = f"backbone.extras.levels.{i}"
        x = b.conv(x, _xavier_conv(mid, 1, 0, 1), name=f"{level}_1", target=f"{target}.0")
        b.relu(x, name=f"{level}_1_relu")
        x = b.conv(x, _xavier_conv(out, k, pad, stride), name=f"{level}_2", target=f"{target}.2")
        b.relu(x, name=f"{level}_2_relu")
    names = {"conv4_3": "conv4_3", "fc7": "fc7"}
    names.update({f"conv{6 + i}_2": f"conv{6 + i}_2" for i in range(len(extras.CONV_DIMS))})
    sources = [names[f] for f in cfg.MODEL.SSD.IN_FEATURES]
    normalize = ["backbone.conv4_3_norm" if f == "conv4_3" else False for f in sources]
    return sources, normalize


# ---------------------------------------------------------------- DSOD300 (DSOD300_pascal.py)
def _bn_relu_conv(b: _Builder, x, target, out, k, stride=1, pad=0, relu_in_place=True, name=None):
    """DSOD's bn_relu_conv: BatchNorm (own top), Scale, ReLU, bias-free conv; our PreActConv."""
    x = b.batch_norm(x, f"{target}.0")
    b.scale(x, f"{target}.0")
    x = b.relu(x, in_place=relu_in_place)
    conv_params = _bias_free_conv(out, k, pad, stride, _XAVIER)
    return b.conv(x, conv_params, params=(), name=name, target=f"{target}.2")


def _dense_block(b: _Builder, x, target, num_layers, growth, width):
    for i in range(num_layers):
        y = _bn_relu_conv(b, x, f"{target}.{i}.bottleneck", width, 1)
        y = _bn_relu_conv(b, y, f"{target}.{i}.conv", growth, 3, pad=1)
        x = b.concat([x, y])
    return x


def _dsod(b: _Builder, cfg) -> Tuple[List[str], List[object]]:
    dsod = cfg.MODEL.DSOD
    expected = dict(
        STEM="stem_block",
        COMPRESSION=1.0,
        PREDICTION="dense",
        TRANSITION_WITHOUT_POOLING=True,
        LAST_MAP_SIZE=2,
    )
    wrong = {k: dsod[k] for k, v in expected.items() if dsod[k] != v}
    if wrong or cfg.MODEL.SSD_HEAD.PREDICTOR != "conv_bn":
        raise ValueError(
            f"The released DSOD300 has MODEL.DSOD {expected} and MODEL.SSD_HEAD.PREDICTOR "
            f"'conv_bn'; this config has {wrong or cfg.MODEL.SSD_HEAD.PREDICTOR}"
        )
    width = dsod.STEM_WIDTH
    x = "data"
    for i, out in enumerate((width, width, 2 * width)):
        conv_params = _bias_free_conv(out, 3, 1, 2 if i == 0 else 1, _XAVIER)
        x = b.conv(x, conv_params, params=(), target=f"backbone.stem.{i}")
        y = b.batch_norm(x, f"backbone.stem.{i}.norm")
        b.scale(y, f"backbone.stem.{i}.norm")
        x = b.relu(y)
    x = b.max_pool(x, 2, 2)
    growth, bottleneck = dsod.GROWTH_RATE, dsod.BOTTLENECK_WIDTH
    channels = 2 * width
    transitions = list(dsod.TRANSITION_CHANNELS)
    stages = "backbone.stages"

    def transition(x, block, name=None):
        nonlocal channels
        channels += growth * dsod.BLOCK_LAYERS[block - 1]
        out = transitions[block - 1] or channels
        channels = out
        target = f"{stages}.transition{block}"
        return _bn_relu_conv(b, x, target, out, 1, relu_in_place=False, name=name)

    x = _dense_block(b, x, f"{stages}.dense1", dsod.BLOCK_LAYERS[0], growth, bottleneck)
    x = b.max_pool(transition(x, 1), 2, 2)
    x = _dense_block(b, x, f"{stages}.dense2", dsod.BLOCK_LAYERS[1], growth, bottleneck)
    first = transition(x, 2, name="First")
    x = b.max_pool(first, 2, 2)
    x = _dense_block(b, x, f"{stages}.dense3", dsod.BLOCK_LAYERS[2], growth, bottleneck)
    x = transition(x, 3)
    x = _dense_block(b, x, f"{stages}.dense4", dsod.BLOCK_LAYERS[3], growth, bottleneck)
    x = transition(x, 4)
    halves = dsod.DENSE_HALF_CHANNELS
    pooled = b.max_pool(first, 2, 2)
    pooled = _bn_relu_conv(b, pooled, "backbone.prediction.reuse_first.1", halves[0], 1)
    x = b.concat([x, pooled], name="Second")
    sources = ["First", "Second"]
    for level, (half, name) in enumerate(zip(halves[1:], ("Third", "Fourth", "Fifth", "Sixth"))):
        target = f"backbone.prediction.levels.{level}"
        reused = b.max_pool(x, 2, 2)
        reused = _bn_relu_conv(b, reused, f"{target}.reused.1", half, 1)
        learned = _bn_relu_conv(b, x, f"{target}.learned.0", half, 1)
        learned = _bn_relu_conv(b, learned, f"{target}.learned.1", half, 3, stride=2, pad=1)
        x = b.concat([reused, learned], name=name)
        sources.append(name)
    normalize = [f"backbone.source_norms.{i}" for i in range(len(sources))]
    return sources, normalize


# ---------------------------------------------------------------- ResNet-101 SSD513 / DSSD513
# (chengyangfu/caffe dssd branch: model_libs.py, ssd_coco_resnet_513.py,
# ssd_coco_resnet_deconv_513.py). ``ConvBNLayer``: bias-free conv, BatchNorm (eps 0.001) and
# Scale in place, optional ReLU named <conv>_relu.
def _conv_bn(
    b: _Builder,
    x,
    name,
    target,
    out,
    k,
    pad,
    stride,
    relu,
    dilation=1,
    bn_name=None,
    scale_name=None,
):
    conv_params = _bias_free_conv(out, k, pad, stride, _GAUSSIAN)
    if dilation > 1:
        conv_params.append(("dilation", dilation))
    b.conv(
        x,
        conv_params,
        name=name,
        params=[("param", [("lr_mult", 1), ("decay_mult", 1)])],
        target=target,
    )
    b.batch_norm(name, f"{target}.norm", eps=0.001, name=bn_name or f"{name}_bn", in_place=True)
    b.scale(name, f"{target}.norm", name=scale_name or f"{name}_scale", lr_params=True)
    if relu:
        b.relu(name, name=f"{name}_relu")
    return name


def _res_body(b: _Builder, x, block, target, block_module):
    """ResBody: branch1 (projection, when the block has one), branch2a/b/c, Eltwise, ReLU;
    kernels, strides, paddings and dilations read from our block's convs."""

    def layer(part, module_name, src, relu):
        conv = getattr(block_module, module_name)
        return _conv_bn(
            b,
            src,
            f"res{block}_{part}",
            f"{target}.{module_name}",
            conv.out_channels,
            conv.kernel_size[0],
            conv.padding[0],
            conv.stride[0],
            relu,
            dilation=conv.dilation[0],
            bn_name=f"bn{block}_{part}",
            scale_name=f"scale{block}_{part}",
        )

    shortcut = layer("branch1", "shortcut", x, False) if block_module.shortcut is not None else x
    y = layer("branch2a", "conv1", x, True)
    y = layer("branch2b", "conv2", y, True)
    y = layer("branch2c", "conv3", y, False)
    out = b.add("Eltwise", [shortcut, y], name=f"res{block}")
    b.relu(out, name=f"res{block}_relu")
    return out


def _resnet_ssd(b: _Builder, cfg, model):
    from detectron2.modeling import build_backbone

    backbone = model.backbone if model is not None else build_backbone(cfg)
    dssd = cfg.MODEL.BACKBONE.NAME == "build_dssd_backbone"
    bottom_up = backbone.bottom_up if dssd else backbone
    prefix = "backbone.bottom_up" if dssd else "backbone"
    if cfg.MODEL.RESNETS.DEPTH != 101 or not cfg.MODEL.RESNETS.STRIDE_IN_1X1:
        raise ValueError("The Caffe DSSD/SSD513 is a ResNet-101 with strides in the 1x1 convs")
    x = _conv_bn(
        b,
        "data",
        "conv1",
        f"{prefix}.stem.conv1",
        64,
        7,
        3,
        2,
        True,
        bn_name="bn_conv1",
        scale_name="scale_conv1",
    )
    x = b.max_pool(x, 3, 2, name="pool1")
    tops = {}
    for stage_index, stage in enumerate(bottom_up.stage_names, start=2):
        blocks = list(getattr(bottom_up, stage).children())
        for i, block in enumerate(blocks):
            if len(blocks) > 3:
                letter = "a" if i == 0 else f"b{i}"
            else:
                letter = "abc"[i]
            x = _res_body(b, x, f"{stage_index}{letter}", f"{prefix}.{stage}.{i}", block)
        tops[stage] = (x, f"{x}_relu")
    for name in bottom_up.extra_names:
        x = _res_body(b, x, name[3:], f"{prefix}.{name}", getattr(bottom_up, name))
        tops[name] = (x, f"{x}_relu")

    sources = []  # (top, name used in the layer names)
    if dssd:
        features = list(cfg.MODEL.DSSD.IN_FEATURES)
        coarse = features[-1]
        top = tops[coarse][0]
        decoded = {}
        for fine in features[-2::-1]:
            module = getattr(backbone, f"deconv_{fine}")
            number = fine[3:] if fine in bottom_up.extra_names else fine[3]
            deconv = module.deconv
            stride = deconv.stride[0]
            if tuple(deconv.kernel_size) == (2, 2) and tops[coarse][0] == tops[features[-1]][0]:
                stride = 1  # 1x1 -> 2x2: the official 2x2 stride 1 (the same with stride 2)
            deconv_params: Message = [
                ("num_output", deconv.out_channels),
                ("kernel_size", deconv.kernel_size[0]),
                ("pad", deconv.padding[0]),
                ("stride", stride),
                ("dilation", 1),
                ("weight_filler", [("type", "xavier")]),
                ("bias_filler", [("type", "constant"), ("value", 0)]),
            ]
            name = f"deconv_{number}"
            b.add(
                "Deconvolution",
                top,
                list(_SSD_CONV_PARAMS) + [("convolution_param", deconv_params)],
                name=name,
                target=f"backbone.deconv_{fine}.deconv",
                kind="deconv",
            )
            fine_top, fine_name = tops[fine]
            target = f"backbone.deconv_{fine}"
            width = module.top_conv.out_channels
            pre1 = _conv_bn(
                b, fine_top, f"{fine_name}_pre1", f"{target}.lateral_conv1", width, 3, 1, 1, True
            )
            pre2 = _conv_bn(
                b, pre1, f"{fine_name}_pre2", f"{target}.lateral_conv2", width, 3, 1, 1, False
            )
            pre = _conv_bn(b, name, f"{name}_pre", f"{target}.top_conv", width, 3, 1, 1, False)
            operation = "PROD" if module.combine == "prod" else "SUM"
            combined = b.add(
                "Eltwise",
                [pre, pre2],
                [("eltwise_param", [("operation", Enum(operation))])],
                name=f"combined_{number}_Eltwise{operation}",
            )
            top = b.relu(combined, name=f"{combined}_relu", in_place=False)
            decoded[fine] = top
            coarse = fine
        for feature in features:
            if feature in decoded:
                sources.append((decoded[feature], decoded[feature]))
            else:
                sources.append((tops[feature][0], tops[feature][1]))
    else:
        for feature in cfg.MODEL.SSD.IN_FEATURES:
            sources.append(tops[feature])
    return sources


def _resnet_multibox(b: _Builder, cfg, model, sources):
    """CreateMultiBoxHead (prediction module (c) per source: ResBody named res<source>_inter<d>)
    then CreateMultiBoxOutput (optional 3x3 conv + BN + ReLU, then loc / conf convs and PriorBox
    per source; Permute + Flatten after all of them)."""
    dssd = cfg.MODEL.BACKBONE.NAME == "build_dssd_backbone"
    head = model.head
    if cfg.MODEL.SSD_HEAD.PREDICTION_MODULE != "residual_projection":
        raise ValueError(
            "The Caffe SSD513/DSSD513 use MODEL.SSD_HEAD.PREDICTION_MODULE " "'residual_projection'"
        )
    outputs = []
    for level, (top, name) in enumerate(sources):
        module = head.prediction_modules[level]
        inter = f"{name}_inter{module.conv1.out_channels}"
        out = _res_body(b, top, inter, f"head.prediction_modules.{level}", module)
        outputs.append(out)
    postfix = "new" if dssd else ""
    num_classes = cfg.MODEL.SSD.NUM_CLASSES + 1
    kernels = cfg.MODEL.SSD_HEAD.KERNEL_SIZES or [cfg.MODEL.SSD_HEAD.KERNEL_SIZE] * len(sources)
    anchors = cfg.MODEL.ANCHOR_GENERATOR
    locs, confs, priors = [], [], []
    for level, source in enumerate(outputs):
        k = kernels[level]
        count = _num_priors(cfg, level)
        for what, channels, predictors, names in (
            ("loc", count * 4, head.bbox_pred, locs),
            ("conf", count * num_classes, head.cls_score, confs),
        ):
            name = f"{source}_mbox_{what}{postfix}"
            target = f"head.{'cls_score' if what == 'conf' else 'bbox_pred'}.{level}"
            x = source
            if isinstance(predictors[level], nn.Sequential):
                inter = predictors[level][0]
                x = _conv_bn(
                    b, source, f"{name}_inter", f"{target}.0", inter.out_channels, 3, 1, 1, True
                )
                target = f"{target}.1"
            b.conv(
                x,
                _xavier_conv(channels, k, k // 2, 1),
                name=name,
                target=target,
                classes=num_classes if what == "conf" else 0,
            )
            names.append(name)
        offset = anchors.OFFSETS[level] if anchors.OFFSETS else anchors.OFFSET
        step = _step_value(anchors.STEPS[level])
        priors.append(
            b.add(
                "PriorBox",
                [source, "data"],
                [("prior_box_param", _prior_box_params(cfg, level, step, offset))],
                name=f"{source}_mbox_priorbox",
            )
        )
    for what, names in (("loc", locs), ("conf", confs)):
        flats = []
        for name in names:
            b.add(
                "Permute",
                name,
                [("permute_param", [("order", o) for o in (0, 2, 3, 1)])],
                name=f"{name}_perm",
            )
            flats.append(
                b.add(
                    "Flatten",
                    f"{name}_perm",
                    [("flatten_param", [("axis", 1)])],
                    name=f"{name}_flat",
                )
            )
        b.concat(flats, name=f"mbox_{what}")
    b.concat(priors, axis=2, name="mbox_priorbox")


_BODIES = {"build_vgg_ssd_backbone": (_vgg_ssd, False), "build_dsod_backbone": (_dsod, True)}
_RESNET_BODIES = ("build_resnet_ssd_backbone", "build_dssd_backbone")


def deploy_net(
    cfg,
    name: str = "",
    confidence_threshold: Optional[float] = None,
    label_map_file: str = "",
    model=None,
) -> Net:
    """The Caffe deploy net of the model ``cfg`` builds, as the official generator writes it.

    ``confidence_threshold`` defaults to MODEL.SSD.SCORE_THRESH_TEST (the released SSD deploy
    files say 0.5, their test nets 0.01). Raises for an architecture the official code does not
    have (see docs/pretrained_weights_caffe.md)."""
    backbone = cfg.MODEL.BACKBONE.NAME
    b = _Builder()
    if backbone in _RESNET_BODIES:
        if model is None:
            from detectron2.modeling import build_model

            model = build_model(cfg)
        _resnet_multibox(b, cfg, model, _resnet_ssd(b, cfg, model))
    elif backbone in _BODIES:
        body, conv_bn = _BODIES[backbone]
        sources, normalize = body(b, cfg)
        if len(sources) != len(cfg.MODEL.ANCHOR_GENERATOR.STEPS):
            raise ValueError("MODEL.ANCHOR_GENERATOR.STEPS needs one step per source for Caffe")
        _multibox_head(b, cfg, sources, normalize, conv_bn)
    else:
        raise ValueError(
            f"No Caffe deploy net for MODEL.BACKBONE.NAME={backbone!r}; supported: "
            f"{sorted(_BODIES) + list(_RESNET_BODIES)}"
        )
    if confidence_threshold is None:
        confidence_threshold = cfg.MODEL.SSD.SCORE_THRESH_TEST
    _detection_output(b, cfg, confidence_threshold, label_map_file)
    size = cfg.INPUT.FIXED_SIZE
    return Net(name or f"{backbone}_{size}_deploy", (size, size), b.layers)


def prior_box_settings(layer: Layer) -> Dict[str, object]:
    """min/max sizes (truncated to integers as prior_box_layer.cpp does), aspect ratios, flip,
    clip, variances, step and offset of a PriorBox layer."""
    params = get(layer.params, "prior_box_param", [])
    return {
        "min_size": [math.trunc(v) for v in get_all(params, "min_size")],
        "max_size": [math.trunc(v) for v in get_all(params, "max_size")],
        "aspect_ratio": [float(v) for v in get_all(params, "aspect_ratio")],
        "flip": get(params, "flip", True),
        "clip": get(params, "clip", False),
        "variance": [float(v) for v in get_all(params, "variance")] or [0.1],
        "step": float(get(params, "step", 0.0)),
        "offset": float(get(params, "offset", 0.5)),
    }
