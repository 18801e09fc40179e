"""EDM's training losses (Karras et al. 2022, Eq. 2 and Table 1): per-pixel, not reduced.

Each loss draws sigma per sample, adds N(0, sigma^2) noise to the clean images y, and weights
the squared denoising error: loss = lambda(sigma) * (D(y + n; sigma) - y)^2.
`denoise_fn(x, sigma, labels) -> D` takes x [B, H, W, C] and sigma [B].
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from pdr_jax.precond import vp_sigma


def weighted_denoising_error(denoise_fn, images, labels, sigma, noise, weight):
    """lambda(sigma) (D(y + sigma n; sigma) - y)^2 for given draws: sigma [B,1,1,1], noise like images."""
    chex.assert_rank(images, 4)
    chex.assert_equal_shape([images, noise])
    D_yn = denoise_fn(images + noise * sigma, sigma.reshape(-1), labels)
    return weight * jnp.square(D_yn - images)


def edm_loss(denoise_fn, key, images, labels=None, *, P_mean=-1.2, P_std=1.2, sigma_data=0.5):
    """EDM loss: ln(sigma) ~ N(P_mean, P_std^2), lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2."""
    key_sigma, key_noise = jax.random.split(key)
    # Sample log-sigma (Table 1, p_train).
    rnd_normal = jax.random.normal(key_sigma, (images.shape[0], 1, 1, 1))
    sigma = jnp.exp(rnd_normal * P_std + P_mean)
    # Loss weighting (Table 1, lambda).
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
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


LOSSES = {"edm": edm_loss, "vp": vp_loss, "ve": ve_loss}
