"""EDM's building blocks as flax.linen modules, NHWC.

Parameter names follow EDM's state_dict (``weight``, ``bias``), and every submodule carries
EDM's attribute name, so that ``".".join(flax_path)`` of a parameter is its EDM key.
Kernels are stored in JAX layout: Linear ``[in, out]``, Conv ``[kh, kw, in, out]`` (HWIO).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pdr_jax import cpu
from pdr_jax.cpu import fast_layers, onednn

Dtype = Any

# EDM's `weight_init` modes as jax initializers (scale 1, fans from the kernel shape;
# jax's "normal" is untruncated, as EDM's randn).
INIT_MODES = {
    "xavier_uniform": jax.nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
    "xavier_normal": jax.nn.initializers.variance_scaling(1.0, "fan_avg", "normal"),
    "kaiming_uniform": jax.nn.initializers.variance_scaling(1.0, "fan_in", "uniform"),
    "kaiming_normal": jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal"),
}


def _weight_init(mode: str, init_weight: float):
    base = INIT_MODES[mode]

    def init(key, shape, dtype=jnp.float32):
        return base(key, shape, dtype) * init_weight

    return init


def _bias_init(mode: str, init_bias: float, kernel_shape: tuple[int, ...]):
    """EDM draws the bias with the weight's mode and fans, times `init_bias` (0 by default)."""
    if init_bias == 0:
        return jax.nn.initializers.zeros
    base = INIT_MODES[mode]

    def init(key, shape, dtype=jnp.float32):
        # The first row of a kernel-shaped draw has exactly the weight's fan-based scale.
        return base(key, kernel_shape, dtype)[(0,) * (len(kernel_shape) - 1)] * init_bias

    return init


def resample_kernel(resample_filter: Sequence[float]) -> np.ndarray:
    """The 2-D resampling filter outer(f, f) / sum(f)^2, [K, K] float32."""
    f = np.asarray(resample_filter, dtype=np.float32)
    return np.outer(f, f) / np.square(f.sum())


def _depthwise(x, kernel2d, *, stride: int, padding: int, lhs_dilation: int = 1):
    """Per-channel correlation of x [B, H, W, C] with one [K, K] filter."""
    taps = fast_layers.separable_taps(kernel2d) if cpu.current().fast_layers else None
    if taps is not None:  # XLA:CPU runs grouped convs slowly: two 1-D passes instead
        return fast_layers.separable_depthwise(
            x, taps, stride=stride, padding=padding, lhs_dilation=lhs_dilation
        )
    channels = x.shape[-1]
    kernel = jnp.broadcast_to(
        jnp.asarray(kernel2d, x.dtype)[:, :, None, None], (*kernel2d.shape, 1, channels)
    )
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        lhs_dilation=(lhs_dilation, lhs_dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
    )


def downsample(x, kernel2d, padding: int):
    """Depthwise filter, stride 2 (EDM's `down`)."""
    return _depthwise(x, kernel2d, stride=2, padding=padding)


def upsample(x, kernel2d, padding: int):
    """Depthwise transposed conv with 4*filter, stride 2, torch padding `padding` (EDM's `up`).

    A transposed conv is a correlation of the zero-dilated input padded by K-1-padding with
    the flipped kernel; EDM's filters are symmetric, so no flip is needed.
    """
    size = kernel2d.shape[0]
    return _depthwise(x, 4 * kernel2d, stride=1, padding=size - 1 - padding, lhs_dilation=2)


class Linear(nn.Module):
    """EDM Linear: y = x @ W + b with W [in, out]."""

    out_features: int
    bias: bool = True
    init_mode: str = "kaiming_normal"
    init_weight: float = 1.0
    init_bias: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        shape = (x.shape[-1], self.out_features)
        w = self.param("weight", _weight_init(self.init_mode, self.init_weight), shape)
        x = x.astype(self.dtype) @ w.astype(self.dtype)
        if self.bias:
            b = self.param(
                "bias", _bias_init(self.init_mode, self.init_bias, shape), (self.out_features,)
            )
            x = x + b.astype(self.dtype)
        return x


