"""Physics metrics: chi-square at the truth, residual whiteness, bias."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdr_jax import metrics
from pdr_jax.physics import noise

_simulate = jax.jit(noise.simulate)  # one compiled program per shape instead of op by op
_autocorrelation = jax.jit(metrics.residual_autocorrelation, static_argnames="max_lag")
_whiteness = jax.jit(metrics.whiteness, static_argnames="max_lag")


def test_chi_square_of_the_truth_on_a_million_pixels():
    # Its standard error is ~sqrt(2 / 10^6) ~ 0.0015 (a bit more at low counts).
    x = jax.random.uniform(jax.random.key(0), (4, 500, 500, 1))
    s = jnp.array([1.0, 10.0, 100.0, 1000.0]).reshape(4, 1, 1, 1)
    y = jax.jit(noise.simulate)(jax.random.key(1), x, s, 2.0, 0.5)
    chi2 = float(metrics.chi_square(y, x, s, 2.0, 0.5))
    assert chi2 == pytest.approx(1.0, abs=0.01)
    # An oversmoothed estimate (the image mean) is far from 1; masked pixels are left out.
    assert float(metrics.chi_square(y, jnp.full_like(x, 0.5), s, 2.0, 0.5)) > 5
    mask = jnp.ones_like(x).at[:, :10].set(0.0)
    corrupted = y.at[:, :10].set(1e6)
    assert float(metrics.chi_square(corrupted, x, s, 2.0, 0.5, mask)) == pytest.approx(
        chi2, abs=0.01
    )


def _smoothed(z):
    """Average of each pixel and its right neighbour: rho(0, 1) = 1/2, other lags 0."""
    return 0.5 * (z + jnp.roll(z, 1, axis=2))


def test_half_plane_keeps_one_of_each_conjugate_pair():
    """Against the definition: the row-major index of (u, v) is below that of (-u, -v)."""
    for height, width in [(1, 1), (2, 2), (3, 4), (7, 5), (8, 8), (16, 9)]:
        u, v = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        expected = u * width + v < ((-u) % height) * width + (-v) % width
        np.testing.assert_array_equal(metrics._half_plane(height, width), expected)
    # 8x8: 64 frequencies, 4 self-conjugate (DC and the Nyquist corners), 30 pairs.
    assert metrics._half_plane(8, 8).sum() == 30


def test_autocorrelation_and_flatness_tell_white_from_coloured():
    z = jax.random.normal(jax.random.key(2), (8, 64, 64, 1))
    n = z.size
    rho = _autocorrelation(z, max_lag=2)
    assert rho.shape == (5, 5) and float(rho[2, 2]) == pytest.approx(1.0)
    assert float(_whiteness(z)) < 5 / np.sqrt(n)
    assert float(metrics.spectral_flatness(z)) == pytest.approx(1.0, abs=0.02)
    coloured = _smoothed(z)
    rho = _autocorrelation(coloured, max_lag=2)
    assert float(rho[2, 3]) == pytest.approx(0.5, abs=0.02)
    assert float(rho[2, 1]) == pytest.approx(0.5, abs=0.02)
    assert float(rho[3, 2]) == pytest.approx(0.0, abs=0.02)
    assert float(metrics.spectral_flatness(coloured)) < 0.7
    # A single [H, W] image works too (flatness then has a single periodogram).
    assert float(metrics.spectral_flatness(z[0, :, :, 0])) == pytest.approx(1.0, abs=0.1)
    # Masked pixels do not count, even if they hold structure.
    mask = jnp.ones_like(z).at[:, :, :16].set(0.0)
    structured = z.at[:, :, :16].set(coloured[:, :, :16] * 50)
    assert float(_whiteness(structured, mask=mask)) < 5 / np.sqrt(n * 0.75)


def test_normalized_residuals_of_a_restoration_are_white():
    # 32768 pixels: the std's standard error is ~1 / sqrt(2 n) = 0.004 (measured |std - 1|
    # <= 0.008 over 31 seeds; 2 images, sd 0.008, reached 0.016). Without r^2 it is 1.09.
    x = jax.random.uniform(jax.random.key(3), (8, 64, 64, 1))
    y = _simulate(jax.random.key(4), x, 50.0, 1.5, 1.0)
    residuals = metrics.normalized_residuals(y, x, 50.0, 1.5, 1.0)
    assert float(jnp.std(residuals)) == pytest.approx(1.0, abs=0.02)
    assert float(_whiteness(residuals)) < 5 / np.sqrt(residuals.size)


def test_relative_bias():
    x = jax.random.uniform(jax.random.key(7), (16, 16), minval=0.1)
    assert float(metrics.relative_bias(1.1 * x, x)) == pytest.approx(0.1, rel=1e-5)
    assert float(metrics.relative_bias(x, x)) == 0.0
    levels, bias = metrics.relative_bias_by_level(x + 0.01, x, num_bins=4)
    assert levels.shape == bias.shape == (4,)
    assert np.all(np.diff(levels) > 0) and np.all(np.diff(bias) < 0)  # 0.01 / level
