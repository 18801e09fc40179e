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

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from pdr_jax import samplers, schedules
from pdr_jax.nn.unets import UNETS

COND_CHANNELS = 2  # measurement_channels: the normalised measurement and its noise level
MAX_NOISE_LEVEL = 4.0  # cap of channel 1 (model-space std): beyond it a pixel carries no signal
SAMPLERS = ("ddim", "ddpm", "dpmpp")


def measurement_channels(y, s, r, b):
    """The conditioning image [B, H, W, 2 C] float32 from electrons y [B, H, W, C].

    s, r, b: [B] (or scalars) photon scale, read noise and background. See the module docstring.
    """
    chex.assert_rank(y, 4)
    per_image = lambda v: jnp.reshape(jnp.broadcast_to(jnp.asarray(v, jnp.float32), (y.shape[0],)), (-1, 1, 1, 1))
    s, r, b = per_image(s), per_image(r), per_image(b)
    y = jnp.asarray(y, jnp.float32)
    y_n = (y - b) / s
    noise_level = 2 * jnp.sqrt(jnp.maximum(y - b, 0) + r**2) / s
    return jnp.concatenate([2 * jnp.clip(y_n, -0.5, 1.5) - 1, jnp.minimum(noise_level, MAX_NOISE_LEVEL)], axis=-1)


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
        c_noise = jnp.broadcast_to(jnp.reshape(jnp.asarray(t, jnp.float32), (-1,)), (batch,)) * (1000 / self.num_timesteps)
        labels = None
        if self.model.label_dim:
            labels = jnp.zeros((batch, self.model.label_dim), jnp.float32) if class_labels is None else class_labels
            labels = jnp.broadcast_to(jnp.reshape(jnp.asarray(labels, jnp.float32), (-1, self.model.label_dim)), (batch, self.model.label_dim))
        out = self.model(x.astype(self.model.dtype), c_noise, labels, augment_labels=augment_labels, train=train)
        return out.astype(jnp.float32)


def build_conditional(
    *, arch: str = "ddpmpp", img_channels: int = 1, cond_channels: int = COND_CHANNELS,
    num_timesteps: int = 1000, beta_schedule: str = "linear", parameterization: str = "eps",
    dtype=jnp.float32, **unet_kwargs,
) -> ConditionalDenoiser:  # fmt: skip
    """A ConditionalDenoiser from plain arguments (network.json's "network" of a conditional model).

    unet_kwargs: the U-Net's fields (img_resolution, label_dim, model_channels, ...).
    """
    if arch not in UNETS:
        raise KeyError(f"unknown arch {arch!r}; known: {sorted(UNETS)}")
    if beta_schedule not in schedules.BETA_SCHEDULES:
        raise KeyError(f"unknown beta_schedule {beta_schedule!r}; known: {sorted(schedules.BETA_SCHEDULES)}")
    if parameterization not in schedules.PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {schedules.PARAMETERIZATIONS}, got {parameterization!r}")
    model = UNETS[arch](in_channels=img_channels + cond_channels, out_channels=img_channels, dtype=dtype, **unet_kwargs)
    return ConditionalDenoiser(model, num_timesteps, beta_schedule, parameterization)


# ----------------------------------------------------------------------------------------------
# Sampling: the measurement conditions every step of DDPM / DDIM / DPM-Solver++.


@functools.lru_cache(maxsize=16)
def tile_model_fn(net):
    """(variables, labels, x_t, t, cond_image) -> prediction; one function object per network."""

    def predict(variables, labels, x_t, t, cond_image):
        return net.apply(variables, model_input(x_t, cond_image), t, labels)

    return predict


def conditioned_model_fn(net, variables, cond_image, labels=None):
    """model_fn(x_t, t) -> prediction for the discrete samplers, conditioned on cond_image [B,H,W,C']."""
    return Partial(_predict_with_cond, Partial(tile_model_fn(net), variables, labels), cond_image)


def _predict_with_cond(predict, cond_image, x_t, t):
    return predict(x_t, t, cond_image)


def run_sampler(net, model_fn, latents, *, sampler: str = "ddim", num_steps: int = 50, eta: float = 0.0, key=None):
    """x0 [B, H, W, C] in model space from latents [B, H, W, C] ~ N(0, I) with a discrete model_fn.

    sampler: "ddim" (eta, num_steps), "ddpm" (num_steps: respaced ancestral) or "dpmpp"
    (DPM-Solver++(2M) in sigma space through `samplers.discrete_sampler_args`).
    """
    betas, p = net.betas(), net.parameterization
    if sampler == "ddim":
        return samplers.ddim_sampler(model_fn, latents, betas=betas, key=key, parameterization=p, num_steps=num_steps, eta=eta)
    if sampler == "ddpm":
        key = jax.random.key(0) if key is None else key
        return samplers.ddpm_sampler(model_fn, latents, key=key, betas=betas, parameterization=p, num_steps=num_steps)
    if sampler == "dpmpp":
        return samplers.dpmpp_2m_sampler(latents=latents, num_steps=num_steps, **samplers.discrete_sampler_args(model_fn, betas, p))
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")


