"""Likelihood guidance for a diffusion sampler: corrections to the denoised estimate.

Units: samplers work in model space, where an image is `2 x - 1` with x in [0, 1]. A denoised
estimate `denoised` is turned into x = (denoised + 1) / 2, and the log-likelihood gradient
w.r.t. model space is 0.5 * d log p(y | x) / dx. Pixels with mask == 0 (saturated, dead, hot)
contribute nothing.

Three modes, each adding a correction to the sampler's denoised estimate:

- "x0" (the seed design, `x0_guidance`): correction = gamma(sigma) * clip(grad, -10, 10) at
  sigma > sigma_threshold (0.01), grad taken at the denoised estimate. A hook for the
  samplers' `guidance_fn(x, denoised, sigma)`.
- "dps" (Chung et al. 2022, Algorithm 1; `dps_denoiser`): the step on log p(y | D(x_t)) taken
  back through the denoiser to the noisy state, J^T (gamma * grad) with J = dD/dx_t. It needs
  the denoiser's vector-Jacobian product, so it wraps `denoise_fn` instead of using the hook.
- "prox" (half-quadratic splitting as in DiffPIR, Zhu et al. 2023; `proximal_correction`):
  the denoised estimate is replaced by the exact proximal point of the measurement's negative
  log-likelihood, `argmin_x NLL(y | x) + |x - x0|^2 / (2 gamma_x)`, per pixel and in closed
  form. The likelihood is the shifted Poisson y + r^2 ~ Poisson(s x + b + r^2) (the
  Poisson-Gaussian model's mean and variance; its proximal point is the positive root of a
  quadratic), gamma_x = gamma(sigma) / 4 the estimate's variance in [0, 1] units. The damped
  "x0" step is one Gauss-Newton step of the same problem with the variance frozen at x0.
  `likelihood`, `grad_clip` and `damping` do not apply.

Step size gamma(sigma) = kappa times sigma^2 ("sigma2"), sigma, 1 ("constant"), or
sigma^2 sigma_data^2 / (sigma^2 + sigma_data^2) ("isotropic": Var[x0 | x_t] under a
N(0, sigma_data^2) prior per pixel; sigma^2 J is that posterior covariance for the actual
prior, Tweedie). gamma * grad is a gradient step that treats gamma as the variance of the
denoised estimate, so it overshoots once gamma F >> 1 (F = s^2 / (4 (lambda + r^2)), the
pixel's Fisher information): with the seed defaults (x0, kappa sigma^2, kappa = 0.5) gamma F
reaches 10^5 at sigma = 80 and the sampler diverges. `damping=True` replaces gamma with
gamma / (1 + gamma F), the Gauss-Newton (Kalman) step, which never passes the pixel's
maximum-likelihood value.

Measured on 32 8x8 images from a Gaussian prior with its exact denoiser, r = 1, b = 0.5, 18
Heun steps from zero latents (tests/restore/test_restoration.py); MSE of x in [0, 1] (and
chi-square) at s = 1 / 10 / 100:

    noisy (y - b) / s                       2.07        0.0663       0.00539
    prior mean                              0.0189      0.0189       0.0189
    linearised posterior mean (oracle)      0.0166      0.0053       0.0011
    seed: x0, kappa 0.5 sigma^2, undamped   0.196 (0.87) 0.215 (4.8)  0.237 (688)
    x0, kappa 1, isotropic, damped          0.0175 (1.03) 0.0062 (0.86) 0.0017 (0.88)
    dps, kappa 1, sigma2, damped, no clip   0.0166 (1.03) 0.0068 (1.00) 0.0016 (1.02)
    prox, kappa 0.25, sigma2                0.0183 (0.99) 0.0056 (0.90) 0.0011 (0.80)
    prox, kappa 1, sigma2                   0.0298 (0.95) 0.0066 (0.80) 0.0012 (0.65)

At s = 1 these orderings are within a few percent and move with the draw and the CPU: on an AMD
EPYC the prox row's MSE is 0.0193 (above the prior mean), and over 3 draws of 128 images prox is
0.97-1.06 of the prior mean's MSE and 1.14-1.22 of the oracle's (the tests check 128 images
against the oracle with room, tests/restore/test_restoration.py).

From random latents (posterior samples) the MSE is about twice the posterior variance
(dps, damped, one sample: 0.034 / 0.013 / 0.0033, chi-square 1.06 / 1.13 / 1.34; x0 damped
reaches chi-square 1.98 at s = 100), so a deterministic start is the better point estimate.

The forward operator (pdr_jax.physics.operators; `operator=`, the identity by default) sits
between x and the noise model: the likelihood is that of y given A(x), its gradient w.r.t. x the
adjoint of the per-measurement gradient, the Fisher information of a value of x its gain^2
times its measurement's, and the proximal step the closed form per value of x with s scaled by
its gain (a colour filter array measures each value of x at most once; the unmeasured colours
of a pixel get no data step).

Nothing here knows which sampler calls it; the samplers know nothing about the noise model.
With kappa = 0 both corrections are exactly zero, and `make_guidance` hands the sampler the
plain denoiser, so results are bit-identical to unguided sampling.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from pdr_jax.physics import noise
from pdr_jax.physics.operators import IDENTITY
from pdr_jax.settings import GAMMA_SCHEDULES, GuidanceSettings

SIGMA_DATA = 0.5  # EDM's sigma_data: the prior std of a model-space pixel


def step_size(sigma, *, kappa: float, schedule: str = "sigma2"):
    """gamma(sigma): kappa times sigma^2, sigma, 1 or sigma^2 sd^2 / (sigma^2 + sd^2) (sd =
    SIGMA_DATA) for schedule "sigma2", "sigma", "constant", "isotropic"; shaped like sigma."""
    if schedule == "sigma2":
        return kappa * jnp.square(sigma)
    if schedule == "sigma":
        return kappa * sigma
    if schedule == "constant":
        return kappa * jnp.ones_like(sigma)
    if schedule == "isotropic":
        return kappa * jnp.square(sigma) * SIGMA_DATA**2 / (jnp.square(sigma) + SIGMA_DATA**2)
    raise ValueError(f"unknown gamma schedule {schedule!r}; expected one of {GAMMA_SCHEDULES}")


def _per_example(sigma, ndim: int):
    """sigma as a scalar or [B, 1, ..., 1] so it broadcasts against [B, H, W, C] images."""
    sigma = jnp.asarray(sigma, jnp.float32)
    if sigma.ndim == 1:
        sigma = sigma.reshape(-1, *([1] * (ndim - 1)))
    return sigma


def model_space_grad(
    denoised, y, s, r, b, *, likelihood: str = "wls", mask=None, operator=IDENTITY
):
    """0.5 * d log p(y | A x) / dx at x = (denoised + 1) / 2: A^T of the per-measurement
    gradient, zero where mask == 0.

    denoised: [B, H, W, C] model-space estimate; y, mask: like A(x) (e.g. [B, H, W, C], a
    mosaic [B, H, W, 1]); s, r, b: scalars or [B, 1, 1, 1]. Returns [B, H, W, C] float32.
    """
    x = 0.5 * (denoised + 1.0)
    grad = noise.log_likelihood_grad(y, operator.forward(x), s, r, b, kind=likelihood, mask=mask)
    return 0.5 * operator.adjoint(grad)


def normal_bound(operator, w, like):
    """A^T(w A(1)), shaped like `like` (x): a diagonal D with D >= A^T diag(w) A for a
    non-negative operator and w >= 0 (each row of A^T W A summed, Gershgorin), equal to the
    diagonal of A^T W A where A is pixel-wise (identity: w; a mosaic: w g^2 at each pixel's
    colour). Through a PSF the diagonal alone underestimates the curvature at low frequencies by
    up to 1 / sum(h^2) (~14 for a Gaussian of FWHM 2.5 px), so a step damped by it overshoots."""
    return operator.adjoint(w * operator.forward(jnp.ones_like(like)))


def fisher_information(denoised, s, r, b, operator=IDENTITY):
    """Fisher information of the measurement about each value of model-space x, or its bound
    through an operator that mixes pixels (normal_bound): gain^2 s^2 / (4 v), v = lambda + r^2
    of the pixel that measures it (the Gaussian approximation, used for every likelihood); 0
    for a value no pixel measures."""
    lam = noise.mean_electrons(operator.forward(0.5 * (denoised + 1.0)), s, b)
    per_measurement = jnp.square(s) / (4.0 * noise.variance(lam, r))
    return normal_bound(operator, per_measurement, denoised)


def damped_step(gamma, denoised, s, r, b, operator=IDENTITY):
    """gamma / (1 + gamma F): one Gauss-Newton (Kalman) step instead of a gradient step.

    gamma * grad treats gamma as the variance of the denoised estimate; combining that
    estimate with the pixel's measurement (information F) gives the damped step, which never
    moves a pixel past its maximum-likelihood value however large gamma gets (high sigma, many
    photons). Without it gamma F >> 1 overshoots and the sampler diverges.
    """
    return gamma / (1.0 + gamma * fisher_information(denoised, s, r, b, operator))


def guidance_step(grad, denoised, sigma, s, r, b, settings: GuidanceSettings, operator=IDENTITY):
    """gamma(sigma) * clip(grad), damped if asked, zero at sigma <= sigma_threshold.

    grad, denoised: [B, H, W, C] model space; sigma: scalar or [B]. Returns [B, H, W, C].
    """
    if settings.grad_clip is not None:
        grad = jnp.clip(grad, -settings.grad_clip, settings.grad_clip)
    sigma = _per_example(sigma, denoised.ndim)
    gamma = step_size(sigma, kappa=settings.kappa, schedule=settings.schedule)
    if settings.damping:
        gamma = damped_step(gamma, denoised, s, r, b, operator)
    return jnp.where(sigma > settings.sigma_threshold, gamma * grad, 0.0)


def x0_correction(
    denoised,
    sigma,
    *,
    y,
    s,
    r,
    b,
    mask=None,
    settings: GuidanceSettings = GuidanceSettings(),
    operator=IDENTITY,
):
    """The seed design: gamma(sigma) * clip(model_space_grad(denoised)) (guidance_step).

    denoised: [B, H, W, C]; sigma: scalar or [B]; y, mask: like A(x); s, r, b: scalars or
    [B, 1, 1, 1]. Returns the correction [B, H, W, C] float32.
    """
    grad = model_space_grad(
        denoised, y, s, r, b, likelihood=settings.likelihood, mask=mask, operator=operator
    )
    return guidance_step(grad, denoised, sigma, s, r, b, settings, operator)


def proximal_correction(
    denoised,
    sigma,
    *,
    y,
    s,
    r,
    b,
    mask=None,
    settings: GuidanceSettings = GuidanceSettings(mode="prox"),
    operator=IDENTITY,
):
    """2 (x* - x0): the step from the denoised estimate to its exact proximal point.

    x* = argmin_x lambda' - y' log lambda' + (x - x0)^2 / (2 gamma_x), lambda' = s x + b + r^2,
    y' = max(y + r^2, 0), x0 = (denoised + 1) / 2, gamma_x = gamma(sigma) / 4 (step_size).
    Setting the derivative to zero gives A lambda'^2 + B lambda' - y' s = 0 with A = rho / s,
    B = s - rho ((b + r^2) / s + x0), rho = 1 / gamma_x; lambda' is its non-negative root,
    written without cancellation for either sign of B. gamma -> infinity gives the maximum-
    likelihood x = (y - b) / s, gamma -> 0 leaves x0. Zero where mask == 0 and at sigma <=
    sigma_threshold. With an operator each value of x is measured once at most, by its pixel
    with gain g: the same closed form with s g in place of s, and no step for a value that no
    pixel measures. denoised: [B, H, W, C]; sigma: scalar or [B]; y, mask: like A(x) (a
    mosaic's one channel broadcasts over x's three); s, r, b: scalars or [B, 1, 1, 1]. Returns
    [B, H, W, C] float32.
    """
    sigma = _per_example(sigma, denoised.ndim)
    gamma = step_size(sigma, kappa=settings.kappa, schedule=settings.schedule)
    rho = 4.0 / jnp.maximum(gamma, 1e-20)
    on = (sigma > settings.sigma_threshold) & (gamma > 0)  # kappa = 0: exactly no step
    if not operator.diagonal:  # a PSF: no closed form per pixel
        correction = _weighted_least_squares_step(
            denoised, rho, y, s, r, b, mask, operator, settings.cg_iterations
        )
        return jnp.where(on, correction, 0.0).astype(jnp.float32)
    gains = jnp.asarray(operator.weights(*denoised.shape[-3:-1]))
    measured = gains > 0
    s = s * jnp.where(measured, gains, 1.0)
    x0 = 0.5 * (denoised + 1.0)
    offset = b + jnp.square(r)
    counts = jnp.maximum(y + jnp.square(r), 0.0)
    quad = rho / s
    lin = s - rho * (offset / s + x0)
    root = jnp.sqrt(jnp.square(lin) + 4.0 * quad * counts * s)
    lam = jnp.where(
        lin >= 0, 2.0 * counts * s / jnp.maximum(lin + root, 1e-30), (root - lin) / (2.0 * quad)
    )
    correction = jnp.where(measured, 2.0 * ((lam - offset) / s - x0), 0.0)
    if mask is not None:
        correction = correction * mask
    return jnp.where(on, correction, 0.0).astype(jnp.float32)


def _weighted_least_squares_step(denoised, rho, y, s, r, b, mask, operator, iterations: int):
    """2 (x* - x0) for an operator that mixes pixels (a PSF), by conjugate gradients.

    x* = argmin_x sum_m w_m (y_m - b - s (A x)_m)^2 / 2 + rho |x - x0|^2 / 2: the proximal
    point of the Gaussian approximation of the likelihood with its variance frozen at x0,
    w = mask / (s (A x0) + b + r^2) (DiffPIR's data step for a linear operator). The normal
    equations (s^2 A^T W A + rho) d = s A^T W (y - b - s A x0) for d = x - x0 are symmetric
    positive definite; `iterations` CG steps from d = 0, each image of the batch its own
    system (rho: scalar or [B, 1, 1, 1]). Returns [B, H, W, C] in model space (2 d).
    """
    x0 = 0.5 * (denoised + 1.0)
    predicted = operator.forward(x0)
    w = 1.0 / noise.variance(noise.mean_electrons(predicted, s, b), r)
    if mask is not None:
        w = w * mask
    normal = lambda d: jnp.square(s) * operator.adjoint(w * operator.forward(d)) + rho * d
    dot = lambda u, v: jnp.sum(u * v, axis=(-3, -2, -1), keepdims=True)

    def step(_, carry):
        d, residual, direction, norm = carry
        applied = normal(direction)
        alpha = norm / jnp.maximum(dot(direction, applied), 1e-30)
        d = d + alpha * direction
        residual = residual - alpha * applied
        new_norm = dot(residual, residual)
        direction = residual + new_norm / jnp.maximum(norm, 1e-30) * direction
        return d, residual, direction, new_norm

    rhs = s * operator.adjoint(w * (y - b - s * predicted))
    start = (jnp.zeros_like(x0), rhs, rhs, dot(rhs, rhs))
    d = jax.lax.fori_loop(0, iterations, step, start)[0]
    return 2.0 * d


def dps_correction(
    denoise_fn,
    x,
    sigma,
    *,
    y,
    s,
    r,
    b,
    mask=None,
    settings: GuidanceSettings = GuidanceSettings(),
    operator=IDENTITY,
):
    """(D(x), J^T step): the denoised estimate and its DPS correction (Chung et al. 2022).

    step = guidance_step(model_space_grad(D(x))) and J^T step its vector-Jacobian product
    through D at x, i.e. the step's pull on log p(y | D(x_t)) taken back to the noisy state.
    x: [B, H, W, C] model space; sigma: scalar or [B]. Returns two [B, H, W, C] float32.
    """
    denoised, vjp_fn = jax.vjp(lambda x_t: denoise_fn(x_t, sigma), x)
    grad = model_space_grad(
        denoised, y, s, r, b, likelihood=settings.likelihood, mask=mask, operator=operator
    )
    (correction,) = vjp_fn(guidance_step(grad, denoised, sigma, s, r, b, settings, operator))
    return denoised, correction


def _x0_hook(settings, operator, y, s, r, b, mask, x, denoised, sigma):
    del x  # the seed design corrects the denoised estimate only
    return x0_correction(
        denoised, sigma, y=y, s=s, r=r, b=b, mask=mask, settings=settings, operator=operator
    )


def _prox_hook(settings, operator, y, s, r, b, mask, x, denoised, sigma):
    del x  # the proximal point of the denoised estimate
    return proximal_correction(
        denoised, sigma, y=y, s=s, r=r, b=b, mask=mask, settings=settings, operator=operator
    )


def _dps_denoise(settings, operator, denoise_fn, y, s, r, b, mask, x, sigma):
    denoised, correction = dps_correction(
        denoise_fn, x, sigma, y=y, s=s, r=r, b=b, mask=mask, settings=settings, operator=operator
    )
    return denoised + correction


@functools.lru_cache(maxsize=64)
def _bound(fn, settings: GuidanceSettings, operator):
    """fn with its settings and operator bound, one object per (fn, settings, operator):
    jitted samplers key their compiled programs on it."""
    return functools.partial(fn, settings, operator)


def x0_guidance(
    y,
    s,
    r,
    b,
    *,
    mask=None,
    settings: GuidanceSettings = GuidanceSettings(),
    operator=IDENTITY,
):
    """A sampler hook `guidance_fn(x, denoised, sigma) -> x0_correction(...)` (settings.mode
    "prox": `proximal_correction(...)`).

    y: electrons like A(x); mask: same or None; s, r, b: scalars or [B, 1, 1, 1]; operator: the
    forward operator (static: a hashable pdr_jax.physics.operators object).
    Returned as a `jax.tree_util.Partial` whose arrays (y, s, r, b, mask) are pytree leaves:
    a jitted sampler traces them instead of baking them in, and reuses its compiled program
    for new data with the same settings and shapes.
    """
    hook = _prox_hook if settings.mode == "prox" else _x0_hook
    return Partial(_bound(hook, settings, operator), y, s, r, b, mask)


def dps_denoiser(
    denoise_fn,
    y,
    s,
    r,
    b,
    *,
    mask=None,
    settings: GuidanceSettings = GuidanceSettings(mode="dps"),
    operator=IDENTITY,
):
    """Wrap `denoise_fn(x, sigma) -> D` into `denoise_fn(x, sigma) -> D + dps_correction`.

    A `jax.tree_util.Partial` with the arrays as leaves, as x0_guidance; pass a Partial
    denoise_fn (e.g. over network variables) to keep those traced too.
    """
    if not isinstance(denoise_fn, Partial):
        denoise_fn = Partial(denoise_fn)
    return Partial(_bound(_dps_denoise, settings, operator), denoise_fn, y, s, r, b, mask)


def make_guidance(
    denoise_fn,
    y,
    s,
    r,
    b,
    *,
    mask=None,
    settings: GuidanceSettings = GuidanceSettings(),
    operator=IDENTITY,
):
    """(denoise_fn, guidance_fn) for a sampler: settings.mode "x0" and "prox" add a hook and
    keep the denoiser, "dps" wraps the denoiser and adds no hook.

    kappa = 0 returns (denoise_fn, None), the unguided sampler's own program, so results are
    bit-identical to unguided sampling. A zero correction passed through the hook is exactly
    zero too, but the program around it compiles differently (XLA fuses the denoiser's
    transcendentals with other ops), which moves results by ~1e-6.
    """
    if settings.kappa == "auto":
        raise ValueError("kappa 'auto' must be resolved first (pdr_jax.restore.auto_kappa)")
    if settings.kappa == 0:
        return denoise_fn, None
    if settings.mode in ("x0", "prox"):
        return denoise_fn, x0_guidance(y, s, r, b, mask=mask, settings=settings, operator=operator)
    return (
        dps_denoiser(denoise_fn, y, s, r, b, mask=mask, settings=settings, operator=operator),
        None,
    )
