"""Poisson-Gaussian simulation and the three log-likelihoods: moments, gradients, normalisation,
agreement with Monte Carlo, the high-count Gaussian limit and the truncation of the exact sum."""

import functools
import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdr_jax.physics import noise

KINDS = ("wls", "gaussian", "exact")


def _lgamma(values):
    return np.vectorize(math.lgamma)(values)


def _exact_density_float64(y, lam, r):
    """Reference p(y | lam) in float64 by a direct sum over k = 0 .. lam + 60 sqrt(lam) + 60."""
    k = np.arange(0, int(lam + 60 * math.sqrt(lam) + 60))[:, None]
    log_terms = k * np.log(lam) - lam - _lgamma(k + 1.0) - 0.5 * ((y - k) / r) ** 2
    log_terms -= math.log(r) + 0.5 * math.log(2 * math.pi)
    top = log_terms.max(0)
    return np.exp(top + np.log(np.exp(log_terms - top).sum(0)))


def test_simulate_mean_and_variance_match_lambda_and_lambda_plus_r2():
    # 100k draws per setting; tolerances are 5 standard errors of the sample mean and variance
    # (relative SE of a variance: sqrt((kurtosis excess + 2) / N), Poisson excess 1 / lambda).
    n = 100_000
    s = jnp.array([2.0, 10.0, 100.0, 1000.0, 5.0])[:, None]
    x = jnp.array([0.1, 0.5, 0.3, 0.9, 0.0])[:, None]
    r = jnp.array([0.5, 2.0, 3.0, 10.0, 1.0])[:, None]
    b = jnp.array([0.0, 1.0, 0.5, 2.0, 0.3])[:, None]
    y = jax.jit(noise.simulate)(jax.random.key(0), jnp.broadcast_to(x, (5, n)), s, r, b)
    chex.assert_shape(y, (5, n))
    lam = np.asarray(s * x + b)[:, 0]
    var = lam + np.asarray(r)[:, 0] ** 2
    mean_hat, var_hat = np.asarray(y.mean(1)), np.asarray(y.var(1))
    assert np.all(np.abs(mean_hat - lam) < 5 * np.sqrt(var / n))
    excess = lam / var**2  # Poisson fourth cumulant lambda over var^2
    assert np.all(np.abs(var_hat / var - 1) < 5 * np.sqrt((2 + excess) / n))


def test_simulate_per_example_parameters_jit_and_nonfinite_input():
    x = jnp.full((3, 4, 4, 1), 0.5)
    s = jnp.array([1.0, 10.0, 100.0]).reshape(3, 1, 1, 1)
    key = jax.random.key(1)
    y = noise.simulate(key, x, s, 1.0, 0.5)
    chex.assert_shape(y, (3, 4, 4, 1))
    simulate = jax.jit(noise.simulate)
    chex.assert_trees_all_close(y, simulate(key, x, s, 1.0, 0.5))
    # r = 0 gives whole-number counts; x below -b/s is clipped to a zero rate.
    counts = simulate(key, x.at[0].set(-1.0), s, 0.0, 0.5)
    np.testing.assert_array_equal(counts, np.round(counts))
    np.testing.assert_array_equal(counts[0], 0.0)
    with pytest.raises(AssertionError):
        noise.simulate(key, x.at[0, 0, 0, 0].set(jnp.nan), s, 1.0, 0.5)


def _grid():
    """(y, x, s, r, b) over low/high counts, negative y, the exact window and its fallback."""
    rng = np.random.default_rng(0)
    n = 400
    s = rng.choice([0.5, 3.0, 30.0, 300.0, 3000.0], n)
    x = rng.uniform(0.02, 1.0, n)
    r = rng.choice([0.3, 1.0, 3.0, 20.0], n)
    b = rng.choice([0.0, 0.5, 4.0], n)
    lam = s * x + b
    y = lam + np.sqrt(lam + r**2) * rng.normal(0, 1.5, n)
    return tuple(jnp.asarray(v, jnp.float32) for v in (y, x, s, r, b))


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_equals_autodiff(kind):
    y, x, s, r, b = _grid()
    total = lambda x_: jnp.sum(noise.LOG_LIKELIHOODS[kind](y, x_, s, r, b))
    closed, auto = jax.jit(lambda x_: (noise.GRADS[kind](y, x_, s, r, b), jax.grad(total)(x_)))(x)
    scale = jnp.abs(auto) + s / jnp.sqrt(s * x + b + r**2)  # the gradient's natural unit
    assert float(jnp.max(jnp.abs(closed - auto) / scale)) < 1e-4
    assert bool(jnp.all(jnp.isfinite(closed)))