class Conv2d(nn.Module):
    """EDM Conv2d with optional 2x up/down resampling; kernel 0 means resample only."""

    out_channels: int
    kernel: int
    bias: bool = True
    up: bool = False
    down: bool = False
    resample_filter: Sequence[float] = (1, 1)
    fused_resample: bool = False
    init_mode: str = "kaiming_normal"
    init_weight: float = 1.0
    init_bias: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = x.astype(self.dtype)
        w = b = None
        if self.kernel:
            shape = (self.kernel, self.kernel, x.shape[-1], self.out_channels)
            w = self.param("weight", _weight_init(self.init_mode, self.init_weight), shape)
            w = w.astype(self.dtype)
            if self.bias:
                b = self.param(
                    "bias", _bias_init(self.init_mode, self.init_bias, shape), (self.out_channels,)
                )
                b = b.astype(self.dtype)
        f = resample_kernel(self.resample_filter) if (self.up or self.down) else None
        w_pad = self.kernel // 2
        f_pad = (f.shape[0] - 1) // 2 if f is not None else 0

        if self.fused_resample and self.up and w is not None:
            x = upsample(x, f, padding=max(f_pad - w_pad, 0))
            x = _conv(x, w, max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = _conv(x, w, w_pad + f_pad)
            x = downsample(x, f, padding=0)
        else:
            if self.up:
                x = upsample(x, f, padding=f_pad)
            if self.down:
                x = downsample(x, f, padding=f_pad)
            if w is not None:
                x = _conv(x, w, w_pad)
        if b is not None:
            x = x + b
        return x


def _conv(x, w, padding: int):
    conv = cpu.current().conv
    # XLA:CPU's convolutions are slower than oneDNN's (pdr_jax.cpu.onednn), but for one output
    # channel (64 -> 1 at [8, 64, 64]: 1.7 ms in XLA, 3.1 in oneDNN).
    if conv != "xla" and w.shape[-1] > 1:
        return onednn.conv2d(x, w, padding, bf16=conv == "bf16")
    return jax.lax.conv_general_dilated(
        x,
        w,
        window_strides=(1, 1),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


class GroupNorm(nn.Module):
    """EDM GroupNorm: min(num_groups, C // min_channels_per_group) contiguous groups.

    Statistics are computed in float32 whatever the compute dtype: the variance of bf16
    activations loses too many bits otherwise.
    """

    num_groups: int = 32
    min_channels_per_group: int = 4
    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        groups = min(self.num_groups, channels // self.min_channels_per_group)
        weight = self.param("weight", jax.nn.initializers.ones, (channels,))
        bias = self.param("bias", jax.nn.initializers.zeros, (channels,))
        if cpu.current().fast_layers:
            return fast_layers.group_norm_nhwc(x, weight, bias, groups, self.eps).astype(self.dtype)
        xg = einops.rearrange(x.astype(jnp.float32), "b h w (g c) -> b g (h w c)", g=groups)
        mean = xg.mean(axis=-1, keepdims=True)
        var = jnp.square(xg - mean).mean(axis=-1, keepdims=True)
        xg = (xg - mean) * jax.lax.rsqrt(var + self.eps)
        x = einops.rearrange(xg, "b g (h w c) -> b h w (g c)", h=x.shape[1], w=x.shape[2])
        return (x * weight + bias).astype(self.dtype)


def attention(qkv, num_heads: int):
    """EDM's self-attention over pixels, in float32 (jax.nn.dot_product_attention).

    qkv: [B, H, W, 3C] laid out as EDM's 1x1 conv output, channel = head*(3C/heads) + c*3 + j
    with j in (q, k, v). Returns [B, H, W, C] with the head as the outer channel block.
    """
    height, width = qkv.shape[1:3]
    qkv = einops.rearrange(
        qkv.astype(jnp.float32), "b h w (n c j) -> j b (h w) n c", n=num_heads, j=3
    )
    q, k, v = qkv[0], qkv[1], qkv[2]
    # softmax(q k^T / sqrt(c)) v through JAX's fused entry point: XLA here, cuDNN's flash
    # kernels on GPUs where they apply.
    a = jax.nn.dot_product_attention(q, k, v, scale=1 / math.sqrt(k.shape[-1]))
    return einops.rearrange(a, "b (h w) n c -> b h w (n c)", h=height, w=width)


class UNetBlock(nn.Module):
    """EDM UNetBlock: GroupNorm-SiLU-conv twice, embedding injection, skip, optional attention."""

    out_channels: int
    up: bool = False
    down: bool = False
    attention: bool = False
    num_heads: int | None = None
    channels_per_head: int = 64
    dropout: float = 0.0
    skip_scale: float = 1.0
    eps: float = 1e-5
    resample_filter: Sequence[float] = (1, 1)
    resample_proj: bool = False
    adaptive_scale: bool = True
    # EDM's init / init_zero / init_attn: Conv2d/Linear kwargs (init_mode, init_weight, init_bias).
    # (Renamed: `init` would shadow flax's Module.init.)
    layer_init: Any = None
    zero_init: Any = None
    attn_init: Any = None
    dtype: Dtype = jnp.float32

    @property
    def heads(self) -> int:
        # As EDM: 0 heads (e.g. an ADM block with < 64 channels) means no attention layers.
        if not self.attention:
            return 0
        if self.num_heads is not None:
            return self.num_heads
        return self.out_channels // self.channels_per_head

    @nn.compact
    def __call__(self, x, emb, train: bool = False):
        init = self.layer_init or {}
        init_zero = self.zero_init if self.zero_init is not None else {"init_weight": 0.0}
        init_attn = self.attn_init if self.attn_init is not None else init
        in_channels = x.shape[-1]
        out = self.out_channels
        norm = lambda name: GroupNorm(eps=self.eps, dtype=self.dtype, name=name)
        resample = dict(resample_filter=self.resample_filter, dtype=self.dtype)

        orig = x
        x = Conv2d(out, 3, up=self.up, down=self.down, name="conv0", **resample, **init)(
            nn.silu(norm("norm0")(x))
        )
        params = Linear(out * (2 if self.adaptive_scale else 1), name="affine", **init)(emb)
        params = params[:, None, None, :].astype(x.dtype)
        if self.adaptive_scale:
            scale, shift = params[..., :out], params[..., out:]
            x = nn.silu(shift + norm("norm1")(x) * (scale + 1))
        else:
            x = nn.silu(norm("norm1")(x + params))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Conv2d(out, 3, name="conv1", dtype=self.dtype, **init_zero)(x)

        if out != in_channels or self.up or self.down:
            kernel = 1 if (self.resample_proj or out != in_channels) else 0
            skip = Conv2d(out, kernel, up=self.up, down=self.down, name="skip", **resample, **init)
            orig = skip(orig)
        x = (x + orig) * self.skip_scale

        if self.heads:
            qkv = Conv2d(out * 3, 1, name="qkv", dtype=self.dtype, **init_attn)(norm("norm2")(x))
            a = attention(qkv, self.heads).astype(x.dtype)
            x = (
                Conv2d(out, 1, name="proj", dtype=self.dtype, **init_zero)(a) + x
            ) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    """Transformer sinusoidal embedding of a scalar per sample: [cos, sin], [B] -> [B, N]."""

    num_channels: int
    max_positions: int = 10000
    endpoint: bool = False

    def __call__(self, x):
        half = self.num_channels // 2
        freqs = np.arange(half, dtype=np.float32) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = jnp.outer(x.astype(jnp.float32), jnp.asarray(freqs, jnp.float32))
        return jnp.concatenate([jnp.cos(x), jnp.sin(x)], axis=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features [cos(2 pi x f), sin(2 pi x f)]; f is a fixed buffer N(0, scale^2)."""

    num_channels: int
    scale: float = 16.0

    @nn.compact
    def __call__(self, x):
        freqs = self.variable(
            "buffers",
            "freqs",
            lambda: (
                jax.random.normal(self.make_rng("params"), (self.num_channels // 2,)) * self.scale
            ),
        ).value
        x = jnp.outer(x.astype(jnp.float32), (2 * np.pi * freqs).astype(jnp.float32))
        return jnp.concatenate([jnp.cos(x), jnp.sin(x)], axis=1)
