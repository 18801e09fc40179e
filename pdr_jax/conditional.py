"""Conditional diffusion restoration: a DDPM-style U-Net that sees the noisy measurement.

The network is a U-Net (SongUNet or ADM) with in_channels = C + C_cond: the noisy image x_t
[B, H, W, C] and the conditioning image [B, H, W, C_cond] stacked on the channel axis
(`model_input`), the 6-D physics vector through the label input, the timestep through the noise
embedding with c_noise = 1000 t / T (so the embedding spans the same range as EDM's VP models
for any T). It predicts eps, x0 or v (Ho et al. 2020; Salimans & Ho 2022), see
`pdr_jax.schedules`. Images live in model space 2x - 1.

Conditioning image (`measurement_channels`), computed from electrons y and (s, r, b):

  channel 0: the normalised measurement y_n = (y - b) / s (an unbiased estimate of x), mapped to
             model space 2 clip(y_n, -0.5, 1.5) - 1. The clip range is wider than [0, 1] so the
             noise stays roughly symmetric around dark and bright pixels (clipping at [0, 1]
             biases the mean there); only values 1.5 clean-units out are cut.
  channel 1: the per-pixel noise level of y_n in model space, 2 sqrt(max(y - b, 0) + r^2) / s,
             capped at 4, from the Poisson-Gaussian model with lambda_hat = max(y - b, 0). It
             tells the network how much to trust each pixel of channel 0 (this matters at low s,
             where y_n is mostly noise), for which a variance-stabilised input would be an
             alternative; the explicit map keeps channel 0 linear in y.

Precision: the wrapper works in float32; the U-Net body runs in its `dtype`, with one cast on
the way in and one back to float32 on the way out (as pdr_jax.precond).
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from pdr_jax import samplers, schedules
from pdr_jax.nn.unets import UNETS

COND_CHANNELS = 2  # measurement_channels: the normalised measurement and its noise level
MAX_NOISE_LEVEL = 4.0  # cap of channel 1 (model-space std): beyond it a pixel carries no signal


def measurement_channels(y, s, r, b):
    """The conditioning image [B, H, W, 2 C] float32 from electrons y [B, H, W, C].

    s, r, b: [B] (or scalars) photon scale, read noise and background. See the module docstring.
    """
    chex.assert_rank(y, 4)
    per_image = lambda v: jnp.reshape(
        jnp.broadcast_to(jnp.asarray(v, jnp.float32), (y.shape[0],)), (-1, 1, 1, 1)
    )
    s, r, b = per_image(s), per_image(r), per_image(b)
    y = jnp.asarray(y, jnp.float32)
    y_n = (y - b) / s
    noise_level = 2 * jnp.sqrt(jnp.maximum(y - b, 0) + r**2) / s
    return jnp.concatenate(
        [2 * jnp.clip(y_n, -0.5, 1.5) - 1, jnp.minimum(noise_level, MAX_NOISE_LEVEL)], axis=-1
    )


def model_input(x_t, cond_image):
    """[B, H, W, C] and [B, H, W, C_cond] -> the network input [B, H, W, C + C_cond]."""
    chex.assert_equal_shape_prefix([x_t, cond_image], 3)
    return jnp.concatenate([x_t, cond_image.astype(x_t.dtype)], axis=-1)


class ConditionalDenoiser(nn.Module):
    """U-Net over [x_t, conditioning image] predicting eps/x0/v at a discrete timestep t."""

    model: nn.Module  # in_channels = img_channels + cond_channels, out_channels = img_channels
    num_timesteps: int = 1000
    beta_schedule: str = "linear"  # a key of schedules.BETA_SCHEDULES
    parameterization: str = "eps"  # "eps", "x0" or "v"

    @property
    def img_channels(self) -> int:
        return self.model.out_channels

    @property
    def cond_channels(self) -> int:
        return self.model.in_channels - self.model.out_channels

    def betas(self) -> np.ndarray:
        """[T] float64, the training schedule (host side)."""
        return schedules.BETA_SCHEDULES[self.beta_schedule](self.num_timesteps)

    def __call__(self, x, t, class_labels=None, augment_labels=None, train: bool = False):
        """x: [B, H, W, C + C_cond] = model_input(x_t, cond); t: [B] or [] timesteps (int or
        float, fractional between grid points) -> prediction [B, H, W, C] float32."""
        chex.assert_rank(x, 4)
        batch = x.shape[0]
        c_noise = jnp.broadcast_to(jnp.reshape(jnp.asarray(t, jnp.float32), (-1,)), (batch,)) * (
            1000 / self.num_timesteps
        )
        labels = None
        if self.model.label_dim:
            labels = (
                jnp.zeros((batch, self.model.label_dim), jnp.float32)
                if class_labels is None
                else class_labels
            )
            labels = jnp.broadcast_to(
                jnp.reshape(jnp.asarray(labels, jnp.float32), (-1, self.model.label_dim)),
                (batch, self.model.label_dim),
            )
        out = self.model(
            x.astype(self.model.dtype), c_noise, labels, augment_labels=augment_labels, train=train
        )
        return out.astype(jnp.float32)


def build_conditional(
    *,
    arch: str = "ddpmpp",
    img_channels: int = 1,
    cond_channels: int = COND_CHANNELS,
    num_timesteps: int = 1000,
    beta_schedule: str = "linear",
    parameterization: str = "eps",
    dtype=jnp.float32,
    **unet_kwargs,
) -> ConditionalDenoiser:
    """A ConditionalDenoiser from plain arguments (network.json's "network" of a conditional model).

    unet_kwargs: the U-Net's fields (img_resolution, label_dim, model_channels, ...).
    """
    if arch not in UNETS:
        raise KeyError(f"unknown arch {arch!r}; known: {sorted(UNETS)}")
    if beta_schedule not in schedules.BETA_SCHEDULES:
        raise KeyError(
            f"unknown beta_schedule {beta_schedule!r}; known: {sorted(schedules.BETA_SCHEDULES)}"
        )
    if parameterization not in schedules.PARAMETERIZATIONS:
        raise ValueError(
            f"parameterization must be one of {schedules.PARAMETERIZATIONS}, got {parameterization!r}"
        )
    model = UNETS[arch](
        in_channels=img_channels + cond_channels,
        out_channels=img_channels,
        dtype=dtype,
        **unet_kwargs,
    )
    return ConditionalDenoiser(model, num_timesteps, beta_schedule, parameterization)


# ----------------------------------------------------------------------------------------------
# Restoration: the model as a pdr_jax.restore Denoiser, conditioned by the measurement's tiles.


@functools.lru_cache(maxsize=16)
def tile_model_fn(net):
    """(variables, labels, x_t, t, cond_image) -> prediction; one function object per network."""

    def predict(variables, labels, x_t, t, cond_image):
        return net.apply(variables, model_input(x_t, cond_image), t, labels)

    return predict


@dataclasses.dataclass(frozen=True, eq=False)
class ConditionalModel:
    """A ConditionalDenoiser and its variables as a `pdr_jax.restore.Denoiser`.

    `pdr_jax.restore.restore` runs it like a prior: its denoiser is the discrete model in sigma
    space (samplers.discrete_sampler_args: D is the predicted x0 at the grid timestep of sigma),
    called with the tiles of `conditioning_image` at the tiles' origins. It has no likelihood
    term: callers pass pdr_jax.restore.CONDITIONAL_SETTINGS (EDM Euler steps from noise, no
    guidance).
    """

    net: ConditionalDenoiser
    variables: object

    img_resolution = property(lambda self: self.net.model.img_resolution)
    img_channels = property(lambda self: self.net.img_channels)
    downsampling = property(lambda self: 2 ** (len(self.net.model.channel_mult) - 1))
    model_channels = property(lambda self: self.net.model.model_channels)

    def sampler_args(self, physics, rows: int) -> dict:
        labels = physics.labels(rows) if self.net.model.label_dim else None
        model_fn = Partial(tile_model_fn(self.net), self.variables, labels)
        return samplers.discrete_sampler_args(model_fn, self.net.betas(), self.net.parameterization)

    def conditioning_image(self, y, physics):
        """measurement_channels of y [B, H, W, C] electrons: what every denoiser call sees."""
        return measurement_channels(y, physics.s, physics.r, physics.b)
