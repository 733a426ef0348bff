"""Running a built-in KU Leuven network on CPU: one ONNX Runtime session per convolution.

``ConvBank`` writes each convolution's ONNX graph from the shipped ``.npz`` (``onnx_proto``), with
the original's norm and LeakyReLU in front when asked, and creates the session on first use. It is
the ``conv`` callable of ``staged.StagedPatch``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from .onnx_proto import conv_model
from .patch_maps import Stats

EPSILON = np.float32(1e-7)  # Keras' K.epsilon(), added to the std by the original's norm


class ConvBank:
    """``bank(name, x, same=False, norm=None, mask=None)``: a convolution of ``weights`` on a batch.

    ``name`` is a parameter prefix (``down.0.1``); ``name@2d`` is the same 3D convolution as a 2D one
    over (channel, slice) pairs, fed (N, C, K, X, Y) with K the kernel's depth. ``norm`` = (mean, std)
    per input channel: ``LeakyReLU((x - mean) / (std + 1e-7))`` first; ``mask`` (broadcast over
    channels) then zeroes inputs outside the feature map. ``same``: zero padding by half the kernel.
    """

    def __init__(self, weights: dict[str, np.ndarray], threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise InputError("the built-in models need onnxruntime: pip install onnxruntime") from None
        self._ort = ort
        self.weights = weights
        self.options = ort.SessionOptions()
        self.options.intra_op_num_threads = int(threads or 0)  # 0: ONNX Runtime's default, one per core
        self.options.inter_op_num_threads = 1
        self.options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.options.log_severity_level = 3
        # Without this every session keeps an arena as large as its largest call: 20 sessions held
        # 4.5 GB on a 512x512x119 CT instead of 1.4 GB, and allocation was no faster.
        self.options.enable_cpu_mem_arena = False
        # Idle ONNX Runtime threads sleep instead of spinning between convolutions: the numpy work between
        # them (and the thread assembling the next batch) gets the cores; 0.5 s faster per 512x512x119 CT.
        self.options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._sessions: dict[tuple, object] = {}

    def _session(self, name: str, same: bool, prenorm: bool, masked: bool, moments: bool, pool: int):
        key = (name, same, prenorm, masked, moments, pool)
        if key not in self._sessions:
            base, _, variant = name.partition("@")
            weight = self.weights[f"{base}.conv.weight"]
            slices = 0
            if variant == "2d":  # (O, I, kx, ky, kz) -> (O, I * kz, kx, ky), input channel order (i, kz)
                o, i, kx, ky, slices = weight.shape
                weight = np.ascontiguousarray(np.moveaxis(weight, 4, 2)).reshape(o, i * slices, kx, ky)
            pads = None
            if same:
                half = [k // 2 for k in weight.shape[2:]]
                pads = half + half
            data = conv_model(weight, self.weights[f"{base}.conv.bias"], pads, prenorm=prenorm,
                                         masked=masked, slices=slices, moments=moments, pool=pool)
            self._sessions[key] = self._ort.InferenceSession(data, self.options, providers=["CPUExecutionProvider"])
        return self._sessions[key]

    def __call__(self, name: str, x: np.ndarray, same: bool = False, norm: Stats | None = None,
                 mask: np.ndarray | None = None, moments: bool = False, per_sample: bool = False, pool: int = 0):
        """The convolution's output; ``(output, extras)`` when ``moments`` or ``pool`` ask for more
        (extras: ``sum`` and ``sumsq`` float64 per channel, per sample too with ``per_sample``; ``pooled``)."""
        session = self._session(name, same, norm is not None, mask is not None, moments, pool)
        feed = {"x": np.ascontiguousarray(x, dtype=np.float32)}
        if norm is not None:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            mean, std = norm
            feed["mean"] = np.asarray(mean, dtype=np.float32).reshape(shape)
            feed["scale"] = (np.float32(1.0) / (np.asarray(std, dtype=np.float32) + EPSILON)).reshape(shape)
        if mask is not None:
            feed["mask"] = np.ascontiguousarray(mask, dtype=np.float32)
        if name.endswith("@2d"):
            n, c, k = x.shape[:3]
            feed["shape"] = np.array([n, c * k, *x.shape[3:]], dtype=np.int64)
        outputs = session.run(None, feed)
        if not moments and not pool:
            return outputs[0]
        extras = {}
        rest = list(outputs[1:])
        if moments:  # float32 partial sums along the last axis -> float64 per channel (per sample)
            axes = tuple(range(2, outputs[0].ndim - 1)) if per_sample else (0,) + tuple(range(2, outputs[0].ndim - 1))
            extras["sum"] = rest.pop(0).sum(axis=axes, dtype=np.float64)
            extras["sumsq"] = rest.pop(0).sum(axis=axes, dtype=np.float64)
        if pool:
            extras["pooled"] = rest.pop(0)
        return outputs[0], extras


def foreground_probability(logits: np.ndarray) -> np.ndarray:
    """Sigmoid of a single logit channel (the original's output); the last class's softmax otherwise."""
    if logits.shape[0] == 1:
        out = np.negative(logits[0], dtype=np.float32)
        np.exp(out, out=out)
        out += 1.0
        np.reciprocal(out, out=out)
        return out
    z = logits - logits.max(axis=0, keepdims=True)
    e = np.exp(z)
    return (e[-1] / e.sum(axis=0)).astype(np.float32)


def sampled_roi(sampled_z: np.ndarray, sampled_probability: np.ndarray, shape: Sequence[int], stride: int,
                margin: Sequence[int] = (4, 4, 0), threshold: float = 0.5) -> tuple[slice, slice, slice] | None:
    """The box worth computing exactly: the largest structure on the sampled slices above ``threshold``
    (sampled slices next to each other count as touching), grown by ``margin`` in-plane and by a stride
    plus ``margin[2]`` along S, within ``shape``; None when nothing is found."""
    from scipy import ndimage

    found = sampled_probability >= threshold
    if not found.any():
        return None
    components, count = ndimage.label(found, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    box = ndimage.find_objects((components == sizes.argmax()).astype(np.uint8))[0]
    zs = sampled_z[box[2]]
    out = [slice(b.start - m, b.stop + m) for b, m in zip(box[:2], margin[:2])]
    out.append(slice(int(zs.min()) - stride - margin[2], int(zs.max()) + stride + 1 + margin[2]))
    return tuple(slice(max(0, s.start), min(n, s.stop)) for s, n in zip(out, shape))  # type: ignore[return-value]


__all__ = ["ConvBank", "foreground_probability", "sampled_roi"]