def test_gradients_equal_their_formulas():
    y, x, s, r, b = _grid()
    lam = s * x + b
    var = lam + r**2
    chex.assert_trees_all_close(noise.wls_grad(y, x, s, r, b), s * (y - lam) / var, rtol=1e-5)
    gaussian = s * ((y - lam) / var + ((y - lam) ** 2 / var - 1) / (2 * var))
    chex.assert_trees_all_close(noise.gaussian_grad(y, x, s, r, b), gaussian, rtol=1e-4, atol=1e-6)
    # exact: s (E[k | y] / lambda - 1), E[k | y] from the float64 reference sum.
    for yi, li, ri, si in [(3.2, 2.5, 0.7, 5.0), (0.0, 0.4, 1.0, 1.0), (120.0, 100.0, 2.0, 100.0)]:
        k = np.arange(0, 400)
        log_w = k * np.log(li) - _lgamma(k + 1.0) - 0.5 * ((yi - k) / ri) ** 2
        w = np.exp(log_w - log_w.max())
        expected = si * ((w * k).sum() / w.sum() / li - 1)
        got = noise.exact_grad(yi, li / si, si, ri, 0.0)
        assert float(got) == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_log_poisson_is_accurate_in_float32():
    k = np.array([0, 1, 5, 9, 10, 11, 50, 100, 1000, 9990, 10000, 10100, 100_000], np.float64)
    for lam in (1e-3, 0.3, 5.0, 100.0, 1e4, 1e5):
        reference = k * np.log(lam) - lam - _lgamma(k + 1)
        got = np.asarray(noise.log_poisson(jnp.asarray(k, jnp.float32), jnp.float32(lam)))
        relevant = reference > -1000
        np.testing.assert_allclose(got[relevant], reference[relevant], atol=5e-5 * max(1, lam**0.5))


@jax.jit
def _exact_jit(y, lam, r):
    """The exact log-density of y given a rate lam (x = 0, s = 0, b = lam)."""
    return noise.exact_log_likelihood(y, 0.0, 0.0, r, lam)


@pytest.mark.parametrize(
    "lam, r", [(0.1, 0.5), (1.0, 1.0), (5.0, 0.2), (30.0, 3.0), (1000.0, 2.0), (1e4, 2.0)]
)
def test_exact_density_integrates_to_one(lam, r):
    # Riemann sum over lam +- 10 sd on 16384 points, finer than r / 8: the density is smooth
    # on that scale. One grid size, so every case runs the same compiled program.
    sd = math.sqrt(lam + r**2)
    y = np.linspace(lam - 10 * sd - 5, lam + 10 * sd + 10, 16384)
    step = y[1] - y[0]
    assert step < r / 8
    log_p = _exact_jit(jnp.asarray(y, jnp.float32), lam, r)
    assert float(jnp.sum(jnp.exp(log_p)) * step) == pytest.approx(1.0, abs=1e-4)


def test_exact_matches_float64_reference_and_large_window():
    # Where the 128-count window is used it agrees with a float64 direct sum and with a
    # 2048-count window: the truncation error is below float32 resolution.
    y, x, s, r, b = _grid()
    lam = s * x + b

    @jax.jit
    def compute(y, x, s, r, b):
        default = noise.exact_log_likelihood(y, x, s, r, b)
        wide = noise.exact_log_likelihood(y, x, s, r, b, num_counts=2048)
        r_floored = jnp.maximum(r, noise.MIN_READ_NOISE)
        return default, wide, noise._exact_window(y, s * x + b, r_floored, noise.NUM_COUNTS)[1]

    default, wide, used = compute(y, x, s, r, b)
    assert int(used.sum()) > 300
    np.testing.assert_allclose(default[used], wide[used], atol=2e-5, rtol=2e-6)
    for i in np.flatnonzero(np.asarray(used))[:40]:
        reference = np.log(_exact_density_float64(float(y[i]), float(lam[i]), float(r[i])))
        assert float(default[i]) == pytest.approx(float(reference[0]), abs=2e-4, rel=1e-5)


@pytest.mark.parametrize("lam, r", [(0.6, 0.3), (3.0, 0.7), (20.0, 3.0)])
def test_exact_matches_monte_carlo_histogram(lam, r):
    # 300k draws in 1000 bins (width <= 0.1, a fraction of r) over the bulk of the density.
    n = 300_000
    y = np.asarray(jax.jit(noise.simulate)(jax.random.key(7), jnp.zeros(n), 0.0, r, lam))
    edges = np.linspace(-4 * r - 1, lam + 6 * math.sqrt(lam + r**2) + 2, 1001)
    width = edges[1] - edges[0]
    assert width <= 0.1
    counts, _ = np.histogram(y, edges)
    # Bin probabilities: the density on 20 points per bin (midpoint rule).
    fine = edges[:-1, None] + (np.arange(20) + 0.5) / 20 * width
    density = np.exp(np.asarray(_exact_jit(jnp.asarray(fine, jnp.float32), lam, r)))
    expected = n * density.mean(1) * width
    keep = expected > 20
    z = (counts[keep] - expected[keep]) / np.sqrt(expected[keep])
    assert np.abs(z).max() < 5.5
    assert np.mean(z**2) == pytest.approx(1.0, abs=0.25)  # Pearson chi-square per bin
    assert expected[keep].sum() / n > 0.99


