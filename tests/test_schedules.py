"""Discrete-time schedules and the eps / x0 / v parameterisations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdr_jax import schedules


def test_linear_and_scaled_linear_endpoints():
    betas = schedules.linear_betas(1000)
    assert betas.shape == (1000,) and betas.dtype == np.float64
    assert (betas[0], betas[-1]) == pytest.approx((1e-4, 0.02), rel=1e-12)
    scaled = schedules.scaled_linear_betas(1000)
    assert (scaled[0], scaled[-1]) == pytest.approx((0.00085, 0.012), rel=1e-12)
    np.testing.assert_allclose(np.diff(np.sqrt(scaled)), np.diff(np.sqrt(scaled))[0], rtol=1e-9)


def test_cosine_alpha_bar_follows_nichol_dhariwal_eq_17():
    """abar_t = f(t/T) / f(0), f(tau) = cos^2((tau + s)/(1 + s) pi/2), until beta hits 0.999."""
    T, s = 1000, 0.008
    alpha_bar = schedules.alpha_bars(schedules.cosine_betas(T, s=s))
    tau = np.arange(1, T + 1) / T
    f = np.cos((tau + s) / (1 + s) * math.pi / 2) ** 2 / np.cos(s / (1 + s) * math.pi / 2) ** 2
    unclipped = schedules.cosine_betas(T) < 0.999
    assert unclipped[:-1].all() and not unclipped[-1]  # only the last beta is clipped
    np.testing.assert_allclose(alpha_bar[:-1], f[:-1], rtol=1e-9)


def test_sqrt_alpha_bar_follows_diffusion_lm():
    T, s = 200, 1e-4
    alpha_bar = schedules.alpha_bars(schedules.sqrt_betas(T, s=s))
    expected = (1 - np.sqrt(np.arange(1, T + 1) / T + s)) / (1 - np.sqrt(s))
    ok = schedules.sqrt_betas(T, s=s) < 0.999
    np.testing.assert_allclose(alpha_bar[ok], expected[ok], rtol=1e-9)


@pytest.mark.parametrize("name", sorted(schedules.BETA_SCHEDULES))
def test_every_schedule_is_a_valid_decreasing_alpha_bar(name):
    betas = schedules.BETA_SCHEDULES[name](100)
    alpha_bar = schedules.alpha_bars(betas)
    assert np.all((betas > 0) & (betas < 1))
    assert np.all(np.diff(alpha_bar) < 0) and 0 < alpha_bar[-1] < alpha_bar[0] < 1
    sigmas = schedules.sigmas_from_alpha_bars(alpha_bar)
    np.testing.assert_allclose(1 / (1 + sigmas**2), alpha_bar, rtol=1e-12)


def test_user_betas_are_checked():
    np.testing.assert_allclose(schedules.alpha_bars([0.5, 0.5]), [0.5, 0.25])
    for bad in ([0.0, 0.1], [0.1, 1.0], [[0.1]], []):
        with pytest.raises(ValueError):
            schedules.alpha_bars(bad)


def test_spaced_timesteps():
    np.testing.assert_array_equal(schedules.spaced_timesteps(10, 10), np.arange(9, -1, -1))
    t = schedules.spaced_timesteps(1000, 50)
    assert t.dtype == np.int32 and len(t) == 50 and t[0] == 999 and t[-1] == 0
    assert np.all(np.diff(t) < 0)
    np.testing.assert_array_equal(schedules.spaced_timesteps(1000, 1), [999])
    with pytest.raises(ValueError):
        schedules.spaced_timesteps(10, 11)


def test_timestep_from_sigma_and_round_sigma():
    sigmas = schedules.sigmas_from_alpha_bars(schedules.alpha_bars(schedules.linear_betas(100)))
    grid = jnp.asarray(sigmas, jnp.float32)
    t = schedules.timestep_from_sigma(grid[jnp.array([0, 17, 99])], grid)
    np.testing.assert_array_equal(t, [0, 17, 99])
    mid = jnp.sqrt(grid[17] * grid[18])  # geometric midpoint: halfway in log sigma
    np.testing.assert_allclose(schedules.timestep_from_sigma(mid, grid), 17.5, atol=1e-4)
    assert schedules.timestep_from_sigma(1e6, grid) == 99
    assert schedules.timestep_from_sigma(1e-6, grid) == 0
    rounded = schedules.round_sigma_to_grid(jnp.array([grid[17] * 1.001, 1e6]), grid)
    np.testing.assert_array_equal(rounded, [grid[17], grid[99]])


def _draws(shape=(4, 3, 3, 2)):
    key_x0, key_eps, key_t = jax.random.split(jax.random.key(0), 3)
    x0 = jax.random.normal(key_x0, shape)
    eps = jax.random.normal(key_eps, shape)
    alpha_bar = jax.random.uniform(key_t, (shape[0], 1, 1, 1), minval=0.01, maxval=0.99)
    return x0, eps, alpha_bar


@pytest.mark.parametrize("parameterization", schedules.PARAMETERIZATIONS)
def test_prediction_of_the_training_target_recovers_x0_and_eps(parameterization):
    x0, eps, alpha_bar = _draws()
    x_t = schedules.diffuse(x0, eps, alpha_bar)
    target = schedules.training_target(x0, eps, alpha_bar, parameterization)
    x0_hat, eps_hat = schedules.predicted_x0_and_eps(target, x_t, alpha_bar, parameterization)
    np.testing.assert_allclose(x0_hat, x0, atol=2e-5)
    np.testing.assert_allclose(eps_hat, eps, atol=2e-5)


def test_v_target_and_conversions():
    """v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022); conversions round-trip."""
    x0, eps, alpha_bar = _draws()
    x_t = schedules.diffuse(x0, eps, alpha_bar)
    v = schedules.training_target(x0, eps, alpha_bar, "v")
    np.testing.assert_allclose(v, jnp.sqrt(alpha_bar) * eps - jnp.sqrt(1 - alpha_bar) * x0)
    # (x_t, v) is a rotation of (x0, eps): norms are preserved per element pair.
    np.testing.assert_allclose(x_t**2 + v**2, x0**2 + eps**2, rtol=1e-5)
    for source in schedules.PARAMETERIZATIONS:
        for target in schedules.PARAMETERIZATIONS:
            pred = schedules.training_target(x0, eps, alpha_bar, source)
            converted = schedules.convert_prediction(pred, x_t, alpha_bar, source, target)
            expected = schedules.training_target(x0, eps, alpha_bar, target)
            np.testing.assert_allclose(
                converted, expected, atol=3e-5, err_msg=f"{source}->{target}"
            )
    np.testing.assert_allclose(schedules.x0_from_eps(x_t, eps, alpha_bar), x0, atol=2e-5)
    np.testing.assert_allclose(schedules.eps_from_x0(x_t, x0, alpha_bar), eps, atol=2e-5)


def test_edm_scaling_of_a_ddpm_sample():
    """x_t / sqrt(abar_t) = x0 + sigma_t eps: the bridge the continuous samplers rely on."""
    x0, eps, alpha_bar = _draws()
    sigma = schedules.sigmas_from_alpha_bars(np.asarray(alpha_bar))
    x_t = schedules.diffuse(x0, eps, alpha_bar)
    np.testing.assert_allclose(x_t / jnp.sqrt(alpha_bar), x0 + sigma * eps, atol=1e-4)


def test_unknown_parameterization():
    x0, eps, alpha_bar = _draws()
    with pytest.raises(ValueError, match="parameterization"):
        schedules.training_target(x0, eps, alpha_bar, "score")
    with pytest.raises(ValueError, match="parameterization"):
        schedules.predicted_x0_and_eps(x0, x0, alpha_bar, "score")
