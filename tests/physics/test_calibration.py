"""ADU <-> electrons, validation of impossible values, domain defaults, and the pixel masks."""

import dataclasses
import warnings

import chex
import numpy as np
import pytest

from pdr_jax.physics import calibration as cal_lib
from pdr_jax.physics.calibration import Calibration

CAL = Calibration(
    gain=2.0,
    black_level=100.0,
    white_level=4095.0,
    read_noise=3.0,
    dark_current=0.5,
    exposure_time=4.0,
    quantum_efficiency=0.8,
)


def test_adu_electrons_round_trip_by_hand():
    adu = np.array([[100.0, 150.0], [1100.0, 4095.0]])
    electrons = cal_lib.adu_to_electrons(adu, CAL)
    np.testing.assert_allclose(electrons, [[0.0, 100.0], [2000.0, 7990.0]])
    np.testing.assert_allclose(cal_lib.electrons_to_adu(electrons, CAL), adu)
    quantised = cal_lib.electrons_to_adu(
        np.array([1.2, -500.0, 1e5]), CAL, quantize=True, clip=True
    )
    np.testing.assert_array_equal(quantised, [101.0, 0.0, 4095.0])
    assert cal_lib.dark_electrons(CAL) == 2.0
    assert CAL.full_well == pytest.approx(7990.0)
    np.testing.assert_allclose(cal_lib.photons_to_electrons(10.0, CAL), 8.0)
    np.testing.assert_allclose(cal_lib.electrons_to_photons(8.0, CAL), 10.0)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("gain", -1.0, "Calibration.gain must be > 0"),
        ("gain", 0.0, "Calibration.gain must be > 0"),
        ("white_level", 100.0, r"Calibration.white_level \(100.0\) must be above black_level"),
        ("black_level", -5.0, "Calibration.black_level must be >= 0"),
        ("read_noise", -0.1, "Calibration.read_noise must be >= 0"),
        ("dark_current", -1.0, "Calibration.dark_current must be >= 0"),
        ("exposure_time", -1.0, "Calibration.exposure_time must be >= 0"),
        ("quantum_efficiency", 1.5, r"Calibration.quantum_efficiency must be in \(0, 1\]"),
        ("quantum_efficiency", 0.0, r"Calibration.quantum_efficiency must be in \(0, 1\]"),
        ("read_noise", float("nan"), "Calibration.read_noise must be finite"),
        ("gain", float("inf"), "Calibration.gain must be finite"),
    ],
)
def test_impossible_values_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(CAL, **{field: value})


def test_non_numbers_are_named():
    with pytest.raises(TypeError, match="Calibration.gain must be a number"):
        dataclasses.replace(CAL, gain="2")


def test_domain_defaults_warn_only_when_used():
    for domain, default in cal_lib.DOMAIN_DEFAULTS.items():
        with pytest.warns(
            UserWarning, match=f"no calibration given; using the illustrative {domain}"
        ):
            assert cal_lib.resolve_calibration(domain) is default
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cal_lib.resolve_calibration("astronomy", CAL) is CAL
    with pytest.raises(ValueError, match="unknown domain 'x-ray'"):
        cal_lib.resolve_calibration("x-ray")


def test_saturation_hot_and_dead_pixel_masks():
    rng = np.random.default_rng(0)
    shape = (32, 32)
    dark = 100.0 + rng.normal(0, 2.0, shape)
    dark[3, 4] = 160.0  # hot
    flat = 2000.0 + rng.normal(0, 40.0, shape)
    flat[10, 11] = 120.0  # dead (black level 100 -> 20 ADU of response)
    frame = 500.0 + rng.normal(0, 5.0, shape)
    frame[0, 0] = 4095.0  # saturated
    frame[1, 1] = 5000.0  # beyond the white level
    electrons, mask = cal_lib.calibrate(frame, CAL, dark_frame=dark, flat_frame=flat)
    chex.assert_shape((electrons, mask), shape)
    bad = {(0, 0), (1, 1), (3, 4), (10, 11)}
    assert {tuple(i) for i in np.argwhere(np.asarray(mask) == 0)} == bad
    np.testing.assert_allclose(electrons, (frame - 100.0) * 2.0, rtol=1e-6)
    # A noiseless quantised dark frame (MAD = 0) flags nothing but real outliers.
    flat_dark = np.full(shape, 100.0)
    flat_dark[5, 5] = 101.0
    assert float(cal_lib.hot_pixel_mask(flat_dark, min_excess=1.0).min()) == 1.0


def test_nonfinite_inputs_and_bad_shapes_are_reported():
    frame = np.full((8, 8), 500.0)
    frame[2, 3] = np.nan
    frame[4, 4] = np.inf
    with pytest.raises(ValueError, match=r"adu has 2 non-finite pixel\(s\) \(NaN/Inf\) out of 64"):
        cal_lib.adu_to_electrons(frame, CAL)
    with pytest.raises(ValueError, match="dark_frame shape"):
        cal_lib.calibrate(np.zeros((8, 8)), CAL, dark_frame=np.zeros((4, 4)))
    with pytest.raises(ValueError, match="is it black-subtracted"):
        cal_lib.dead_pixel_mask(np.zeros((4, 4)))