@functools.partial(jax.jit, static_argnames="kind")
def _densities(y, lam, r, kind):
    """Exact (512-count window, and whether it was used everywhere) and `kind` densities."""
    exact = noise.exact_log_likelihood(y, 0.0, 0.0, r, lam, num_counts=512)
    used = noise._exact_window(y, lam, r, 512)[1]
    return jnp.exp(exact), jnp.all(used), jnp.exp(noise.LOG_LIKELIHOODS[kind](y, 0.0, 0.0, r, lam))


def _total_variation(lam, r, kind):
    sd = math.sqrt(lam + r**2)
    y = np.linspace(lam - 8 * sd, lam + 8 * sd, 2001).astype(np.float32)
    exact, used, other = _densities(jnp.asarray(y), lam, r, kind)
    assert bool(used)
    return 0.5 * float(np.sum(np.abs(exact - other)) * (y[1] - y[0]))


def test_exact_tends_to_gaussian_at_high_counts():
    # Total-variation distance between the exact and Gaussian densities falls like the
    # skewness ~ lambda^-1/2 (r = 2).
    distances = [_total_variation(lam, 2.0, "gaussian") for lam in (10.0, 100.0, 1000.0, 1e4)]
    assert all(a > b for a, b in itertools.pairwise(distances))
    assert distances[-1] < 0.005
    # The automatic switch to the Gaussian form (window too narrow) costs little where it
    # happens: both counts and r^2 of order 60 or more.
    assert _total_variation(150.0, 12.0, "gaussian") < 0.02
    y = jnp.linspace(100.0, 200.0, 50)
    _, used = noise._exact_window(y, 150.0, 12.0, noise.NUM_COUNTS)
    assert not bool(used.any())
    np.testing.assert_array_equal(
        noise.exact_log_likelihood(y, 0.0, 0.0, 12.0, 150.0),
        noise.gaussian_log_likelihood(y, 0.0, 0.0, 12.0, 150.0),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_likelihoods_are_jittable_finite_and_masked(kind):
    y, x, s, r, b = _grid()
    # Edge cases: zero rate, r = 0, x outside [0, 1], an outlier far above the rate.
    y = jnp.concatenate([y, jnp.array([0.0, 2.0, -3.0, 1e5])])
    x = jnp.concatenate([x, jnp.array([0.0, 0.5, -0.2, 0.5])])
    s = jnp.concatenate([s, jnp.array([10.0, 4.0, 1.0, 20.0])])
    r = jnp.concatenate([r, jnp.array([0.0, 0.0, 1.0, 2.0])])
    b = jnp.concatenate([b, jnp.array([0.0, 0.0, 0.0, 0.0])])
    fn = jax.jit(lambda *a: (noise.LOG_LIKELIHOODS[kind](*a), noise.GRADS[kind](*a)))
    value, grad = fn(y, x, s, r, b)
    chex.assert_tree_all_finite((value, grad))
    chex.assert_trees_all_close(value, noise.LOG_LIKELIHOODS[kind](y, x, s, r, b), rtol=2e-6)
    unit = s / jnp.sqrt(jnp.maximum(s * x + b, 0) + r**2 + 1)  # the gradient's natural scale
    chex.assert_trees_all_close(grad / unit, noise.GRADS[kind](y, x, s, r, b) / unit, atol=1e-5)
    mask = jnp.arange(y.shape[0]) % 2
    total = noise.log_likelihood(y, x, s, r, b, kind=kind, mask=mask)
    assert float(total) == pytest.approx(float(jnp.sum(value * mask)), rel=1e-5)
    masked_grad = noise.log_likelihood_grad(y, x, s, r, b, kind=kind, mask=mask)
    np.testing.assert_array_equal(masked_grad[mask == 0], 0.0)
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        noise.log_likelihood(y, x, s, r, b, kind="poisson")


def test_the_settings_name_exactly_the_likelihoods_implemented_here():
    """pdr_jax.settings.LIKELIHOODS (jax-free, for GuidanceSettings and --likelihood) is the
    list of noise.LOG_LIKELIHOODS and noise.GRADS: a likelihood added here must be named there."""
    from pdr_jax import settings

    assert tuple(noise.LOG_LIKELIHOODS) == tuple(noise.GRADS) == settings.LIKELIHOODS
