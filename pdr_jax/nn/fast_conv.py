"""CPU fast paths for the convolutions of `pdr_jax.nn.layers`, chosen by backend at trace time.

Two things are slow on XLA:CPU (jaxlib 0.10, YNNPACK convolutions), measured on a DDPM++
training step at 64x64 (see tools/bench.py):

* The weight gradient of a convolution with 128 or more output channels on a large image:
  XLA emits it as one convolution over the batch with an HxW window, which YNNPACK runs at a
  fraction of its speed (128->128 channels at 64x64: 3x slower than the forward conv; at
  128x128: 7x). The same gradient computed for 64 output channels at a time runs at full speed,
  so `conv` has a custom VJP whose weight gradient is split that way. Its input gradient and
  forward pass are XLA's own.
* A grouped (depthwise) convolution, and above all its lhs-dilated transpose (EDM's `up`
  resampling and the gradient of `down`), falls back to a generic loop: ~16% of that step for
  few FLOPs. EDM's resampling filters are separable, outer(f, f) / sum(f)^2, so on CPU the
  depthwise filter runs as two 1-D passes of shifted, strided slices (pad, slice, multiply, add):
  XLA fuses them into one elementwise loop each, and their gradients are the same cheap ops.

On GPU/TPU nothing here is used (`on_cpu()` is False), so those paths keep the plain
`lax.conv_general_dilated`. Results equal the convolution up to float rounding (the 2-D weights
are applied as products of the 1-D taps); tests/nn/test_fast_conv.py checks values and gradients.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Output channels per weight-gradient convolution (64 ran fastest from 32..128 on a Zen 4 CPU).
WEIGHT_GRAD_CHUNK = 64


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


def plain_conv(x, w, padding: int):
    """Stride-1 correlation, x [B, H, W, I], w [kh, kw, I, O], symmetric zero padding."""
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=(1, 1),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv(x, w, padding: int):
    """`plain_conv` with a weight gradient computed WEIGHT_GRAD_CHUNK output channels at a time."""
    return plain_conv(x, w, padding)


def _conv_fwd(x, w, padding):
    return plain_conv(x, w, padding), (x, w)


def _conv_bwd(padding, residuals, g):
    x, w = residuals
    # Input gradient: XLA's transpose of the conv (a conv of g with the flipped kernel).
    _, vjp_x = jax.vjp(lambda x_: plain_conv(x_, w, padding), x)
    (dx,) = vjp_x(g)
    # Weight gradient, per chunk of output channels (each chunk's own transpose rule).
    dw = []
    for start in range(0, w.shape[-1], WEIGHT_GRAD_CHUNK):
        stop = min(start + WEIGHT_GRAD_CHUNK, w.shape[-1])
        _, vjp_w = jax.vjp(lambda w_: plain_conv(x, w_, padding), w[..., start:stop])
        dw.append(vjp_w(g[..., start:stop])[0])
    return dx, jnp.concatenate(dw, axis=-1) if len(dw) > 1 else dw[0]


conv.defvjp(_conv_fwd, _conv_bwd)
