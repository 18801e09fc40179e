"""Image-quality metrics: PSNR/SSIM against scikit-image, MS-SSIM, FRC, Poisson deviance."""

import itertools

import numpy as np
import pytest
import skimage.data
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pdr_jax import metrics

SKIMAGE_SSIM = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}


def _pair(shape, noise_std=0.1, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    clean = rng.random(shape)
    noisy = np.clip(clean + noise_std * rng.standard_normal(shape), 0, 1)
    return noisy.astype(dtype), clean.astype(dtype)


@pytest.fixture(scope="module")
def camera():
    """A real picture, [176, 176] in [0, 1] (176 = 11 * 2^4: five whole MS-SSIM scales)."""
    return skimage.data.camera()[100:276, 150:326] / 255.0


@pytest.mark.parametrize("shape", [(40, 52), (33, 47, 3)])
@pytest.mark.parametrize("data_range", [1.0, 255.0])
def test_psnr_and_ssim_match_skimage(shape, data_range):
    noisy, clean = _pair(shape)
    noisy, clean = noisy * data_range, clean * data_range
    channel_axis = -1 if len(shape) == 3 else None
    expected_ssim = structural_similarity(
        noisy, clean, data_range=data_range, channel_axis=channel_axis, **SKIMAGE_SSIM
    )
    assert metrics.ssim(noisy, clean, data_range) == pytest.approx(expected_ssim, abs=1e-10)
    expected_psnr = peak_signal_noise_ratio(clean, noisy, data_range=data_range)
    assert metrics.psnr(noisy, clean, data_range) == pytest.approx(expected_psnr, abs=1e-10)


def test_float32_and_batches(camera):
    """float32 inputs (skimage then computes in float32): within 1e-4; [B, H, W, C] -> [B]."""
    rng = np.random.default_rng(1)
    clean = camera[:64, :64].astype(np.float32)
    noisy = np.clip(clean + 0.05 * rng.standard_normal(clean.shape), 0, 1).astype(np.float32)
    expected = structural_similarity(noisy, clean, data_range=1.0, **SKIMAGE_SSIM)
    assert metrics.ssim(noisy, clean) == pytest.approx(expected, abs=1e-4)
    batch = np.stack([noisy, clean])[..., None]
    truth = np.stack([clean, clean])[..., None]
    np.testing.assert_allclose(metrics.ssim(batch, truth), [metrics.ssim(noisy, clean), 1.0])
    psnrs = metrics.psnr(batch, truth)
    assert psnrs.shape == (2,) and psnrs[1] == np.inf
    assert psnrs[0] == pytest.approx(peak_signal_noise_ratio(clean, noisy, data_range=1.0), 1e-6)


def test_ssim_rejects_small_or_mismatched_images():
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(np.zeros((8, 20)), np.zeros((8, 20)))
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.psnr(np.zeros((8, 8)), np.zeros((8, 9)))


def _reference_ms_ssim(a, b, weights=metrics.MS_SSIM_WEIGHTS):
    """Independent MS-SSIM (scipy's Gaussian filter, border cropped; 2 x 2 means) for even sizes."""
    c1, c2 = 0.01**2, 0.03**2
    terms = []
    for j in range(len(weights)):

        def blur(image):
            return ndimage.gaussian_filter(image, 1.5, truncate=3.5)[5:-5, 5:-5]

        mu_a, mu_b = blur(a), blur(b)
        var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
        cs = (2 * (blur(a * b) - mu_a * mu_b) + c2) / (var_a + var_b + c2)
        luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
        if j == len(weights) - 1:
            terms.append((luminance * cs).mean())
            break
        terms.append(cs.mean())
        a = a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2).mean(axis=(1, 3))
        b = b.reshape(b.shape[0] // 2, 2, b.shape[1] // 2, 2).mean(axis=(1, 3))
    return np.prod(np.maximum(terms, 0) ** np.asarray(weights))


def test_ms_ssim_against_a_reference_and_monotonic_in_noise(camera):
    rng = np.random.default_rng(2)
    assert metrics.ms_ssim(camera, camera) == pytest.approx(1.0, abs=1e-12)
    values = []
    for noise_std in (0.01, 0.03, 0.1, 0.3):
        noisy = np.clip(camera + noise_std * rng.standard_normal(camera.shape), 0, 1)
        value = metrics.ms_ssim(noisy, camera)
        assert value == pytest.approx(_reference_ms_ssim(noisy, camera), abs=1e-10)
        values.append(value)
    assert all(hi > lo for hi, lo in itertools.pairwise(values)), values
    # One scale is SSIM; MS-SSIM discounts fine-scale noise that SSIM punishes.
    assert metrics.ms_ssim(noisy, camera, weights=(1.0,)) == pytest.approx(
        metrics.ssim(noisy, camera), abs=1e-12
    )
    assert values[1] > metrics.ssim(
        np.clip(camera + 0.03 * rng.standard_normal(camera.shape), 0, 1), camera
    )


def test_ms_ssim_scales_for_small_images(camera):
    crop = camera[:128, :128]
    assert metrics.ms_ssim_num_scales(128, 128) == 4
    assert metrics.ms_ssim_num_scales(176, 200) == 5 and metrics.ms_ssim_num_scales(10, 64) == 0
    with pytest.raises(ValueError, match="num_scales=4"):
        metrics.ms_ssim(crop, crop)
    noisy = np.clip(crop + 0.05 * np.random.default_rng(3).standard_normal(crop.shape), 0, 1)
    weights = np.asarray(metrics.MS_SSIM_WEIGHTS[:4]) / sum(metrics.MS_SSIM_WEIGHTS[:4])
    assert metrics.ms_ssim(noisy, crop, num_scales=4) == pytest.approx(
        _reference_ms_ssim(noisy, crop, weights), abs=1e-10
    )


def test_frc_identical_independent_and_blurred(camera):
    frequencies, frc = metrics.fourier_ring_correlation(camera, camera)
    assert frequencies.shape == frc.shape == (88,) and frequencies[-1] == 0.5
    np.testing.assert_allclose(frc, 1.0, atol=1e-12)
    assert metrics.frc_resolution(frequencies, frc) == 2.0
    # Independent white noise: ring q ~N(0, 1/(2 n)), n ~ pi q independent complex coefficients,
    # so z = frc sqrt(2 pi q) ~ N(0, 1); the taper raises E[z^2] to 1.07 (1.00 without). One pair
    # is too few: its mean z^2 has sd 0.17 and max |frc[9:]| passes 0.3 in 9% of draws. Over 16
    # pairs (blocks of 2000 pairs): mean z^2 0.96-1.16, max |z| <= 4.8, |mean frc| <= 0.009.
    rng = np.random.default_rng(4)
    pairs = rng.standard_normal((16, 2, 176, 176))
    frc = np.array([metrics.fourier_ring_correlation(*pair)[1] for pair in pairs])
    z = frc[:, 9:] * np.sqrt(2 * np.pi * np.arange(10, 89))
    assert abs(frc.mean()) < 0.02 and np.abs(z).max() < 6
    assert np.mean(z**2) == pytest.approx(1.07, abs=0.25)
    # Two noisy copies of a blurred picture: resolved up to a finite, coarser resolution, and
    # coarser still with more noise.
    blurred = ndimage.gaussian_filter(camera, 2.0)
    resolutions = []
    for noise_std in (0.01, 0.05):
        copies = blurred + noise_std * rng.standard_normal((2, *camera.shape))
        resolutions.append(metrics.frc_resolution(*metrics.fourier_ring_correlation(*copies)))
    assert 2.0 < resolutions[0] < resolutions[1] < 40, resolutions


def test_frc_resolution_interpolates():
    frequencies = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    frc = np.array([0.9, 0.5, 0.2, 0.1, 0.05])
    # Crossing 1/7 between 0.3 (0.2) and 0.4 (0.1): q = 0.3 + 0.1 * (0.2 - 1/7) / 0.1.
    expected = 1 / (0.3 + (0.2 - 1 / 7))
    assert metrics.frc_resolution(frequencies, frc) == pytest.approx(expected)
    assert metrics.frc_resolution(frequencies, frc, threshold=0.5) == pytest.approx(5.0)
    assert metrics.frc_resolution(frequencies, frc, threshold=0.95) == np.inf


def test_poisson_deviance():
    # By hand: y = 3, lambda = 2, r = 0: 2 (3 log 1.5 - 1).
    value = metrics.poisson_deviance(np.array([3.0]), np.array([0.5]), 4.0, 0.0, 0.0)
    assert float(value) == pytest.approx(2 * (3 * np.log(1.5) - 1), rel=1e-6)
    exact = metrics.poisson_deviance(np.array([2.0, 0.0]), np.array([0.5, 0.0]), 4.0, 0.0, 0.0)
    assert float(exact) == pytest.approx(0.0, abs=1e-5)  # the rate floor 1e-6 at lambda = 0
    # At the truth with many photons it is ~1 per pixel; a wrong estimate is far larger.
    rng = np.random.default_rng(5)
    x = rng.uniform(0.2, 1.0, (1, 256, 256, 1)).astype(np.float32)
    y = rng.poisson(500.0 * x + 1.0) + 2.0 * rng.standard_normal(x.shape)
    assert float(metrics.poisson_deviance(y, x, 500.0, 2.0, 1.0)) == pytest.approx(1.0, abs=0.03)
    assert float(metrics.poisson_deviance(y, 0.8 * x, 500.0, 2.0, 1.0)) > 10
    mask = np.ones(x.shape).astype(np.float32)
    mask[:, :8] = 0
    corrupted = y.copy()
    corrupted[:, :8] = 1e6
    assert float(metrics.poisson_deviance(corrupted, x, 500.0, 2.0, 1.0, mask)) == pytest.approx(
        1.0, abs=0.03
    )


def test_std_coverage_of_a_calibrated_gaussian_posterior():
    rng = np.random.default_rng(0)
    truth = rng.uniform(size=(200, 500))
    std = rng.uniform(0.01, 0.1, size=truth.shape)
    estimate = truth + std * rng.standard_normal(truth.shape)
    # 1e5 pixels: the binomial std of a fraction is < 0.0015.
    assert metrics.std_coverage(estimate, std, truth, 1) == pytest.approx(0.6827, abs=0.006)
    assert metrics.std_coverage(estimate, std, truth, 2) == pytest.approx(0.9545, abs=0.004)
    assert metrics.std_coverage(estimate, std / 2, truth, 1) == pytest.approx(0.3829, abs=0.006)
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.std_coverage(estimate, std[:10], truth)
