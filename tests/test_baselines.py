"""Baselines: the generalized Anscombe transform, its unbiased inverse, GAT+BM3D/NLM, noisy."""

import numpy as np
import pytest
from scipy import stats

from pdr_jax import baselines


def _measure(rng, lam, r, size):
    return rng.poisson(lam, size) + r * rng.standard_normal(size)


def _gat_moments(lam, r):
    """(E f(y), E f(y)^2) for y ~ Poisson(lam) + N(0, r^2): a sum over the counts k of a Riemann
    sum over the read noise (+-12 sd, 4801 points; against 48001 points over +-14 sd the
    inverse moves by < 3e-5). Exact where 10^6 draws left noise of up to 0.2% in lambda_hat."""
    k = np.arange(int(lam + 40 * np.sqrt(lam) + 40))
    p = stats.poisson.pmf(k, lam)
    if r == 0:
        f = baselines.gat_forward(k, 0.0)
        return p @ f, p @ f**2
    z = np.linspace(-12, 12, 4801)
    w = stats.norm.pdf(z) * (z[1] - z[0])
    f = baselines.gat_forward(k[:, None] + r * z, r)
    return p @ (f @ w), p @ (f**2 @ w)


@pytest.mark.parametrize("r", [0.0, 1.0, 2.0, 5.0])
def test_unbiased_inverse_of_the_stabilised_expectation(r):
    """inverse(E f(y)) recovers lambda. With E f(y) exact, what is left is the closed form's
    own error, measured over r = 0-5: <= 1.1% for lambda >= 2, 3.2% at lambda = 1, 0.034
    electrons at lambda <= 0.5; the bounds (1.5%, 4%, 0.04) sit 18-34% above it. The algebraic
    inverse (D/2)^2 - 3/8 - r^2 is far off at low counts (0.18-0.28 at lambda = 1)."""
    for lam in (0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 100.0, 1000.0):
        lam_hat = float(baselines.gat_inverse(_gat_moments(lam, r)[0], r))
        if lam >= 2:
            assert lam_hat == pytest.approx(lam, rel=0.015)
        elif lam >= 1:
            assert lam_hat == pytest.approx(lam, rel=0.04)
        else:
            assert lam_hat == pytest.approx(lam, abs=0.04)
    algebraic = (_gat_moments(1.0, r)[0] / 2) ** 2
    assert abs(algebraic - 0.375 - r**2 - 1.0) > 0.05


@pytest.mark.parametrize("r", [0.0, 2.0])
def test_variance_is_stabilised(r):
    """Var f(y) ~ 1 (within 0.05; exact values at most 0.042 off, at r = 2, lambda = 5) once
    lambda is a few electrons; below that it is 0.47-1.17 (pure Poisson counts at lambda = 0.5
    are the least stabilised). 400k draws scattered by sd 0.003 about these values."""
    for lam in (0.5, 1.0, 5.0, 20.0, 200.0):
        mean, second = _gat_moments(lam, r)
        assert second - mean**2 == pytest.approx(1.0, abs=0.05 if lam >= 5 else 0.6)


def test_forward_and_inverse_formulas():
    """Hand values: f(y) = 2 sqrt(y + 3/8 + r^2); I(2 sqrt(3/8)) = 0; I(D) -> D^2/4 - 1/8 - r^2."""
    np.testing.assert_allclose(
        baselines.gat_forward([0.0, 10.0], 2.0), 2 * np.sqrt([4.375, 14.375])
    )
    assert baselines.gat_forward(-10.0, 1.0) == 0.0
    assert baselines.gat_inverse(baselines.D_MIN, 0.0) == pytest.approx(0.0, abs=1e-12)
    assert baselines.gat_inverse([0.0, 0.5, 1.0], 0.0).tolist() == [0.0, 0.0, 0.0]
    assert float(baselines.gat_inverse(200.0, 3.0)) == pytest.approx(1e4 - 0.125 - 9, rel=1e-6)
    # alpha, mu: a gain and offset undo each other.
    y = np.array([3.0, 50.0, 400.0])
    D = baselines.gat_forward(2.5 * y + 7.0, 1.5, alpha=2.5, mu=7.0)
    np.testing.assert_allclose(D, baselines.gat_forward(y, 1.5 / 2.5), rtol=1e-12)
    np.testing.assert_allclose(
        baselines.gat_inverse(D, 1.5, alpha=2.5, mu=7.0),
        2.5 * baselines.gat_inverse(D, 1.5 / 2.5) + 7.0,
    )


def _test_image(size=32):
    yy, xx = np.mgrid[:size, :size] / size
    return (0.2 + 0.6 * (xx > 0.5) + 0.15 * np.sin(6 * yy)).astype(np.float32)


@pytest.mark.parametrize("method", [baselines.gat_bm3d, baselines.gat_nlm])
def test_stabilised_denoisers_beat_the_noisy_estimate(method):
    x = _test_image()
    rng = np.random.default_rng(2)
    s, r, b = 20.0, 2.0, 1.0
    y = _measure(rng, s * x + b, r, x.shape)
    noisy = baselines.noisy_estimate(y, s, r, b)
    x_hat = method(y, s, r, b)
    assert x_hat.shape == x.shape and x_hat.dtype == np.float32
    assert x_hat.min() >= 0 and x_hat.max() <= 1
    mse_noisy, mse = np.mean((noisy - x) ** 2), np.mean((x_hat - x) ** 2)
    assert mse < 0.5 * mse_noisy
    # Little bias: the means agree within a few standard errors of the noisy mean.
    assert abs(x_hat.mean() - x.mean()) < 0.02
    # [H, W, C]: channel by channel.
    stacked = method(np.stack([y, y], -1), s, r, b)
    np.testing.assert_allclose(stacked[..., 1], x_hat, atol=1e-4)  # BM3D varies at ~1e-6


def test_noisy_estimate_and_constant_images():
    y = np.array([[-3.0, 5.0], [25.0, 45.0]])
    np.testing.assert_allclose(baselines.noisy_estimate(y, 40.0, 2.0, 5.0), [[0, 0], [0.5, 1]])
    flat = baselines.gat_bm3d(np.full((16, 16), 30.0), 50.0, 1.0, 0.0)
    assert np.ptp(flat) == 0 and flat[0, 0] == pytest.approx(0.6, abs=0.01)


def test_colour_bm3d_beats_bm3d_per_channel_on_a_colour_photograph():
    """GAT + bm3d_rgb (opponent colour space) against GAT + BM3D per channel on a 64 px crop of
    scikit-image's chelsea at s = 10, r = 2: +0.89 to +1.25 dB over noise seeds 0-3 (the issue
    measured 1.5-2.0 dB on larger photographs); asserted > 0.45 dB. A gray image is refused."""
    import skimage.data

    x = skimage.data.chelsea()[40:104, 120:184] / 255.0
    rng = np.random.default_rng(0)
    y = rng.poisson(10 * x) + rng.normal(0, 2, x.shape)
    psnr = lambda estimate: 10 * np.log10(1 / np.mean((estimate - x) ** 2))
    colour, per_channel = baselines.gat_cbm3d(y, 10, 2.0), baselines.gat_bm3d(y, 10, 2.0)
    assert colour.shape == x.shape and colour.dtype == np.float32
    assert psnr(colour) > psnr(per_channel) + 0.45, (psnr(colour), psnr(per_channel))
    with pytest.raises(ValueError, match=r"needs an \[H, W, 3\] image"):
        baselines.gat_cbm3d(y[..., 0], 10, 2.0)
