"""Diffusion samplers, each one jit-compiled program: a `lax.scan` over a precomputed schedule.

Continuous-sigma samplers take a denoiser ``denoise_fn(x, sigma) -> D`` in EDM's scaling
(x = y + sigma n, labels bound by the caller), with x: [B, H, W, C] and sigma: [] (a scalar,
as EDM's sampler passes it):

- `edm_sampler`: EDM's Euler / 2nd-order Heun sampler with stochastic churn (Karras et al.
  2022, Algorithm 2);
- `dpmpp_2m_sampler`: DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) on Karras sigmas.

Discrete-time samplers take a DDPM-style ``model_fn(x_t, t) -> prediction`` (t: [] int32
timestep, prediction eps, x0 or v; see `pdr_jax.schedules`):

- `ddpm_sampler`: ancestral sampling (Ho et al. 2020, Algorithm 2), optionally respaced;
- `ddim_sampler`: DDIM (Song et al. 2021, eq. 12) with eta and a step count.

A discrete-time model also runs in the continuous samplers through `discrete_sampler_args`,
which rewrites it as a denoiser in sigma_t = sqrt((1 - abar_t) / abar_t) space; a
preconditioned network (`pdr_jax.precond`) through `network_sampler_args`. `sample(solver, ...)`
runs a continuous sampler by its name (`pdr_jax.settings.SOLVERS`: heun, euler, dpmpp2m), the
one vocabulary of restore() and both programs; `sample_with_preset` runs EDM's published settings.

Guidance: every sampler takes ``guidance_fn(x, denoised, sigma) -> correction`` ([B, H, W, C])
and applies ``denoised <- denoised + correction`` at each network evaluation. It always sees
EDM's scaling (x = x_0 + sigma eps), also in DDPM/DDIM, whose eps is then recomputed from the
corrected denoised image. The samplers know nothing about what the correction means.

Compilation: callables are passed into the jitted programs as pytrees. Wrap one that closes
over large arrays (network variables) as ``jax.tree_util.Partial(fn, *arrays)``: the arrays
are then traced arguments rather than compile-time constants, and calls with the same `fn`
reuse the compiled program. A plain callable also works; it is compiled once per callable
object. The helpers below return such Partials.

Randomness: the noise of step i is drawn with ``jax.random.fold_in(key, i)``. Sharding: pass
latents sharded on the batch axis (e.g. NamedSharding over a 1-D mesh) and the whole program
runs sharded; with JAX's partitionable threefry (the default) the samples equal the unsharded ones.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.tree_util import Partial

from pdr_jax import cpu, schedules
from pdr_jax.presets import SAMPLER_PRESETS
from pdr_jax.settings import SOLVERS, solver_name

Array = jax.Array


def _as_pytree_fn(fn):
    """A callable as a pytree that jit accepts as an argument (None stays None)."""
    if fn is None or isinstance(fn, Partial):
        return fn
    return Partial(fn)


def _denoise(denoise_fn, guidance_fn, x, sigma):
    """D(x; sigma), plus the guidance correction when a guidance_fn is given."""
    denoised = denoise_fn(x, sigma)
    if guidance_fn is not None:
        denoised = denoised + guidance_fn(x, denoised, sigma)
    return denoised


def _with_start(x_init, trajectory):
    """[S, B, H, W, C] states after each step -> [S+1, B, H, W, C] with the initial state first."""
    return jnp.concatenate([x_init[None], trajectory], axis=0)


# ----------------------------------------------------------------------------------------------
# Continuous sigma: EDM (Karras et al. 2022) and DPM-Solver++ (Lu et al. 2022b).


def _heun_correction(x_hat, t_hat, t_next, d_cur, d_prime):
    """Trapezoidal rule on the two slopes (Algorithm 2, line 11)."""
    return x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)


@cpu.jit(static_argnames=("solver", "return_trajectory"))
def _edm_sample(
    denoise_fn, guidance_fn, latents, key, schedule, noise, *, solver, return_trajectory
):
    num_steps = schedule["t_cur"].shape[0]

    def step(x_cur, inputs):
        i, s, eps = inputs
        if eps is None:
            eps = jax.random.normal(jax.random.fold_in(key, i), x_cur.shape, x_cur.dtype)
        # Increase noise temporarily to t_hat = t_cur + gamma t_cur (Algorithm 2, lines 4-6).
        x_hat = x_cur + s["noise_std"] * eps
        # Euler step (lines 7-8).
        d_cur = (x_hat - _denoise(denoise_fn, guidance_fn, x_hat, s["t_hat"])) / s["t_hat"]
        x_next = x_hat + (s["t_next"] - s["t_hat"]) * d_cur

        # Apply 2nd order correction (lines 9-11), except on the last step, where t_next = 0.
        def corrected():
            denoised = _denoise(denoise_fn, guidance_fn, x_next, s["t_next"])
            d_prime = (x_next - denoised) / s["t_next"]
            return _heun_correction(x_hat, s["t_hat"], s["t_next"], d_cur, d_prime)

        if solver == "heun":
            x_next = lax.cond(i < num_steps - 1, corrected, lambda: x_next)
        return x_next, x_next if return_trajectory else None

    # Sample x_0 ~ N(0, t_0^2 I) (line 2).
    x_init = latents * schedule["t_cur"][0]
    x, trajectory = lax.scan(step, x_init, (jnp.arange(num_steps), schedule, noise))
    return _with_start(x_init, trajectory) if return_trajectory else x


def edm_sampler(
    denoise_fn: Callable,
    latents: Array,
    *,
    key: Array | None = None,
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
    solver: str = "heun",
    guidance_fn: Callable | None = None,
    round_sigma: Callable | None = None,
    noise: Array | None = None,
    return_trajectory: bool = False,
) -> Array:
    """EDM's sampler (Karras et al. 2022, Algorithm 2; EDM's generate.edm_sampler).

    Args:
      denoise_fn: D(x: [B, H, W, C], sigma: [] float32) -> [B, H, W, C].
      latents: [B, H, W, C] float32 standard normal; x_0 = latents * t_0.
      key: base PRNG key; step i draws its churn noise with fold_in(key, i). Like EDM, noise is
        drawn every step, even where gamma = 0 (then it is multiplied by 0). Needed if S_churn > 0.
      num_steps ... S_noise: EDM's arguments. The caller clamps sigma_min/sigma_max to the
        network's range (`network_sampler_args` does).
      solver: "heun" (2N-1 evaluations of D) or "euler" (N).
      guidance_fn: optional (x, denoised, sigma) -> correction, added to every D evaluation.
      round_sigma: the network's round_sigma (identity if None), applied to t_i and t_hat.
      noise: optional [S, B, H, W, C] standard-normal draws used in place of the random ones
        (reproduces a run with given randn_like draws; key is then unused).
      return_trajectory: also return the states.

    Returns:
      [B, H, W, C] samples in latents.dtype, or with return_trajectory the trajectory
      [S+1, B, H, W, C] (x_0, then x after each step; the last entry is the sample).
    Schedule arguments must be Python numbers: the schedule is computed on the host.
    """
    chex.assert_rank(latents, 4)
    if solver not in ("euler", "heun"):
        raise ValueError(f"solver must be 'euler' or 'heun', got {solver!r}")
    if noise is not None:
        chex.assert_shape(noise, (num_steps, *latents.shape))
    elif key is None:
        if S_churn > 0:
            raise ValueError("a key is needed when S_churn > 0")
        key = jax.random.key(0)  # the noise is multiplied by 0
    round_sigma = round_sigma or (lambda sigma: sigma)
    t_steps = schedules.edm_sigma_steps(num_steps, sigma_min, sigma_max, rho, round_sigma)
    t_cur, t_next = t_steps[:-1], t_steps[1:]
    # Churn gamma_i = min(S_churn/N, sqrt(2)-1) where S_min <= t_i <= S_max (Algorithm 2), and
    # t_hat = t_i + gamma_i t_i (line 5): fixed by the schedule, so computed here on the host.
    in_range = (S_min <= t_cur) & (t_cur <= S_max)
    gamma = np.where(in_range, min(S_churn / num_steps, np.sqrt(2) - 1), 0.0)
    t_hat = np.asarray(round_sigma(t_cur + gamma * t_cur), np.float64)
    noise_std = S_noise * np.sqrt(np.maximum(t_hat**2 - t_cur**2, 0.0))
    schedule = dict(t_cur=t_cur, t_hat=t_hat, t_next=t_next, noise_std=noise_std)
    schedule = {k: jnp.asarray(v, latents.dtype) for k, v in schedule.items()}
    return _edm_sample(
        _as_pytree_fn(denoise_fn),
        _as_pytree_fn(guidance_fn),
        latents,
        key,
        schedule,
        noise,
        solver=solver,
        return_trajectory=return_trajectory,
    )


def _dpmpp_2m_schedule(sigmas: np.ndarray) -> dict[str, np.ndarray]:
    """Per-step sigma, step size h in lambda = -log(sigma), and the 2nd-order weight 1/(2r)."""
    t_cur, t_next = sigmas[:-1], sigmas[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        # h_i = lambda_{i+1} - lambda_i; infinite on the last step, which goes to sigma = 0.
        h = np.log(t_cur) - np.log(t_next)
        h_prev = np.concatenate([[np.nan], h[:-1]])
        r = h_prev / h
        # First order on the first and the last step (and where rounding repeats a sigma).
        second_order = np.isfinite(r) & (r > 0) & (t_next > 0)
        half_inv_r = np.where(second_order, 0.5 / r, 0.0)
    return dict(t_cur=t_cur, t_next=t_next, h=h, half_inv_r=half_inv_r)


@cpu.jit(static_argnames=("return_trajectory",))
def _dpmpp_2m_sample(denoise_fn, guidance_fn, latents, schedule, *, return_trajectory):
    def step(carry, s):
        x_cur, denoised_prev = carry
        denoised = _denoise(denoise_fn, guidance_fn, x_cur, s["t_cur"])
        # Multistep estimate D_i' = (1 + 1/2r) D_i - 1/2r D_{i-1} (Lu et al. 2022b, Alg. 2).
        denoised_prime = denoised + s["half_inv_r"] * (denoised - denoised_prev)
        # Data-prediction update x_{i+1} = (sigma_{i+1} / sigma_i) x_i - (e^-h - 1) D_i' (Alg. 2).
        x_next = (s["t_next"] / s["t_cur"]) * x_cur - jnp.expm1(-s["h"]) * denoised_prime
        return (x_next, denoised), x_next if return_trajectory else None

    x_init = latents * schedule["t_cur"][0]
    (x, _), trajectory = lax.scan(step, (x_init, jnp.zeros_like(x_init)), schedule)
    return _with_start(x_init, trajectory) if return_trajectory else x


def dpmpp_2m_sampler(
    denoise_fn: Callable,
    latents: Array,
    *,
    num_steps: int = 20,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    round_sigma: Callable | None = None,
    guidance_fn: Callable | None = None,
    return_trajectory: bool = False,
) -> Array:
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) on Karras sigmas; N evaluations of D.

    Written in sigma (x = x_0 + sigma eps) with lambda = -log(sigma), so it runs any EDM
    denoiser, and a DDPM-style model through `discrete_sampler_args`. The first step and the last
    (to sigma = 0, which returns D' itself) are first order, as in k-diffusion's sample_dpmpp_2m.

    Args:
      denoise_fn: D(x: [B, H, W, C], sigma: [] float32) -> [B, H, W, C].
      latents: [B, H, W, C] standard normal; x_0 = latents * sigma_max (after rounding).
      num_steps, sigma_min, sigma_max, rho, round_sigma: the schedule, as `schedules.edm_sigma_steps`.
      guidance_fn: optional (x, denoised, sigma) -> correction, added to every D evaluation.
      return_trajectory: return [S+1, B, H, W, C] instead of the [B, H, W, C] samples.
    """
    chex.assert_rank(latents, 4)
    sigmas = schedules.edm_sigma_steps(num_steps, sigma_min, sigma_max, rho, round_sigma)
    schedule = {k: jnp.asarray(v, latents.dtype) for k, v in _dpmpp_2m_schedule(sigmas).items()}
    return _dpmpp_2m_sample(
        _as_pytree_fn(denoise_fn),
        _as_pytree_fn(guidance_fn),
        latents,
        schedule,
        return_trajectory=return_trajectory,
    )


