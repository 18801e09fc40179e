"""Noise schedules: EDM's continuous sigma steps, and for discrete-time diffusion (DDPM-style
models) the beta schedules and the eps / x0 / v parameterisations.

A model trained DDPM-style sees x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps at an
integer timestep t = 0 .. T-1 (Ho et al. 2020, eq. 4), with alpha_bar_t = prod_{s<=t} (1 - beta_s).
The same noisy image in EDM's scaling is x = x_t / sqrt(alpha_bar_t) = x_0 + sigma_t eps with

    sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t),    alpha_bar_t = 1 / (1 + sigma_t^2),

which is how `pdr_jax.samplers.discrete_sampler_args` lets the continuous-sigma samplers
(EDM Heun, DPM-Solver++) run such a model.

Schedules are built in float64 numpy on the host (T is small, and the products of 1 - beta lose
digits in float32); the samplers cast what they need once. The parameterisation functions are
pure jnp and take `alpha_bar` as a scalar or an array that broadcasts against x (e.g. [B, 1, 1, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

PARAMETERIZATIONS = ("eps", "x0", "v")


# Continuous sigma: EDM's time steps (Karras et al. 2022, eq. 5).


def edm_sigma_steps(
    num_steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    round_sigma: Callable | None = None,
) -> np.ndarray:
    """EDM's noise levels t_0 > ... > t_{N-1} (rounded) followed by t_N = 0: [S+1] float64.

    Computed in float64 on the host like EDM. These are also the "Karras sigmas" that
    DPM-Solver++ uses (`pdr_jax.samplers`). round_sigma: the network's, or None (identity).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    step_indices = np.arange(num_steps, dtype=np.float64)
    # Time step discretization (EDM eq. 5).
    ramp = step_indices / max(num_steps - 1, 1)
    t_steps = (
        sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    ) ** rho
    if round_sigma is not None:
        t_steps = np.asarray(round_sigma(t_steps), np.float64)
    return np.concatenate([t_steps, [0.0]])


# Beta schedules: each returns betas [T] float64 with 0 < beta < 1.


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
    """Linear in beta (Ho et al. 2020, Sec. 4: 1e-4 to 0.02 over T = 1000)."""
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def scaled_linear_betas(
    num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
):
    """Linear in sqrt(beta) (latent diffusion / Stable Diffusion's "scaled_linear")."""
    return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2


def betas_from_alpha_bar(alpha_bar_fn, num_timesteps: int, max_beta: float = 0.999):
    """Betas of a continuous alpha_bar(tau), tau in [0, 1]: beta_t = 1 - abar((t+1)/T) / abar(t/T).

    Clipped at max_beta, as Nichol & Dhariwal (2021, Sec. 3.2) do to avoid singularities at tau=1.
    """
    tau = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    alpha_bar = alpha_bar_fn(tau)
    return np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


def cosine_betas(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999):
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): abar(tau) = f(tau)/f(0), f = cos^2."""

    def f(tau):
        return np.cos((tau + s) / (1 + s) * math.pi / 2) ** 2

    return betas_from_alpha_bar(lambda tau: f(tau) / f(0.0), num_timesteps, max_beta)


def sqrt_betas(num_timesteps: int = 1000, s: float = 1e-4, max_beta: float = 0.999):
    """Square-root schedule (Li et al. 2022, Diffusion-LM): abar(tau) = 1 - sqrt(tau + s)."""
    return betas_from_alpha_bar(lambda tau: 1 - np.sqrt(tau + s), num_timesteps, max_beta)


BETA_SCHEDULES = {
    "linear": linear_betas,
    "scaled_linear": scaled_linear_betas,
    "cosine": cosine_betas,
    "sqrt": sqrt_betas,
}


# Quantities derived from the betas (host side, float64).


def alpha_bars(betas) -> np.ndarray:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), [T] float64. Checks that 0 < beta < 1."""
    betas = np.asarray(betas, np.float64)
    if betas.ndim != 1 or betas.size == 0:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
    if not np.all((betas > 0) & (betas < 1)):
        raise ValueError("betas must lie in (0, 1)")
    return np.cumprod(1 - betas)


