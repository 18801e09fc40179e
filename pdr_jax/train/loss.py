"""Training losses, per pixel, not reduced: EDM's (continuous sigma) and DDPM's (discrete t).

EDM (Karras et al. 2022, Eq. 2 and Table 1): each loss draws sigma per sample, adds N(0, sigma^2)
noise to the clean images y, and weights the squared denoising error:
loss = lambda(sigma) * (D(y + n; sigma) - y)^2. `denoise_fn(x, sigma, labels) -> D` takes
x [B, H, W, C] and sigma [B].

DDPM (Ho et al. 2020, Algorithm 1): t ~ U{0, ..., T-1}, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t)
eps, and the distance (L2, L1 or Huber) between model_fn(x_t, t) and the parameterisation's
target (eps, x0 or v; `pdr_jax.schedules.training_target`).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

from pdr_jax import precond, schedules
from pdr_jax.precond import vp_sigma


def weighted_denoising_error(denoise_fn, images, labels, sigma, noise, weight):
    """lambda(sigma) (D(y + sigma n; sigma) - y)^2 for given draws: sigma [B,1,1,1], noise like images."""
    chex.assert_rank(images, 4)
    chex.assert_equal_shape([images, noise])
    D_yn = denoise_fn(images + noise * sigma, sigma.reshape(-1), labels)
    return weight * jnp.square(D_yn - images)


def edm_weight(sigma, sigma_data=0.5):
    """EDM's loss weighting lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Table 1)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def loss_weight(net, sigma):
    """lambda(sigma) of the loss that trains `net`: EDM's for EDMPrecond, 1 / sigma^2 for the VP
    and VE losses."""
    if isinstance(net, precond.EDMPrecond):
        return edm_weight(sigma, net.sigma_data)
    return 1 / sigma**2


def edm_loss(denoise_fn, key, images, labels=None, *, P_mean=-1.2, P_std=1.2, sigma_data=0.5):
    """EDM loss: ln(sigma) ~ N(P_mean, P_std^2), lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2."""
    key_sigma, key_noise = jax.random.split(key)
    # Sample log-sigma (Table 1, p_train).
    rnd_normal = jax.random.normal(key_sigma, (images.shape[0], 1, 1, 1))
    sigma = jnp.exp(rnd_normal * P_std + P_mean)
    weight = edm_weight(sigma, sigma_data)
    noise = jax.random.normal(key_noise, images.shape)
    return weighted_denoising_error(denoise_fn, images, labels, sigma, noise, weight)


def vp_loss(denoise_fn, key, images, labels=None, *, beta_d=19.9, beta_min=0.1, epsilon_t=1e-5):
    """VP loss: t ~ U(epsilon_t, 1), sigma = sigma_VP(t), lambda = 1 / sigma^2."""
    key_sigma, key_noise = jax.random.split(key)
    rnd_uniform = jax.random.uniform(key_sigma, (images.shape[0], 1, 1, 1))
    sigma = vp_sigma(1 + rnd_uniform * (epsilon_t - 1), beta_d, beta_min)
    weight = 1 / sigma**2
    noise = jax.random.normal(key_noise, images.shape)
    return weighted_denoising_error(denoise_fn, images, labels, sigma, noise, weight)


def ve_loss(denoise_fn, key, images, labels=None, *, sigma_min=0.02, sigma_max=100.0):
    """VE loss: log-uniform sigma in [sigma_min, sigma_max], lambda = 1 / sigma^2."""
    key_sigma, key_noise = jax.random.split(key)
    rnd_uniform = jax.random.uniform(key_sigma, (images.shape[0], 1, 1, 1))
    sigma = sigma_min * (sigma_max / sigma_min) ** rnd_uniform
    weight = 1 / sigma**2
    noise = jax.random.normal(key_noise, images.shape)
    return weighted_denoising_error(denoise_fn, images, labels, sigma, noise, weight)


# Discrete time (DDPM-style models).

DISTANCES = {
    "l2": jnp.square,
    "l1": jnp.abs,
    # Huber with delta 1, scaled by 2 so that it equals L2 near zero.
    "huber": lambda err: 2 * optax.huber_loss(err, delta=1.0),
}


def discrete_denoising_error(
    model_fn, x0, t, noise, alpha_bar, *, parameterization="eps", distance="l2"
):
    """distance(model_fn(x_t, t) - target) for given draws: x0, noise [B, H, W, C]; t [B] int32;
    alpha_bar [T] float32 (the schedule's, indexed by t)."""
    chex.assert_rank(x0, 4)
    chex.assert_equal_shape([x0, noise])
    abar = alpha_bar[t][:, None, None, None]
    # Forward process (Ho et al. 2020, eq. 4).
    x_t = schedules.diffuse(x0, noise, abar)
    target = schedules.training_target(x0, noise, abar, parameterization)
    return DISTANCES[distance](model_fn(x_t, t) - target)


def ddpm_loss(model_fn, key, x0, *, alpha_bar, parameterization="eps", distance="l2"):
    """DDPM loss (Ho et al. 2020, Algorithm 1) with any parameterisation and distance.

    model_fn(x_t [B, H, W, C], t [B] int32) -> prediction; x0 [B, H, W, C] in model space;
    alpha_bar [T] float32. Returns the per-pixel loss [B, H, W, C].
    """
    key_t, key_noise = jax.random.split(key)
    # Sample t uniformly (Algorithm 1, line 3) and eps (line 4).
    t = jax.random.randint(key_t, (x0.shape[0],), 0, alpha_bar.shape[0])
    noise = jax.random.normal(key_noise, x0.shape)
    return discrete_denoising_error(
        model_fn, x0, t, noise, alpha_bar, parameterization=parameterization, distance=distance
    )
