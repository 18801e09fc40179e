"""CPU formulations of EDM's resampling and GroupNorm, used where `CpuOptions.fast_layers`.

A grouped (depthwise) convolution, and above all its lhs-dilated transpose (EDM's `up`
resampling and the gradient of `down`), falls back to a generic loop on XLA:CPU: ~16% of a
DDPM++ training step at 64x64 for few FLOPs (tools/bench.py). EDM's resampling filters are
separable, outer(f, f) / sum(f)^2, so on CPU the depthwise filter runs as two 1-D passes of
shifted, strided slices (pad, slice, multiply, add): XLA fuses them into one elementwise loop
each, and their gradients are the same cheap ops. GroupNorm runs as one per-(sample, channel)
scale and shift (`group_norm_nhwc`).

On GPU/TPU, and with `pdr_jax.cpu.NONE` (PDR_CPU_CONV=plain), nothing here is used: resampling
keeps the grouped `lax.conv_general_dilated` and GroupNorm its reshape to groups. Results equal
those up to float rounding (tests/test_fast_layers.py checks values and gradients).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


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


def group_norm_nhwc(x, weight, bias, groups: int, eps: float):
    """GroupNorm as one per-(sample, channel) scale and shift of x [B, H, W, C], in float32.

    The same statistics as GroupNorm's, without a transpose to [B, G, H*W*C/G] (on CPU the
    transposes, forward and backward, cost more than the arithmetic). The per-channel sums of
    d = x - k and d^2 over H*W are products with a row of ones, which XLA:CPU runs
    multi-threaded in one pass, where a reduction over the middle axis runs on one core:
    GroupNorm+SiLU at [8, 64, 64, 128] takes 8 ms instead of 14 forward, 16 ms instead of 45
    forward+backward. k, one pixel's group mean, is a shift that keeps E[d^2] - E[d]^2 from
    cancelling when |mean| >> std (mean 30, std 1: max error 1e-5 against float64, 3e-4
    unshifted); the statistics don't depend on k, so it carries no gradient. y = x * a + c
    fuses with what follows (SiLU, the adaptive scale).
    """
    b, h, w, c = x.shape
    x = x.astype(jnp.float32)
    size = c // groups
    per_channel = lambda v: jnp.repeat(v, size, axis=1)  # [B, G] -> [B, C]
    group_sum = lambda v: v.reshape(b, groups, size).sum(axis=-1)  # [B, C] -> [B, G]
    shift_k = jax.lax.stop_gradient(x[:, 0, 0, :].reshape(b, groups, size).mean(axis=-1))
    d = x.reshape(b, h * w, c) - per_channel(shift_k)[:, None, :]
    # ones [B, 1, P] @ d [B, P, C]: a batched GEMM in XLA's canonical layout, no transpose of d.
    column_sum = lambda v: jnp.matmul(jnp.ones((b, 1, h * w), jnp.float32), v)[:, 0]
    count = h * w * size
    mean_d = group_sum(column_sum(d)) / count
    var = group_sum(column_sum(d * d)) / count - jnp.square(mean_d)
    scale = per_channel(jax.lax.rsqrt(jnp.maximum(var, 0.0) + eps)) * weight
    shift = bias - per_channel(shift_k + mean_d) * scale
    return x * scale[:, None, None, :] + shift[:, None, None, :]
