"""Sensor calibration: raw ADU <-> electrons, and masks of pixels the likelihood must ignore.

    electrons = (ADU - black_level) * gain            (gain in electrons per ADU)

A pixel at or above `white_level` is saturated: its value is a lower bound, not a measurement.
Dead pixels (no response in a flat field) and hot pixels (a large dark signal) are found from
calibration frames. All masks use one convention: 1.0 = valid, 0.0 = ignore.

Dark current adds Poisson electrons like the sky or autofluorescence do, so it belongs in the
background `b` of the noise model (`b_total = b + dark_electrons(cal)`); it is never subtracted
from the data, which would break the Poisson statistics. Quantum efficiency converts photons
to electrons and only matters when a user wants photon units.

`DOMAIN_DEFAULTS` holds order-of-magnitude values for a consumer camera, an sCMOS microscope
camera and a CCD on a telescope. They are not any particular sensor; real data should come
with its own calibration, and `resolve_calibration` warns when it does not.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Calibration:
    """How one sensor's raw ADU become electrons. Validated on construction."""

    gain: float  # electrons per ADU, > 0
    black_level: float  # ADU of an unexposed pixel, >= 0
    white_level: float  # ADU at and above which a pixel is saturated, > black_level
    read_noise: float = 0.0  # electrons rms, >= 0
    dark_current: float = 0.0  # electrons per pixel per second, >= 0
    exposure_time: float = 0.0  # seconds, >= 0
    quantum_efficiency: float = 1.0  # electrons per photon, in (0, 1]

    def __post_init__(self):
        validate(self)

    @property
    def full_well(self) -> float:
        """Electrons at the white level: the largest measurable signal."""
        return (self.white_level - self.black_level) * self.gain