# ----------------------------------------------------------------------------------------------
# Discrete time: DDPM (Ho et al. 2020) and DDIM (Song et al. 2021).


def _discrete_denoise(model_fn, guidance_fn, x_t, s, parameterization):
    """(x0, eps) from the model at timestep s["t"]; guidance corrects x0 in EDM's scaling
    (x = x_t / sqrt(abar), noise level edm_sigma), and eps follows the corrected x0."""
    alpha_bar = s["alpha_bar"]
    x0, eps = schedules.predicted_x0_and_eps(
        model_fn(x_t, s["t"]), x_t, alpha_bar, parameterization
    )
    if guidance_fn is not None:
        x0 = x0 + guidance_fn(x_t / jnp.sqrt(alpha_bar), x0, s["edm_sigma"])
        eps = schedules.eps_from_x0(x_t, x0, alpha_bar)
    return x0, eps


def _ddpm_update(x_t, x0, eps, z, s):
    """Sample q(x_prev | x_t, x0): its mean (Ho et al. 2020, eq. 7) plus noise (Alg. 2, line 4)."""
    return s["coef_x0"] * x0 + s["coef_xt"] * x_t + s["std"] * z


def _ddim_update(x_t, x0, eps, z, s):
    """DDIM (Song et al. 2021, eq. 12): predicted x0, direction pointing to x_t, random noise."""
    return s["sqrt_alpha_bar_prev"] * x0 + s["direction"] * eps + s["sigma"] * z


