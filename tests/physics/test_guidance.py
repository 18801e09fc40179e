"""Guidance corrections: units, masking, threshold, clipping, damping, DPS through the
denoiser, and exact equality with the unguided sampler at kappa = 0."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdr_jax import samplers
from pdr_jax.physics import guidance, noise
from pdr_jax.physics.guidance import GuidanceSettings

S, R, B = 20.0, 1.5, 0.5


@functools.cache
def _data(batch=2, size=4):
    key_x, key_y, key_d = jax.random.split(jax.random.key(0), 3)
    x = jax.random.uniform(key_x, (batch, size, size, 1), minval=0.1, maxval=0.9)
    y = noise.simulate(key_y, x, S, R, B)
    denoised = 2 * x - 1 + 0.3 * jax.random.normal(key_d, x.shape)
    return x, y, denoised


@pytest.mark.parametrize("likelihood", ["wls", "gaussian", "exact"])
def test_model_space_gradient_is_half_the_intensity_gradient(likelihood):
    _, y, denoised = _data()
    total = lambda d: jnp.sum(noise.LOG_LIKELIHOODS[likelihood](y, (d + 1) / 2, S, R, B))

    @jax.jit
    def compute(d):
        got = guidance.model_space_grad(d, y, S, R, B, likelihood=likelihood)
        return got, jax.grad(total)(d), 0.5 * noise.GRADS[likelihood](y, (d + 1) / 2, S, R, B)

    got, auto, half = compute(denoised)
    chex.assert_trees_all_close(got, auto, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(got, half, rtol=1e-6)


def test_x0_correction_threshold_mask_clip_and_schedules():
    _, y, denoised = _data()
    settings = GuidanceSettings(kappa=0.5, grad_clip=10.0, damping=False)  # the seed design
    grad = guidance.model_space_grad(denoised, y, S, R, B)
    for sigma in (0.5, 3.0, 80.0):
        c = guidance.x0_correction(denoised, sigma, y=y, s=S, r=R, b=B, settings=settings)
        chex.assert_trees_all_close(c, 0.5 * sigma**2 * jnp.clip(grad, -10, 10), rtol=1e-6)
    # No correction at sigma <= 0.01, and per-example sigma [B] broadcasts.
    zero = guidance.x0_correction(denoised, 0.01, y=y, s=S, r=R, b=B, settings=settings)
    np.testing.assert_array_equal(zero, 0.0)
    per_example = guidance.x0_correction(
        denoised, jnp.array([0.005, 2.0]), y=y, s=S, r=R, b=B, settings=settings
    )
    np.testing.assert_array_equal(per_example[0], 0.0)
    assert float(jnp.abs(per_example[1]).max()) > 0
    # Masked pixels get no correction.
    mask = jnp.ones_like(y).at[:, :2].set(0.0)
    masked = guidance.x0_correction(denoised, 1.0, y=y, s=S, r=R, b=B, mask=mask)
    np.testing.assert_array_equal(masked[:, :2], 0.0)
    assert bool(jnp.all(masked[:, 2:] != 0))
    sigma = jnp.array([0.1, 1.0, 10.0])
    chex.assert_trees_all_close(
        [guidance.step_size(sigma, kappa=2.0, schedule=name) for name in guidance.GAMMA_SCHEDULES],
        [2 * sigma**2, 2 * sigma, jnp.full(3, 2.0), 2 * sigma**2 * 0.25 / (sigma**2 + 0.25)],
        rtol=1e-6,
    )


def test_damped_step_never_passes_the_maximum_likelihood_value():
    _, y, denoised = _data()
    ml = 2 * (y - B) / S - 1  # the per-pixel ML estimate in model space
    settings = GuidanceSettings(kappa=1.0, damping=True, grad_clip=None)
    previous = jnp.zeros_like(denoised)
    for sigma in (0.1, 1.0, 10.0, 1e3):
        c = guidance.x0_correction(denoised, sigma, y=y, s=S, r=R, b=B, settings=settings)
        fraction = c / (ml - denoised)  # of the way to the ML value
        assert bool(jnp.all((fraction > 0) & (fraction < 1 + 1e-4)))
        assert bool(jnp.all(jnp.abs(c) > jnp.abs(previous)))
        previous = c
    chex.assert_trees_all_close(denoised + c, ml, atol=1e-3)  # sigma -> inf: the ML value


@pytest.mark.parametrize("s, r, b", [(S, R, B), (2.0, 3.0, 0.0), (250.0, 0.5, 12.5)])
def test_proximal_step_is_the_exact_minimiser(s, r, b):
    """x* of proximal_correction zeroes the derivative of lambda' - y' log lambda' +
    (x - x0)^2 / (2 gamma_x) (float32: 1e-3 of the terms' scale), beats its neighbours at
    +-0.01 (compared in float64: the smallest gap, 2.3e-5 over data seeds 0-5, is only 3.5-5x
    float32's rounding of the objective), tends to the ML value (y - b) / s as gamma grows and
    to x0 as it shrinks; masked and sub-threshold pixels get no step."""
    x, _, denoised = _data()
    y = noise.simulate(jax.random.key(3), x, s, r, b)
    x0 = 0.5 * (denoised + 1)
    prox = GuidanceSettings(mode="prox", kappa=1.0)

    y64, x0_64 = np.asarray(y, np.float64), np.asarray(x0, np.float64)

    def objective(x_, sigma):
        gamma_x = sigma**2 / 4
        lam = s * x_ + b + r**2
        return lam - np.maximum(y64 + r**2, 0) * np.log(lam) + (x_ - x0_64) ** 2 / (2 * gamma_x)

    for sigma in (0.05, 0.5, 5.0):
        x_star = x0 + 0.5 * guidance.proximal_correction(
            denoised, sigma, y=y, s=s, r=r, b=b, settings=prox
        )
        lam = s * x_star + b + r**2
        derivative = s - jnp.maximum(y + r**2, 0) * s / lam + (x_star - x0) / (sigma**2 / 4)
        scale = s + jnp.abs(y) * s / lam + jnp.abs(x_star - x0) / (sigma**2 / 4)
        np.testing.assert_array_less(np.abs(derivative) / scale, 1e-3)
        x_star64 = np.asarray(x_star, np.float64)
        for delta in (-1e-2, 1e-2):
            assert np.all(objective(x_star64, sigma) < objective(x_star64 + delta, sigma))
    far = x0 + 0.5 * guidance.proximal_correction(denoised, 1e4, y=y, s=s, r=r, b=b, settings=prox)
    chex.assert_trees_all_close(far, jnp.maximum(y + r**2, 0) / s - (b + r**2) / s, atol=1e-3)
    near = guidance.proximal_correction(
        denoised, 1e-3, y=y, s=s, r=r, b=b, settings=dataclasses.replace(prox, sigma_threshold=0.0)
    )
    inside = s * x0 + b + r**2 > 0  # elsewhere x0 is no point of the likelihood's domain
    np.testing.assert_allclose(jnp.where(inside, near, 0.0), 0.0, atol=1e-3)
    assert bool(jnp.all(s * (x0 + 0.5 * near) + b + r**2 > 0))
    np.testing.assert_array_equal(
        guidance.proximal_correction(denoised, 0.005, y=y, s=s, r=r, b=b, settings=prox), 0.0
    )
    mask = jnp.ones_like(y).at[:, :2].set(0.0)
    masked = guidance.proximal_correction(
        denoised, 1.0, y=y, s=s, r=r, b=b, mask=mask, settings=prox
    )
    np.testing.assert_array_equal(masked[:, :2], 0.0)


def test_dps_takes_the_step_back_through_the_denoiser():
    # For a linear denoiser D(x) = a x + c, J^T v = a v.
    _, y, x_t = _data()
    a, c = 0.7, 0.1
    denoise_fn = lambda x, sigma: a * x + c
    for settings in (
        GuidanceSettings(mode="dps", kappa=0.5, damping=False),
        GuidanceSettings(mode="dps", kappa=1.0, damping=True, schedule="isotropic"),
    ):
        denoised, correction = guidance.dps_correction(
            denoise_fn, x_t, 2.0, y=y, s=S, r=R, b=B, settings=settings
        )
        x0 = guidance.x0_correction(denoised, 2.0, y=y, s=S, r=R, b=B, settings=settings)
        chex.assert_trees_all_close(correction, a * x0, rtol=1e-6)
        guided = guidance.dps_denoiser(denoise_fn, y, S, R, B, settings=settings)
        chex.assert_trees_all_close(guided(x_t, 2.0), denoised + correction, rtol=1e-6)


def _toy_denoiser(x, sigma):
    """A nonlinear stand-in for a network: shrink towards a smooth image."""
    return jnp.tanh(x) / (1 + sigma**2) + 0.1 * jnp.sin(sigma) * jnp.mean(
        x, axis=(1, 2), keepdims=True
    )


@pytest.mark.parametrize("mode", ["x0", "dps", "prox"])
def test_kappa_zero_is_bit_identical_to_the_unguided_sampler(mode):
    _, y, x_t = _data()
    # The corrections themselves are exact zeros ...
    for likelihood in ("wls", "exact"):
        settings = GuidanceSettings(mode=mode, likelihood=likelihood, kappa=0.0, damping=True)
        x0 = guidance.x0_correction(x_t, 5.0, y=y, s=S, r=R, b=B, settings=settings)
        _, dps = guidance.dps_correction(
            _toy_denoiser, x_t, 5.0, y=y, s=S, r=R, b=B, settings=settings
        )
        prox = guidance.proximal_correction(x_t, 5.0, y=y, s=S, r=R, b=B, settings=settings)
        np.testing.assert_array_equal(x0, 0.0)
        np.testing.assert_array_equal(dps, 0.0)
        np.testing.assert_array_equal(prox, 0.0)
    # ... and the sampler's result is bit for bit the unguided one.
    latents = jax.random.normal(jax.random.key(3), y.shape)
    kwargs = {"num_steps": 6, "S_churn": 10.0, "key": jax.random.key(4)}
    unguided = samplers.edm_sampler(_toy_denoiser, latents, **kwargs)
    for settings in (
        GuidanceSettings(mode=mode, kappa=0.0),
        GuidanceSettings(mode=mode, kappa=0.0, damping=True, likelihood="exact"),
    ):
        denoise_fn, guidance_fn = guidance.make_guidance(
            _toy_denoiser, y, S, R, B, settings=settings
        )
        guided = samplers.edm_sampler(denoise_fn, latents, guidance_fn=guidance_fn, **kwargs)
        np.testing.assert_array_equal(guided, unguided)
    # kappa > 0 does change the result.
    denoise_fn, guidance_fn = guidance.make_guidance(
        _toy_denoiser, y, S, R, B, settings=GuidanceSettings(mode=mode, kappa=0.1)
    )
    guided = samplers.edm_sampler(denoise_fn, latents, guidance_fn=guidance_fn, **kwargs)
    assert not np.array_equal(guided, unguided)


def test_hooks_are_pytrees_with_one_function_per_setting():
    _, y, _ = _data()
    first = guidance.x0_guidance(y, S, R, B, settings=GuidanceSettings(kappa=0.3))
    second = guidance.x0_guidance(2 * y, S, R, B, settings=GuidanceSettings(kappa=0.3))
    other = guidance.x0_guidance(y, S, R, B, settings=GuidanceSettings(kappa=0.4))
    # Same settings -> same tree structure, so a jitted sampler reuses its compiled program.
    structure = jax.tree_util.tree_structure
    assert structure(first) == structure(second) != structure(other)
    assert any(leaf is y for leaf in jax.tree_util.tree_leaves(first))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("mode", "langevin", "unknown guidance mode 'langevin'"),
        ("likelihood", "poisson", "unknown likelihood 'poisson'"),
        ("schedule", "cosine", "unknown gamma schedule 'cosine'"),
        ("kappa", -1.0, "kappa must be >= 0"),
        ("grad_clip", 0.0, "grad_clip must be > 0 or None"),
    ],
)
def test_invalid_settings_are_named(field, value, message):
    assert GuidanceSettings() == GuidanceSettings(kappa=1.0, grad_clip=None, damping=True)  # tuned
    with pytest.raises(ValueError, match=message):
        GuidanceSettings(**{field: value})
