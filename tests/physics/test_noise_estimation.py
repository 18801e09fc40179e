"""Gain and read noise from one simulated image (pdr_jax.physics.noise_estimation).

Measured relative errors on 256 px simulated images (fluorescence and astronomy simulators,
seed 0), the stated tolerances a little above them: read noise with the gain known (electrons)
within 4% at r = 3 e- for s = 2-250 and within 10% at r = 0.5 e- for s <= 10; the gain within
5-13% and the read noise from ADU within 16-27% at s = 250 e- (the bright end). Below ~50 e- at the bright end the gain is poorly
constrained: the estimate says so.
"""

import numpy as np
import pytest

from pdr_jax.data import simulators
from pdr_jax.physics import noise_estimation


def _measure(name, s, r, gain=1.0, seed=0, black=0.0):
    clean = np.asarray(
        simulators.render(name, 0, 3 if name == "fluorescence" else 5, 256), np.float64
    )
    rng = np.random.default_rng(seed)
    electrons = rng.poisson(s * clean) + rng.normal(0, r, clean.shape)
    return electrons / gain + black, clean


@pytest.mark.parametrize("name", ["fluorescence", "astronomy"])
def test_read_noise_with_a_known_gain(name):
    for s in (2, 10, 50, 250):
        y, _ = _measure(name, s, 3.0)
        estimate = noise_estimation.estimate_noise(y, gain=1.0)
        assert estimate.read_noise == pytest.approx(3.0, rel=0.04), (s, estimate)
        assert estimate.gain == 1.0 and estimate.gain_std == 0.0
        assert 0 < estimate.read_noise_std < 0.1
    for s in (2, 10):
        y, _ = _measure(name, s, 0.5)
        assert noise_estimation.estimate_noise(y, gain=1.0).read_noise == pytest.approx(
            0.5, rel=0.1
        ), s


@pytest.mark.parametrize("gain", [0.5, 4.0])
def test_gain_and_read_noise_from_adu_at_the_bright_end(gain):
    for name in ("fluorescence", "astronomy"):
        y, _ = _measure(name, 250, 3.0, gain=gain, black=100.0)
        estimate = noise_estimation.estimate_noise(y, black_level=100.0)
        # Measured: gain -4.5% / -13%, read noise -16% / -27% (fluorescence / astronomy); the
        # bootstrap std covers the astronomy error (13%).
        assert estimate.gain == pytest.approx(gain, rel=0.15), (name, estimate)
        assert abs(estimate.gain - gain) < 1.5 * estimate.gain_std + 0.05 * gain
        assert estimate.read_noise == pytest.approx(3.0, rel=0.3), (name, estimate)
        assert estimate.gain_std < 0.2 * estimate.gain and not estimate.warnings


def test_too_few_photons_for_the_gain_is_flagged_and_saturation_left_out():
    y, _ = _measure("fluorescence", 2, 3.0, gain=0.5, black=100.0)
    estimate = noise_estimation.estimate_noise(y, black_level=100.0)
    assert any("poorly constrained" in w for w in estimate.warnings)
    y, _ = _measure("fluorescence", 250, 3.0)
    white = np.percentile(y, 97)
    clipped = np.minimum(y, white)  # a saturated top: flat, no noise
    estimate = noise_estimation.estimate_noise(clipped, gain=1.0, white_level=white)
    assert estimate.read_noise == pytest.approx(3.0, rel=0.04)
    with pytest.raises(ValueError, match="at least 8x8"):
        noise_estimation.estimate_noise(np.ones((4, 4)))


def test_auto_scale_puts_the_bright_end_near_one():
    y, clean = _measure("fluorescence", 100, 2.0)
    s = noise_estimation.auto_scale(y)
    smoothed_clean = np.percentile(clean[1:-1, 1:-1], noise_estimation.SCALE_PERCENTILE)
    assert s == pytest.approx(100 * smoothed_clean, rel=0.1)
