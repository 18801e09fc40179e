"""CPU fast paths for `pdr_jax.nn.layers`, chosen by backend at trace time.

A grouped (depthwise) convolution, and above all its lhs-dilated transpose (EDM's `up`
resampling and the gradient of `down`), falls back to a generic loop on XLA:CPU: ~16% of a
DDPM++ training step at 64x64 for few FLOPs (tools/bench.py). EDM's resampling filters are
separable, outer(f, f) / sum(f)^2, so on CPU the depthwise filter runs as two 1-D passes of
shifted, strided slices (pad, slice, multiply, add): XLA fuses them into one elementwise loop
each, and their gradients are the same cheap ops. (GroupNorm's CPU path is in layers.py; the
dense convolutions go to oneDNN, `pdr_jax.nn.onednn`, or with XLA's convolutions to the
multi-threaded kernels chosen by `pdr_jax.backend`'s compiler options.)

On GPU/TPU nothing here is used (`on_cpu()` is False), so resampling keeps the grouped
`lax.conv_general_dilated`. Results equal it up to float rounding (the 2-D weights are applied
as products of the 1-D taps); tests/nn/test_fast_conv.py checks values and gradients.
"""

from __future__ import annotations

import jax
import numpy as np
from jax import lax


def on_cpu() -> bool:
    """Whether jit traces for the CPU backend now (the default backend; read at trace time)."""
    return jax.default_backend() == "cpu"


def separable_taps(kernel2d: np.ndarray) -> np.ndarray | None:
    """1-D taps t with outer(t, t) == kernel2d, or None if the [K, K] filter is not of that form."""
    kernel2d = np.asarray(kernel2d, np.float64)
    taps = kernel2d.sum(axis=1) / np.sqrt(kernel2d.sum())
    if kernel2d.sum() <= 0 or not np.allclose(np.outer(taps, taps), kernel2d, rtol=1e-6, atol=0):
        return None
    return taps


def _filter_axis(x, taps: np.ndarray, axis: int, *, stride: int, padding: int, lhs_dilation: int):
    """1-D correlation of x with `taps` along `axis`, as lax.conv_general_dilated would do it.

    The conv's lhs dilation and padding are lax.pad's interior and edge padding; then output
    n = sum_k taps[k] * padded[n * stride + k].
    """
    config = [(0, 0, 0)] * x.ndim
    config[axis] = (padding, padding, lhs_dilation - 1)
    padded = lax.pad(x, np.zeros((), x.dtype), config)
    size = (padded.shape[axis] - len(taps)) // stride + 1
    out = None
    for k, tap in enumerate(taps):
        part = lax.slice_in_dim(padded, k, k + (size - 1) * stride + 1, stride=stride, axis=axis)
        part = part * np.asarray(tap, x.dtype)
        out = part if out is None else out + part
    return out


def separable_depthwise(x, taps: np.ndarray, *, stride: int, padding: int, lhs_dilation: int = 1):
    """x [B, H, W, C] correlated per channel with outer(taps, taps): H pass, then W pass.

    Same arguments and output as a depthwise `lax.conv_general_dilated` with that [K, K] kernel
    (window stride, symmetric padding, lhs dilation on both spatial axes).
    """
    for axis in (1, 2):
        x = _filter_axis(x, taps, axis, stride=stride, padding=padding, lhs_dilation=lhs_dilation)
    return x
