"""Caffe blobs onto our models' state dicts, and back.

The deploy net our config stands for (:func:`~dssd_d2.caffe.prototxt.deploy_net`) says which
module of ours each Caffe layer with weights maps to. The rules, from the official sources:

* Convolution / Deconvolution: weight (and bias) as they are (a Deconvolution blob is
  [C_in, C_out / groups, k, k], ConvTranspose2d's layout).
* BatchNorm: blobs mean * f, variance * f and f (f = 0 means no statistics yet, read as 0);
  its eps is the layer's ``batch_norm_param.eps`` (1e-5 by default; DSOD's and DSSD's
  ``ConvBNLayer`` set 0.001). Ours may have another eps: the variance is stored as
  var + eps_caffe - eps_ours, which gives the same var + eps, so the same output, in eval mode.
* Scale (after BatchNorm): gamma and beta, our BatchNorm's weight and bias.
* Normalize: the per-channel scale, our L2Norm's weight.
* Class scores: Caffe's output channel ``a * C + c`` has background at c = 0, ours at c = C - 1;
  the channels (and a following BatchNorm / Scale) are rotated per prior.
"""

import re
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from .proto import CaffeLayer, read_caffemodel
from .prototxt import Layer, Net, deploy_net, get, net_from_message, parse_prototxt
from .prototxt import prior_box_settings

__all__ = [
    "caffe_to_state_dict",
    "state_dict_to_caffe",
    "class_permutation",
    "check_priors",
    "convert_caffe_files",
    "WEIGHTED_TYPES",
]

WEIGHTED_TYPES = ("Convolution", "Deconvolution", "BatchNorm", "Scale", "Normalize")
_AUTO_NAME = re.compile(r"^[A-Z][A-Za-z]*\d+$")  # NetSpec's automatic names, e.g. Convolution17