@cpu.jit(static_argnames=("update", "parameterization", "stochastic", "return_trajectory"))
def _discrete_sample(
    model_fn,
    guidance_fn,
    latents,
    key,
    schedule,
    *,
    update,
    parameterization,
    stochastic,
    return_trajectory,
):
    def step(x_t, inputs):
        i, s = inputs
        x0, eps = _discrete_denoise(model_fn, guidance_fn, x_t, s, parameterization)
        z = jax.random.normal(jax.random.fold_in(key, i), x_t.shape, x_t.dtype) if stochastic else 0
        x_prev = update(x_t, x0, eps, z, s)
        return x_prev, x_prev if return_trajectory else None

    num_steps = schedule["t"].shape[0]
    x, trajectory = lax.scan(step, latents, (jnp.arange(num_steps), schedule))
    return _with_start(latents, trajectory) if return_trajectory else x


def _discrete_steps(betas, num_steps):
    """Visited timesteps [S], their alpha_bar and the next one's (1 after the last step)."""
    alpha_bar = schedules.alpha_bars(betas)
    t = schedules.spaced_timesteps(len(alpha_bar), num_steps)
    return t, alpha_bar[t], np.append(alpha_bar[t[1:]], 1.0)


def _check_parameterization(parameterization):
    if parameterization not in schedules.PARAMETERIZATIONS:
        raise ValueError(
            f"parameterization must be one of {schedules.PARAMETERIZATIONS}, "
            f"got {parameterization!r}"
        )