def restore(net, variables, y, s, r, b, labels=None, *, key, sampler: str = "ddim", num_steps: int = 50,
            eta: float = 0.0, num_samples: int = 1):  # fmt: skip
    """Restorations x [B, H, W, C] in [0, 1] of whole measurements y [B, H, W, C] (electrons).

    s, r, b: [B] or scalars; labels: [B, 6] conditioning vectors (None: zeros, the unconditioned
    mode). num_samples > 1 averages independent samples: an estimate of the posterior mean
    (meaningful with a stochastic sampler: "ddpm", or "ddim" with eta > 0).
    """
    cond_image = measurement_channels(y, s, r, b)
    fn = conditioned_model_fn(net, variables, cond_image, labels)
    total = 0.0
    for i in range(num_samples):
        key_latent, key_sampler = jax.random.split(jax.random.fold_in(key, i))
        latents = jax.random.normal(key_latent, y.shape, jnp.float32)
        total = total + run_sampler(net, fn, latents, sampler=sampler, num_steps=num_steps, eta=eta, key=key_sampler)
    return jnp.clip((total / num_samples + 1) / 2, 0, 1)


def restore_tiled(net, variables, y, physics, *, tile: int | None = None, overlap: int = 16, batch: int = 8,
                  sampler: str = "ddim", num_steps: int = 50, eta: float = 0.0, num_samples: int = 1, key=None):  # fmt: skip
    """Restore one image y [H, W] or [H, W, C] (electrons) of any size with a conditional model:
    the discrete sampler on the whole padded image, the network run over overlapping tiles of x_t
    and of the conditioning image at the same origins, blended at every step.

    physics: pdr_jax.restore.Physics (s, r, b, domain). tile: default the network's training
    resolution, or the image's shorter side rounded down to the downsampling factor when smaller.
    num_samples > 1 averages samples (a posterior-mean estimate). Returns (x like y in [0, 1]
    float32, report with chi-square, whiteness, the plan and timings). Saturated pixels are not
    masked: the model has no likelihood term.
    """
    import time

    from pdr_jax import metrics
    from pdr_jax.restore import tiling

    start = time.perf_counter()
    squeeze = np.ndim(y) == 2
    y = np.asarray(y, np.float32)[..., None] if squeeze else np.asarray(y, np.float32)
    if y.ndim != 3 or y.shape[-1] != net.img_channels:
        raise ValueError(f"y must be [H, W] or [H, W, {net.img_channels}], got {y.shape}")
    s, r, b = physics.s, physics.r, physics.b
    multiple = 2 ** (len(net.model.channel_mult) - 1)
    if tile is None:
        tile = min(net.model.img_resolution, (min(y.shape[:2]) // multiple) * multiple)
    plan = tiling.plan_tiles(*y.shape[:2], tile=tile, overlap=min(overlap, tile // 2), multiple=multiple)
    cond_pad = tiling.pad(measurement_channels(jnp.asarray(y)[None], s, r, b), plan)
    labels = physics.labels(batch) if net.model.label_dim else None
    model_fn = tiling.tiled_denoiser(Partial(tile_model_fn(net), variables, labels), plan, batch=batch,
                                     cond_image=cond_pad)  # fmt: skip
    key = jax.random.key(0) if key is None else key
    total = 0.0
    for i in range(num_samples):
        key_latent, key_sampler = jax.random.split(jax.random.fold_in(key, i))
        latents = jax.random.normal(key_latent, (1, *plan.padded_shape, y.shape[-1]), jnp.float32)
        total = total + run_sampler(net, model_fn, latents, sampler=sampler, num_steps=num_steps, eta=eta,
                                    key=key_sampler)  # fmt: skip
    x = np.asarray(jnp.clip((tiling.unpad(total[0] / num_samples, plan) + 1) / 2, 0, 1))
    residuals = metrics.normalized_residuals(y, x, s, r, b)
    report = dict(
        chi_square=float(metrics.chi_square(y, x, s, r, b)), whiteness=float(metrics.whiteness(residuals)),
        spectral_flatness=float(metrics.spectral_flatness(residuals)), mean_photons=float(np.mean(y - b)),
        saturated_fraction=0.0, method="conditional", sampler=sampler, num_steps=num_steps, eta=eta,
        num_samples=num_samples, tile=tile, num_tiles=plan.num_tiles, overlap=plan.overlap, plan=plan.to_json(),
        physics=dict(s=s, r=r, b=b, domain=physics.domain), timings=dict(total_s=time.perf_counter() - start),
        warnings=[],
    )  # fmt: skip
    return (x[..., 0] if squeeze else x), report
