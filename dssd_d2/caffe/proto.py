"""A minimal reader and writer of Caffe's binary ``.caffemodel`` (protobuf wire format).

Only what a weight converter needs of ``caffe.proto`` (BVLC Caffe and its SSD/DSSD forks agree on
these field numbers): NetParameter ``layer`` = 100 (LayerParameter: ``name`` = 1, ``type`` = 2,
``blobs`` = 7) and the old V1 ``layers`` = 2 (V1LayerParameter: ``name`` = 4, ``type`` = 5 as an
enum, ``blobs`` = 6); BlobProto ``shape`` = 7 (BlobShape ``dim`` = 1), ``data`` = 5,
``double_data`` = 8 and the legacy 4-D ``num``/``channels``/``height``/``width`` = 1-4. Every
other field (layer parameters, the forks' own ids) is skipped, so no Caffe install and no
compiled ``caffe_pb2`` are needed.
"""

from dataclasses import dataclass, field
from typing import Iterator, List, Tuple

import numpy as np

__all__ = ["CaffeLayer", "read_caffemodel", "write_caffemodel", "V1_LAYER_TYPES"]

# V1LayerParameter.LayerType values of the layers that carry weights, by their V2 type name.
V1_LAYER_TYPES = {4: "Convolution", 39: "Deconvolution", 14: "InnerProduct"}

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


@dataclass
class CaffeLayer:
    """One layer of a caffemodel: its name, type and weight blobs (float32 arrays)."""

    name: str
    type: str
    blobs: List[np.ndarray] = field(default_factory=list)


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[Tuple[int, int, object]]:
    """(field number, wire type, value) of one message; a length-delimited value is bytes."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _FIXED64:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == _FIXED32:
            value, pos = buf[pos : pos + 4], pos + 4
        elif wire == _BYTES:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {number})")
        yield number, wire, value
    if pos != end:
        raise ValueError("truncated protobuf message")


def _packed_varints(value) -> List[int]:
    if isinstance(value, int):
        return [value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v - (1 << 64) if v >= 1 << 63 else v)  # int64
    return out


def _read_blob(buf: bytes) -> np.ndarray:
    shape, legacy = None, {}
    floats, doubles = [], []
    for number, wire, value in _fields(buf):
        if number == 7:
            shape = [d for n, _, v in _fields(value) if n == 1 for d in _packed_varints(v)]
        elif number == 5:
            floats.append(np.frombuffer(value, "<f4"))
        elif number == 8:
            doubles.append(np.frombuffer(value, "<f8"))
        elif number in (1, 2, 3, 4) and wire == _VARINT:
            legacy[number] = value
    data = np.concatenate(floats or doubles or [np.zeros(0, "<f4")]).astype(np.float32)
    if shape is None:  # legacy 4-D blob
        shape = [legacy.get(i, 0) for i in (1, 2, 3, 4)]
        if np.prod(shape) != data.size:  # e.g. a bias saved as (1, 1, 1, C)
            shape = [data.size]
    if int(np.prod(shape)) != data.size:
        raise ValueError(f"a blob of shape {shape} holds {data.size} values")
    return data.reshape(shape)


def _read_layer(buf: bytes, v1: bool) -> CaffeLayer:
    name_id, type_id, blobs_id = (4, 5, 6) if v1 else (1, 2, 7)
    layer = CaffeLayer("", "")
    for number, _, value in _fields(buf):
        if number == name_id:
            layer.name = value.decode()
        elif number == type_id:
            layer.type = V1_LAYER_TYPES.get(value, f"V1:{value}") if v1 else value.decode()
        elif number == blobs_id:
            layer.blobs.append(_read_blob(value))
    return layer


def read_caffemodel(path: str) -> List[CaffeLayer]:
    """Every layer of a binary ``.caffemodel``, in file order (V2 ``layer`` and V1 ``layers``)."""
    with open(path, "rb") as f:
        buf = f.read()
    try:
        layers = [
            _read_layer(value, v1=(number == 2))
            for number, wire, value in _fields(buf)
            if number in (2, 100) and wire == _BYTES
        ]
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a Caffe NetParameter (.caffemodel): {e}") from e
    if not layers:
        raise ValueError(f"{path} holds no Caffe layers; is it a .caffemodel?")
    return layers


def _key(number: int, wire: int) -> bytes:
    return _encode_varint(number << 3 | wire)


def _encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _key(number, _BYTES) + _encode_varint(len(payload)) + payload


def _blob_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype="<f4")
    dims = b"".join(_encode_varint(d) for d in array.shape)
    shape = _bytes_field(1, dims)
    return _bytes_field(7, shape) + _bytes_field(5, array.tobytes())


def write_caffemodel(path: str, layers: List[CaffeLayer], name: str = ""):
    """Write ``layers`` as a V2 NetParameter (name, type and float blobs of each layer)."""
    out = bytearray(_bytes_field(1, name.encode()) if name else b"")
    for layer in layers:
        payload = _bytes_field(1, layer.name.encode()) + _bytes_field(2, layer.type.encode())
        payload += b"".join(_bytes_field(7, _blob_bytes(blob)) for blob in layer.blobs)
        out += _bytes_field(100, payload)
    with open(path, "wb") as f:
        f.write(bytes(out))