def ddpm_sampler(
    model_fn: Callable,
    latents: Array,
    *,
    key: Array,
    betas,
    parameterization: str = "eps",
    num_steps: int | None = None,
    variance: str = "small",
    guidance_fn: Callable | None = None,
    return_trajectory: bool = False,
) -> Array:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), written with the x0 posterior (eq. 7).

    With num_steps < T the chain is respaced (Nichol & Dhariwal 2021, Sec. 4): it visits
    `schedules.spaced_timesteps(T, num_steps)`, with beta_t = 1 - abar_t / abar_prev between them.

    Args:
      model_fn: (x_t: [B, H, W, C], t: [] int32) -> prediction [B, H, W, C] (`parameterization`).
      latents: x_T, [B, H, W, C] standard normal.
      key: base PRNG key; step i draws z with fold_in(key, i).
      betas: [T] the training schedule (`schedules.BETA_SCHEDULES[...]` or your own).
      parameterization: "eps", "x0" or "v".
      num_steps: steps S (default T).
      variance: "small" (posterior beta_tilde) or "large" (beta), Ho et al. Sec. 3.2.
      guidance_fn: optional (x, denoised, sigma) -> correction in sigma space (module docstring).
      return_trajectory: return [S+1, B, H, W, C] (x_T first) instead of x_0 [B, H, W, C].
    """
    chex.assert_rank(latents, 4)
    _check_parameterization(parameterization)
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
    t, alpha_bar, alpha_bar_prev = _discrete_steps(betas, num_steps or len(betas))
    beta = 1 - alpha_bar / alpha_bar_prev
    posterior_variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta  # beta_tilde, eq. 7
    std = np.sqrt(posterior_variance if variance == "small" else beta)
    std[-1] = 0.0  # no noise on the last step (Algorithm 2: z = 0 if t = 1)
    schedule = dict(
        alpha_bar=alpha_bar,
        coef_x0=np.sqrt(alpha_bar_prev) * beta / (1 - alpha_bar),
        coef_xt=np.sqrt(1 - beta) * (1 - alpha_bar_prev) / (1 - alpha_bar),
        std=std,
    )
    return _run_discrete(
        model_fn,
        guidance_fn,
        latents,
        key,
        t,
        schedule,
        _ddpm_update,
        parameterization,
        True,
        return_trajectory,
    )


def ddim_sampler(
    model_fn: Callable,
    latents: Array,
    *,
    betas,
    key: Array | None = None,
    parameterization: str = "eps",
    num_steps: int = 50,
    eta: float = 0.0,
    guidance_fn: Callable | None = None,
    return_trajectory: bool = False,
) -> Array:
    """DDIM (Song et al. 2021, eq. 12) over `schedules.spaced_timesteps(T, num_steps)`.

    eta = 0 is the deterministic DDIM; eta = 1 has DDPM's posterior variance (and equals
    `ddpm_sampler` with the same key). Arguments as `ddpm_sampler`; key is needed if eta > 0.
    """
    chex.assert_rank(latents, 4)
    _check_parameterization(parameterization)
    if key is None:
        if eta > 0:
            raise ValueError("a key is needed when eta > 0")
        key = jax.random.key(0)  # unused: no noise is drawn when eta = 0
    t, alpha_bar, alpha_bar_prev = _discrete_steps(betas, num_steps)
    # sigma_t(eta) (Song et al. 2021, eq. 16).
    sigma = eta * np.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))
    schedule = dict(
        alpha_bar=alpha_bar,
        sqrt_alpha_bar_prev=np.sqrt(alpha_bar_prev),
        direction=np.sqrt(np.maximum(1 - alpha_bar_prev - sigma**2, 0.0)),
        sigma=sigma,
    )
    return _run_discrete(
        model_fn,
        guidance_fn,
        latents,
        key,
        t,
        schedule,
        _ddim_update,
        parameterization,
        eta > 0,
        return_trajectory,
    )


def _run_discrete(
    model_fn,
    guidance_fn,
    latents,
    key,
    t,
    schedule,
    update,
    parameterization,
    stochastic,
    return_trajectory,
):
    # sigma_t in EDM's scaling for the guidance hook, from float64 abar (1 - abar cancels in fp32).
    schedule = {**schedule, "edm_sigma": schedules.sigmas_from_alpha_bars(schedule["alpha_bar"])}
    schedule = {k: jnp.asarray(v, latents.dtype) for k, v in schedule.items()}
    schedule["t"] = jnp.asarray(t, jnp.int32)
    return _discrete_sample(
        _as_pytree_fn(model_fn),
        _as_pytree_fn(guidance_fn),
        latents,
        key,
        schedule,
        update=update,
        parameterization=parameterization,
        stochastic=bool(stochastic),
        return_trajectory=return_trajectory,
    )


# ----------------------------------------------------------------------------------------------
# Sampler arguments from a model: denoise_fn, sigma range and round_sigma.


def _sigma_space_denoise(model_fn, sigmas, x, sigma, *extra, parameterization):
    """A discrete-time model as an EDM denoiser: x = x_t / sqrt(abar), sigma^2 = (1 - abar)/abar.
    Extra arguments (e.g. the tiles of a conditioning image) pass on to model_fn."""
    alpha_bar = 1 / (1 + sigma**2)
    x_t = x * jnp.sqrt(alpha_bar)
    t = schedules.timestep_from_sigma(sigma, sigmas)
    prediction = model_fn(x_t, t, *extra)
    x0, _ = schedules.predicted_x0_and_eps(prediction, x_t, alpha_bar, parameterization)
    return x0


# One function object per parameterisation, so that compiled samplers are reused across calls.
_SIGMA_SPACE_DENOISERS = {
    p: functools.partial(_sigma_space_denoise, parameterization=p)
    for p in schedules.PARAMETERIZATIONS
}


def discrete_sampler_args(
    model_fn: Callable,
    betas,
    parameterization: str = "eps",
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
) -> dict:
    """denoise_fn, sigma_min, sigma_max and round_sigma that run a DDPM-style model in
    `edm_sampler` / `dpmpp_2m_sampler`.

    The model is called as ``model_fn(x_t, t, *extra)`` for ``denoise_fn(x, sigma, *extra)``, with
    x_t = x / sqrt(1 + sigma^2) and t: [] float32,
    the timestep interpolated in log sigma (`schedules.timestep_from_sigma`); round_sigma snaps
    each sigma to the model's grid sigma_t, so t is a whole number. D is the predicted x0.
    The sigma range is clamped to the grid's, as for a network (EDM's generate.py): a cosine
    schedule reaches sigma_t ~ 2e4, and starting there wastes most of a short schedule.
    Usage: ``dpmpp_2m_sampler(latents=z, **discrete_sampler_args(model_fn, betas, "v"))``.
    """
    _check_parameterization(parameterization)
    sigmas = schedules.sigmas_from_alpha_bars(schedules.alpha_bars(betas))
    grid = jnp.asarray(sigmas, jnp.float32)
    return dict(
        denoise_fn=Partial(_SIGMA_SPACE_DENOISERS[parameterization], _as_pytree_fn(model_fn), grid),
        sigma_min=max(sigma_min, float(sigmas[0])),
        sigma_max=min(sigma_max, float(sigmas[-1])),
        round_sigma=functools.partial(schedules.round_sigma_to_grid, sigmas=grid),
    )


@functools.lru_cache(maxsize=16)
def _network_denoise_fn(net):
    """net.apply as (variables, class_labels, x, sigma) -> D; one function object per network."""

    def denoise(variables, class_labels, x, sigma):
        return net.apply(variables, x, sigma, class_labels)

    return denoise


def network_sampler_args(
    net, variables, class_labels=None, *, sigma_min: float = 0.002, sigma_max: float = 80.0
) -> dict:
    """denoise_fn, sigma_min, sigma_max and round_sigma for a `pdr_jax.precond` network.

    Clamps the sigma range to the network's (EDM's generate.py, step 1) and uses its round_sigma
    (the identity except for iDDPM). class_labels: [B, label_dim] or None.
    Usage: ``edm_sampler(latents=z, key=key, **network_sampler_args(net, variables, labels))``.
    """
    return dict(
        denoise_fn=Partial(_network_denoise_fn(net), variables, class_labels),
        sigma_min=max(sigma_min, net.sigma_min),
        sigma_max=min(sigma_max, net.sigma_max),
        round_sigma=functools.partial(net.apply, variables, method=net.round_sigma),
    )


# ----------------------------------------------------------------------------------------------
# One entry point by solver name (restore, pdr-sample), and EDM's published presets.


def network_calls(solver: str, num_steps: int) -> int:
    """Denoiser calls of `num_steps` steps: Heun 2N - 1 (no correction on the last step), else N."""
    return 2 * num_steps - 1 if solver == "heun" and num_steps else num_steps


def sample(
    solver: str,
    denoise_fn: Callable,
    latents: Array,
    *,
    key: Array | None = None,
    num_steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    round_sigma: Callable | None = None,
    guidance_fn: Callable | None = None,
    **churn,
) -> Array:
    """The continuous-sigma sampler named `solver` (a name of `pdr_jax.settings.SOLVERS`).

    "heun" and "euler" run `edm_sampler` (which takes key and the churn keywords S_churn, S_min,
    S_max, S_noise), "dpmpp2m" runs `dpmpp_2m_sampler` (deterministic: no churn). A deprecated
    alias ("dpmpp") warns and runs its solver. Arguments and result as those two functions.
    """
    solver = solver_name(solver)
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
    schedule = dict(num_steps=num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    schedule.update(round_sigma=round_sigma, guidance_fn=guidance_fn)
    if solver == "dpmpp2m":
        if churn.get("S_churn", 0.0) > 0:
            raise ValueError("dpmpp2m is deterministic: S_churn must be 0")
        return dpmpp_2m_sampler(denoise_fn, latents, **schedule)
    return edm_sampler(denoise_fn, latents, key=key, solver=solver, **schedule, **churn)


def sample_with_preset(
    net,
    variables,
    latents: Array,
    class_labels: Array | None = None,
    *,
    key: Array | None = None,
    preset: str = "edm-default",
    **overrides,
) -> Array:
    """EDM's Heun sampler with a named preset's settings (`pdr_jax.presets.SAMPLER_PRESETS`: the
    values NVlabs/edm `example.py` passes for its networks); `overrides` replace single settings.

        images = sample_with_preset(net, variables, latents, labels, key=key,
                                    preset="edm-imagenet64-stochastic")

    Args:
      net, variables: a `pdr_jax.precond` network and its variables.
      latents: [B, H, W, C] float32 standard normal.
      class_labels: [B, label_dim] float32 or None.
      key: PRNG key for the churn noise (needed when the preset has S_churn > 0).
      preset: a key of SAMPLER_PRESETS; each keeps EDM's sigma_min 0.002, sigma_max 80 (clamped
        to the network's range) and rho 7 unless overridden.
      overrides: any `edm_sampler` keyword, e.g. num_steps=8 for a quick look.

    Returns:
      [B, H, W, C] float32 samples.
    """
    if preset not in SAMPLER_PRESETS:
        raise KeyError(f"unknown sampler preset {preset!r}; known: {sorted(SAMPLER_PRESETS)}")
    settings = {**SAMPLER_PRESETS[preset], **overrides}
    network_args = network_sampler_args(
        net,
        variables,
        class_labels,
        sigma_min=settings.pop("sigma_min", 0.002),
        sigma_max=settings.pop("sigma_max", 80.0),
    )
    return edm_sampler(latents=latents, key=key, **network_args, **settings)