def class_permutation(channels: int, num_classes: int) -> np.ndarray:
    """Indices of Caffe's channels in our order: ours[a * C + c] = caffe[a * C + (c + 1) % C]."""
    if channels % num_classes:
        raise ValueError(f"{channels} class channels are not a multiple of {num_classes} classes")
    priors = np.arange(channels // num_classes)[:, None] * num_classes
    return (priors + (np.arange(num_classes) + 1) % num_classes).reshape(-1)


def _bn_eps(layer: Layer) -> float:
    return float(get(get(layer.params, "batch_norm_param", []), "eps", 1e-5))


def _weighted(layers: List[Layer]) -> List[Layer]:
    return [layer for layer in layers if layer.type in WEIGHTED_TYPES]


def caffe_to_state_dict(
    model: nn.Module,
    expected: Net,
    caffe_layers: List[CaffeLayer],
    given: Optional[Net] = None,
    source: str = "caffemodel",
) -> Dict[str, torch.Tensor]:
    """Our state dict from a caffemodel's layers.

    Args:
        model: a model built from the config (for the names, shapes and BatchNorm eps).
        expected: the deploy net of that config (:func:`deploy_net`).
        caffe_layers: the caffemodel's layers (:func:`read_caffemodel`).
        given: the user's deploy.prototxt, if any: its BatchNorm eps are used. Layers with
            weights are matched by name when it has all of the config net's names, else by
            order, checked by type, blob shapes and name except NetSpec's automatic names
            (DSOD's ``Convolution17``).

    Every unmatched layer, leftover blob or shape mismatch is an error naming it.
    """
    blobs = {layer.name: layer for layer in caffe_layers if layer.blobs}
    want = [layer for layer in expected.layers if layer.kind]
    if given is not None:
        have = _weighted(given.layers)
        by_name = {layer.name: layer for layer in have}
        if len(by_name) == len(have) and all(layer.name in by_name for layer in want):
            have = [by_name[layer.name] for layer in want]  # named layers: order is free
        no_blobs = [layer.name for layer in have if layer.name not in blobs]
        if no_blobs:
            raise ValueError(f"{source} has no weights for layers {no_blobs[:5]} of the prototxt")
    else:
        have = [Layer(layer.name, layer.type, [], []) for layer in caffe_layers if layer.blobs]
    if len(have) != len(want):
        extra = [layer.name for layer in have[len(want) :]] or [l.name for l in want[len(have) :]]
        raise ValueError(
            f"{source} has {len(have)} layers with weights, the config's net {len(want)}; the "
            f"first unmatched: {extra[:5]}. Is --config-file the model's config?"
        )
    state = model.state_dict()
    out: Dict[str, torch.Tensor] = {}
    for ours, theirs in zip(want, have):
        where = f"{source} layer {theirs.name!r} ({theirs.type})"
        if theirs.type != ours.type:
            raise ValueError(f"{where} is where the config's net has {ours.type} {ours.name!r}")
        if not _AUTO_NAME.match(ours.name) and ours.name != theirs.name:
            raise ValueError(f"{where} is where the config's net has {ours.name!r}")
        eps = _bn_eps(theirs if given is not None else ours)
        try:
            converted = list(_convert_layer(model, ours, blobs[theirs.name].blobs, eps, where))
        except ValueError as e:
            raise ValueError(f"{where} (for {ours.target}): {e}") from e
        for key, value in converted:
            if key not in state:
                raise KeyError(f"{where} maps to {key}, which the model does not have")
            if tuple(state[key].shape) != tuple(value.shape):
                raise ValueError(
                    f"{where}: blob of shape {tuple(value.shape)} for {key} of shape "
                    f"{tuple(state[key].shape)}"
                )
            if key in out:
                raise ValueError(f"{where} maps to {key} a second time")
            out[key] = value
        del blobs[theirs.name]
    if blobs:
        raise ValueError(f"{source} has weights no layer of the config's net uses: {list(blobs)}")
    missing = [k for k in state if k not in out and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{source} leaves these weights of the model unset: {missing[:10]}")
    return out


def _convert_layer(model, layer: Layer, blobs: List[np.ndarray], eps_caffe: float, where: str):
    def tensor(array):
        array = np.asarray(array, dtype=np.float32)
        if layer.classes:
            array = array[class_permutation(array.shape[0], layer.classes)]
        return torch.from_numpy(np.ascontiguousarray(array))

    counts = {"conv": (1, 2), "deconv": (1, 2), "bn": (2, 3), "scale": (1, 2), "normalize": (1,)}
    if len(blobs) not in counts[layer.kind]:
        raise ValueError(f"{where} has {len(blobs)} blobs; expected {counts[layer.kind]}")
    path = layer.target
    if layer.kind in ("conv", "deconv"):
        yield f"{path}.weight", tensor(blobs[0])
        if len(blobs) == 2:
            yield f"{path}.bias", tensor(blobs[1].reshape(-1))
    elif layer.kind == "bn":
        factor = float(blobs[2].reshape(-1)[0]) if len(blobs) == 3 else 1.0
        factor = 0.0 if factor == 0 else 1.0 / factor
        eps_ours = model.get_submodule(path).eps
        yield f"{path}.running_mean", tensor(blobs[0].reshape(-1) * factor)
        yield f"{path}.running_var", tensor(blobs[1].reshape(-1) * factor + eps_caffe - eps_ours)
    elif layer.kind == "scale":
        yield f"{path}.weight", tensor(blobs[0].reshape(-1))
        yield f"{path}.bias", tensor(blobs[1].reshape(-1))
    elif layer.kind == "normalize":
        scale = blobs[0].reshape(-1)
        channels = model.get_submodule(path).weight.shape[0]
        yield f"{path}.weight", tensor(
            np.broadcast_to(scale, (channels,)) if scale.size == 1 else scale
        )


def state_dict_to_caffe(model: nn.Module, expected: Net) -> List[CaffeLayer]:
    """The caffemodel layers of our model (the inverse of :func:`caffe_to_state_dict`)."""
    state = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    layers = []
    for layer in expected.layers:
        if not layer.kind:
            continue

        def array(key):
            value = state[f"{layer.target}.{key}"]
            if layer.classes:
                value = value[np.argsort(class_permutation(value.shape[0], layer.classes))]
            return value

        if layer.kind in ("conv", "deconv"):
            blobs = [array("weight")]
            if f"{layer.target}.bias" in state:
                blobs.append(array("bias"))
        elif layer.kind == "bn":
            eps_ours = model.get_submodule(layer.target).eps
            var = array("running_var") + eps_ours - _bn_eps(layer)
            blobs = [array("running_mean"), var, np.ones(1, np.float32)]
        elif layer.kind == "scale":
            blobs = [array("weight"), array("bias")]
        else:
            blobs = [array("weight")]
        layers.append(CaffeLayer(layer.name, layer.type, blobs))
    return layers


def check_priors(expected: Net, given: Net, source: str = "deploy.prototxt"):
    """Raise, naming the layer and field, when the user's PriorBox layers (in order) differ
    from the config's (sizes compared after Caffe's truncation to integers)."""
    ours = [layer for layer in expected.layers if layer.type == "PriorBox"]
    theirs = [layer for layer in given.layers if layer.type == "PriorBox"]
    if len(ours) != len(theirs):
        raise ValueError(f"{source} has {len(theirs)} PriorBox layers, the config {len(ours)}")
    for mine, layer in zip(ours, theirs):
        expected_settings, settings = prior_box_settings(mine), prior_box_settings(layer)
        for key, value in settings.items():
            if not np.allclose(value, expected_settings[key], rtol=1e-6, atol=0):
                raise ValueError(
                    f"{source}: PriorBox {layer.name!r} has {key} {value} where the config has "
                    f"{expected_settings[key]} (MODEL.ANCHOR_GENERATOR, INPUT.FIXED_SIZE)"
                )


def convert_caffe_files(cfg, prototxt: str, caffemodel: str) -> Dict[str, torch.Tensor]:
    """Our state dict for ``cfg``'s model from a deploy.prototxt and its .caffemodel."""
    from detectron2.modeling import build_model

    with open(prototxt) as f:
        given = net_from_message(parse_prototxt(f.read(), prototxt), prototxt)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    expected = deploy_net(cfg, model=model)
    size = (cfg.INPUT.FIXED_SIZE,) * 2
    if given.input_size not in (size, (0, 0)):
        raise ValueError(f"{prototxt} takes {given.input_size} inputs, INPUT.FIXED_SIZE {size}")
    check_priors(expected, given, prototxt)
    return caffe_to_state_dict(model, expected, read_caffemodel(caffemodel), given, caffemodel)
