"""Small ONNX models written as protobuf bytes, without the ``onnx`` package.

The built-in models run their convolutions through ONNX Runtime (about twice PyTorch's speed on two
CPU threads, and no PyTorch import). Their weights ship once, as an ``.npz`` that PyTorch also
loads; the ONNX graphs around them are tiny and written here at load time. Importing ``onnx`` to
build them would cost 0.8 s of every prediction's start-up; the wire format is simple enough to write:
a message is a sequence of (field number, wire type) keys followed by a varint or a length-prefixed
payload (https://protobuf.dev/programming-guides/encoding/). Field numbers are those of
``onnx/onnx.proto`` (IR version 8). ``tests/test_builtin_network.py`` parses the bytes with the
``onnx`` package and runs its checker.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_VARINT, _BYTES, _FIXED32 = 0, 2, 5
FLOAT, INT64 = 1, 7  # TensorProto.DataType
_ATTR_FLOAT, _ATTR_INT, _ATTR_INTS = 1, 2, 7  # AttributeProto.AttributeType
IR_VERSION = 8
OPSET = 17


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # two's complement, as protobuf encodes negative int64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _int(field: int, value: int) -> bytes:
    return _key(field, _VARINT) + _varint(int(value))


def _bytes(field: int, payload: bytes) -> bytes:
    return _key(field, _BYTES) + _varint(len(payload)) + payload


def _str(field: int, text: str) -> bytes:
    return _bytes(field, text.encode("utf-8"))


def attribute(name: str, value: int | float | Sequence[int]) -> bytes:
    """AttributeProto: name=1, f=2, i=3, ints=8, type=20."""
    out = _str(1, name)
    if isinstance(value, float):
        out += _key(2, _FIXED32) + np.float32(value).tobytes() + _int(20, _ATTR_FLOAT)
    elif isinstance(value, (int, np.integer)):
        out += _int(3, int(value)) + _int(20, _ATTR_INT)
    else:
        out += b"".join(_int(8, int(v)) for v in value) + _int(20, _ATTR_INTS)
    return out


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], **attributes) -> bytes:
    """NodeProto: input=1, output=2, name=3, op_type=4, attribute=5."""
    out = b"".join(_str(1, name) for name in inputs) + b"".join(_str(2, name) for name in outputs)
    out += _str(3, outputs[0]) + _str(4, op_type)
    return out + b"".join(_bytes(5, attribute(key, value)) for key, value in attributes.items())


def tensor(name: str, array: np.ndarray) -> bytes:
    """TensorProto of float32 or int64 data: dims=1, data_type=2, name=8, raw_data=9 (little-endian)."""
    integer = np.issubdtype(np.asarray(array).dtype, np.integer)
    array = np.ascontiguousarray(array, dtype="<i8" if integer else "<f4")
    return (b"".join(_int(1, d) for d in array.shape) + _int(2, INT64 if integer else FLOAT) + _str(8, name)
            + _bytes(9, array.tobytes()))


def value_info(name: str, dims: Sequence[int | str], elem_type: int = FLOAT) -> bytes:
    """ValueInfoProto(name=1, type=2 TypeProto(tensor_type=1 (elem_type=1, shape=2 (dim=1 ...))))."""
    shape = b"".join(_bytes(1, _int(1, d) if isinstance(d, int) else _str(2, d)) for d in dims)
    tensor_type = _int(1, elem_type) + _bytes(2, shape)
    return _str(1, name) + _bytes(2, _bytes(1, tensor_type))


def model(nodes: Sequence[bytes], inputs: Sequence[bytes], outputs: Sequence[bytes],
          initializers: Sequence[bytes], name: str = "liverseg") -> bytes:
    """ModelProto: ir_version=1, producer_name=2, graph=7 (node=1, name=2, initializer=5, input=11,
    output=12), opset_import=8 (domain=1, version=2)."""
    graph = (b"".join(_bytes(1, n) for n in nodes) + _str(2, name)
             + b"".join(_bytes(5, t) for t in initializers)
             + b"".join(_bytes(11, i) for i in inputs) + b"".join(_bytes(12, o) for o in outputs))
    return (_int(1, IR_VERSION) + _str(2, "liverseg") + _bytes(7, graph)
            + _bytes(8, _str(1, "") + _int(2, OPSET)))


DOUBLE = 11  # TensorProto.DataType.DOUBLE


def conv_model(weight: np.ndarray, bias: np.ndarray, pads: Sequence[int] | None = None, *,
               prenorm: bool = False, masked: bool = False, slices: int = 0, moments: bool = False,
               pool: int = 0) -> bytes:
    """One convolution ``x -> y`` with these weights (out, in, *kernel), and what goes with it.

    ``pads`` as ONNX lists them (all starts, then all ends; default none: 'valid'). ``prenorm``: the
    input is first normalised per channel, ``(x - mean) * scale`` (inputs ``mean``, ``scale``, shaped to
    broadcast), and passed through LeakyReLU(0.01), as the KU Leuven networks do before a convolution;
    ``masked``: then multiplied by ``mask`` (zero where the input lies outside the feature map, so that
    it acts as the convolution's zero padding). ``slices`` > 0: ``x`` is (N, C, slices, X, Y) and the
    weight a 2D one over (channel, slice) pairs (``runtime.ConvBank``'s "@2d" variant): the 5D input is normalised, then
    reshaped to (N, C * slices, X, Y) for the 2D convolution (that shape is the int64 input ``shape``).
    ``moments``: also outputs ``sum`` and ``sumsq``, the sum and sum of squares of ``y`` along its last
    axis (float32 sums of a few hundred values; the caller adds them up in float64 for the next norm's
    statistics: a float64 copy of a large output in the graph would double its memory). ``pool``: also outputs ``pooled``, ``y`` max-pooled by
    ``pool`` (kernel = stride).
    """
    dims = weight.ndim - 2
    nodes, inits = [], [tensor("w", weight), tensor("b", bias)]
    in_dims = ["n", int(weight.shape[1]) // max(slices, 1), *([slices] if slices else []),
               *[f"s{i}" for i in range(dims)]]
    inputs = [value_info("x", in_dims)]
    current = "x"
    if prenorm:
        norm_dims = [1, in_dims[1]] + [1] * (len(in_dims) - 2)
        inputs += [value_info("mean", norm_dims), value_info("scale", norm_dims)]
        nodes += [node("Sub", ["x", "mean"], ["centred"]), node("Mul", ["centred", "scale"], ["scaled"]),
                  node("LeakyRelu", ["scaled"], ["act"], alpha=0.01)]
        current = "act"
        if masked:
            inputs.append(value_info("mask", ["m", 1, *[f"m{i}" for i in range(len(in_dims) - 2)]]))
            nodes.append(node("Mul", ["act", "mask"], ["masked"]))
            current = "masked"
    if slices:
        inputs.append(value_info("shape", [4], INT64))
        nodes.append(node("Reshape", [current, "shape"], ["flat"]))
        current = "flat"
    attributes = {"kernel_shape": list(weight.shape[2:])}
    if pads is not None and any(pads):
        attributes["pads"] = list(pads)
    nodes.append(node("Conv", [current, "w", "b"], ["y"], **attributes))
    out_spatial = [f"o{i}" for i in range(dims)]
    outputs = [value_info("y", ["n", int(weight.shape[0]), *out_spatial])]
    if moments:  # sums along the last axis only, in float32; the caller adds them up in float64
        inits.append(tensor("axes", np.array([dims + 1], dtype=np.int64)))
        nodes += [node("ReduceSum", ["y", "axes"], ["sum"], keepdims=0),
                  node("ReduceSumSquare", ["y"], ["sumsq"], axes=[dims + 1], keepdims=0)]  # opset 17: an attribute
        partial = ["n", int(weight.shape[0]), *out_spatial[:-1]]
        outputs += [value_info("sum", partial), value_info("sumsq", partial)]
    if pool:
        nodes.append(node("MaxPool", ["y"], ["pooled"], kernel_shape=[pool] * dims, strides=[pool] * dims))
        outputs.append(value_info("pooled", ["n", int(weight.shape[0]), *[f"p{i}" for i in range(dims)]]))
    return model(nodes, inputs, outputs, inits)


__all__ = ["conv_model", "model", "node", "tensor", "value_info", "attribute"]