def sigmas_from_alpha_bars(alpha_bar):
    """EDM noise level of each timestep, sigma_t = sqrt((1 - abar_t) / abar_t); increasing in t."""
    alpha_bar = np.asarray(alpha_bar, np.float64)
    return np.sqrt((1 - alpha_bar) / alpha_bar)


def spaced_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """Timesteps a sampler visits, [S] int32, from T-1 down to 0, evenly spaced ("linspace").

    S = T gives every timestep. Both ends are always included, so the first step starts from
    the noisiest level the model knows and the last one removes the smallest noise.
    """
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in 1..{num_timesteps}, got {num_steps}")
    if num_steps == 1:
        return np.array([num_timesteps - 1], np.int32)
    return np.round(np.linspace(num_timesteps - 1, 0, num_steps)).astype(np.int32)


def timestep_from_sigma(sigma, sigmas):
    """Fractional timestep of a noise level: linear interpolation of t in log(sigma).

    sigma: any shape; sigmas: [T] increasing (from `sigmas_from_alpha_bars`). Exact (a whole
    number) when sigma is one of `sigmas`; clamped to [0, T-1] outside their range.
    """
    sigmas = jnp.asarray(sigmas)
    log_sigma = jnp.log(jnp.asarray(sigma, sigmas.dtype))
    return jnp.interp(log_sigma, jnp.log(sigmas), jnp.arange(sigmas.shape[0], dtype=sigmas.dtype))


def round_sigma_to_grid(sigma, sigmas):
    """The nearest of the model's noise levels (nearest in log sigma), same shape as sigma."""
    sigmas = jnp.asarray(sigmas)
    sigma = jnp.asarray(sigma, sigmas.dtype)
    index = jnp.argmin(jnp.abs(jnp.log(sigma)[..., None] - jnp.log(sigmas)), axis=-1)
    return sigmas[index]


# Parameterisations (Ho et al. 2020: eps; x0; Salimans & Ho 2022, Sec. 4 / App. D: v).


def diffuse(x0, eps, alpha_bar):
    """Forward process q(x_t | x_0) (Ho et al. 2020, eq. 4): sqrt(abar) x0 + sqrt(1 - abar) eps."""
    return jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1 - alpha_bar) * eps


def training_target(x0, eps, alpha_bar, parameterization: str):
    """What a model with this parameterisation learns to predict from x_t = diffuse(x0, eps, abar).

    eps -> eps; x0 -> x0; v -> sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, Sec. 4).
    """
    if parameterization == "eps":
        return eps
    if parameterization == "x0":
        return x0
    if parameterization == "v":
        return jnp.sqrt(alpha_bar) * eps - jnp.sqrt(1 - alpha_bar) * x0
    raise ValueError(
        f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}"
    )


def eps_from_x0(x_t, x0, alpha_bar):
    """The noise that maps x0 to x_t: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""
    return (x_t - jnp.sqrt(alpha_bar) * x0) / jnp.sqrt(1 - alpha_bar)


def x0_from_eps(x_t, eps, alpha_bar):
    """The clean image under x_t: x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) (Ho eq. 15)."""
    return (x_t - jnp.sqrt(1 - alpha_bar) * eps) / jnp.sqrt(alpha_bar)


def predicted_x0_and_eps(prediction, x_t, alpha_bar, parameterization: str):
    """(x0, eps) estimates from a model's output; each the shape of x_t.

    prediction, x_t: [B, H, W, C]; alpha_bar: scalar or broadcastable, e.g. [B, 1, 1, 1].
    For v: x0 = sqrt(abar) x_t - sqrt(1 - abar) v and eps = sqrt(1 - abar) x_t + sqrt(abar) v.
    """
    if parameterization == "eps":
        return x0_from_eps(x_t, prediction, alpha_bar), prediction
    if parameterization == "x0":
        return prediction, eps_from_x0(x_t, prediction, alpha_bar)
    if parameterization == "v":
        a, b = jnp.sqrt(alpha_bar), jnp.sqrt(1 - alpha_bar)
        return a * x_t - b * prediction, b * x_t + a * prediction
    raise ValueError(
        f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}"
    )


def convert_prediction(prediction, x_t, alpha_bar, source: str, target: str):
    """A prediction in one parameterisation expressed in another (eps / x0 / v)."""
    x0, eps = predicted_x0_and_eps(prediction, x_t, alpha_bar, source)
    return training_target(x0, eps, alpha_bar, target)