def validate(cal: Calibration) -> None:
    """Raise ValueError naming the first physically impossible field of `cal`."""
    for field in dataclasses.fields(cal):
        value = getattr(cal, field.name)
        if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
            raise TypeError(f"Calibration.{field.name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"Calibration.{field.name} must be finite, got {value}")
    if cal.gain <= 0:
        raise ValueError(f"Calibration.gain must be > 0 electrons/ADU, got {cal.gain}")
    if cal.black_level < 0:
        raise ValueError(f"Calibration.black_level must be >= 0 ADU, got {cal.black_level}")
    if cal.white_level <= cal.black_level:
        raise ValueError(
            f"Calibration.white_level ({cal.white_level}) must be above "
            f"black_level ({cal.black_level})"
        )
    for name in ("read_noise", "dark_current", "exposure_time"):
        if getattr(cal, name) < 0:
            raise ValueError(f"Calibration.{name} must be >= 0, got {getattr(cal, name)}")
    if not 0 < cal.quantum_efficiency <= 1:
        raise ValueError(
            f"Calibration.quantum_efficiency must be in (0, 1], got {cal.quantum_efficiency}"
        )


# Order-of-magnitude defaults (see the module docstring), not a specific sensor.
DOMAIN_DEFAULTS = {
    # 14-bit consumer CMOS at base ISO.
    "photography": Calibration(
        gain=1.0,
        black_level=512.0,
        white_level=16383.0,
        read_noise=3.0,
        dark_current=0.01,
        quantum_efficiency=0.5,
    ),
    # 16-bit scientific CMOS.
    "microscopy": Calibration(
        gain=0.46,
        black_level=100.0,
        white_level=65535.0,
        read_noise=1.6,
        dark_current=0.06,
        quantum_efficiency=0.8,
    ),
    # 16-bit cooled CCD with a bias offset.
    "astronomy": Calibration(
        gain=1.5,
        black_level=1000.0,
        white_level=65535.0,
        read_noise=5.0,
        dark_current=0.005,
        quantum_efficiency=0.9,
    ),
}


def resolve_calibration(domain: str, calibration: Calibration | None = None) -> Calibration:
    """`calibration` if given, else the domain default with a warning that says so."""
    if calibration is not None:
        return calibration
    if domain not in DOMAIN_DEFAULTS:
        raise ValueError(f"unknown domain {domain!r}; defaults exist for {sorted(DOMAIN_DEFAULTS)}")
    cal = DOMAIN_DEFAULTS[domain]
    warnings.warn(
        f"no calibration given; using the illustrative {domain} defaults (gain={cal.gain} e/ADU, "
        f"black_level={cal.black_level}, white_level={cal.white_level}, "
        f"read_noise={cal.read_noise} e). Pass a Calibration measured for your sensor.",
        UserWarning,
        stacklevel=2,
    )
    return cal


def check_finite(array, name: str) -> None:
    """Raise ValueError if a concrete `array` has NaN/Inf pixels, saying how many.

    Skipped for traced values (inside jit): the check needs the data.
    """
    if isinstance(array, jax.core.Tracer):
        return
    values = np.asarray(array)
    bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise ValueError(f"{name} has {bad} non-finite pixel(s) (NaN/Inf) out of {values.size}")


def adu_to_electrons(adu, cal: Calibration):
    """Electrons (ADU - black_level) * gain, same shape as `adu`, float32."""
    check_finite(adu, "adu")
    return (jnp.asarray(adu, jnp.float32) - cal.black_level) * cal.gain


def electrons_to_adu(electrons, cal: Calibration, *, quantize: bool = False, clip: bool = False):
    """ADU electrons / gain + black_level, float32; optionally rounded and clipped to [0, white]."""
    check_finite(electrons, "electrons")
    adu = jnp.asarray(electrons, jnp.float32) / cal.gain + cal.black_level
    if quantize:
        adu = jnp.round(adu)
    if clip:
        adu = jnp.clip(adu, 0.0, cal.white_level)
    return adu


def dark_electrons(cal: Calibration) -> float:
    """Mean dark-current electrons per pixel in one exposure: add it to the background b."""
    return cal.dark_current * cal.exposure_time


def photons_to_electrons(photons, cal: Calibration):
    """Photo-electrons from incident photons: photons * quantum_efficiency."""
    return jnp.asarray(photons, jnp.float32) * cal.quantum_efficiency


def electrons_to_photons(electrons, cal: Calibration):
    """Incident photons from photo-electrons: electrons / quantum_efficiency."""
    return jnp.asarray(electrons, jnp.float32) / cal.quantum_efficiency


# IEC 61966-2-1 sRGB transfer function: linear below the knee, a 2.4 power above it.
SRGB_KNEE, SRGB_SLOPE, SRGB_OFFSET, SRGB_GAMMA = 0.04045, 12.92, 0.055, 2.4


def srgb_to_linear(v):
    """Linear intensity of sRGB-encoded values v in [0, 1] (8-bit images / 255): what a sensor
    counted, up to a scale. numpy or jax arrays alike."""
    xp = jnp if isinstance(v, jnp.ndarray) else np
    v = xp.clip(v, 0.0, 1.0)
    power = ((v + SRGB_OFFSET) / (1 + SRGB_OFFSET)) ** SRGB_GAMMA
    return xp.where(v <= SRGB_KNEE, v / SRGB_SLOPE, power)


def linear_to_srgb(x):
    """sRGB encoding of linear intensities x in [0, 1] (srgb_to_linear's inverse), for display."""
    xp = jnp if isinstance(x, jnp.ndarray) else np
    x = xp.clip(x, 0.0, 1.0)
    power = (1 + SRGB_OFFSET) * xp.maximum(x, 1e-12) ** (1 / SRGB_GAMMA) - SRGB_OFFSET
    return xp.where(x <= SRGB_KNEE / SRGB_SLOPE, x * SRGB_SLOPE, power)


def saturation_mask(adu, cal: Calibration):
    """1.0 where adu < white_level, 0.0 at saturated pixels; same shape as `adu`, float32."""
    check_finite(adu, "adu")
    return (jnp.asarray(adu) < cal.white_level).astype(jnp.float32)


def _robust_sigma(values):
    """Median and 1.4826 * MAD: a Gaussian-consistent spread that outliers do not inflate."""
    median = jnp.median(values)
    return median, 1.4826 * jnp.median(jnp.abs(values - median))


def hot_pixel_mask(dark_frame, *, num_sigma: float = 5.0, min_excess: float = 0.0):
    """0.0 at pixels whose dark signal exceeds the median by num_sigma robust sigmas.

    dark_frame: [H, W] or [H, W, C], a dark exposure (ADU or electrons; the test is relative).
    `min_excess` (same units) keeps a noiseless, quantised dark frame (MAD = 0) from flagging
    every pixel one count above the median. Returns float32, same shape.
    """
    check_finite(dark_frame, "dark_frame")
    dark = jnp.asarray(dark_frame, jnp.float32)
    median, sigma = _robust_sigma(dark)
    threshold = median + jnp.maximum(num_sigma * sigma, min_excess)
    return (dark <= threshold).astype(jnp.float32)


def dead_pixel_mask(flat_frame, *, min_fraction: float = 0.5):
    """0.0 at pixels whose flat-field response is below min_fraction of the median.

    flat_frame: [H, W] or [H, W, C], a black-subtracted flat field (ADU or electrons).
    Returns float32, same shape.
    """
    check_finite(flat_frame, "flat_frame")
    if not 0 < min_fraction < 1:
        raise ValueError(f"min_fraction must be in (0, 1), got {min_fraction}")
    flat = jnp.asarray(flat_frame, jnp.float32)
    median = jnp.median(flat)
    if float(median) <= 0:
        raise ValueError(f"flat_frame has median {float(median)} <= 0; is it black-subtracted?")
    return (flat >= min_fraction * median).astype(jnp.float32)


def calibrate(adu, cal: Calibration, *, dark_frame=None, flat_frame=None, hot_sigma: float = 5.0):
    """Electrons and the valid-pixel mask of one raw frame.

    adu: [H, W] or [H, W, C] (or any shape) raw values; dark_frame (raw ADU) and flat_frame
    (raw ADU, black level subtracted here) of the same shape are optional.
    Returns (electrons float32, mask float32), both shaped like `adu`; mask is 0 at saturated,
    hot and dead pixels.
    """
    check_finite(adu, "adu")
    adu = jnp.asarray(adu, jnp.float32)
    mask = saturation_mask(adu, cal)
    for name, frame in (("dark_frame", dark_frame), ("flat_frame", flat_frame)):
        if frame is not None and np.shape(frame) != adu.shape:
            raise ValueError(f"{name} shape {np.shape(frame)} differs from adu shape {adu.shape}")
    if dark_frame is not None:
        mask = mask * hot_pixel_mask(dark_frame, num_sigma=hot_sigma, min_excess=1.0)
    if flat_frame is not None:
        mask = mask * dead_pixel_mask(jnp.asarray(flat_frame, jnp.float32) - cal.black_level)
    return adu_to_electrons(adu, cal), mask
