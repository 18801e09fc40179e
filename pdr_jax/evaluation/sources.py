"""Point sources in astronomy crops: are there stars in a restoration that the sky does not have?

A diffusion prior trained on star fields can invent stars at low photon counts. This module
counts them with a matched filter whose threshold comes from the measurement's noise, so that a
"source" is something the measurement could in principle show, not every bump of the clean crop:

    significance = (G * image - median_background(G * image)) / sqrt(G^2 * v)

G is a Gaussian PSF of `psf_sigma` pixels (the matched filter for a Gaussian star on white
noise), `median_background` a running median of `background_size` pixels (nebulosity and sky),
and v = (s x + b + r^2) / s^2 the per-pixel noise variance of the measurement in [0, 1] units
at the clean intensity x, so G^2 * v is the filtered noise variance. A source is a local maximum
(`window` x `window`) with significance above `threshold`. The truth is the detector run on the
clean crop; a restoration's detections are matched to it within `match_radius` pixels:
"false" are detections with no true source near, "missed" true sources with no detection near.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, spatial

PSF_SIGMA = 1.0  # pixels: the stars of the corpus's deep-sky images are 2-4 px across
BACKGROUND_SIZE = 15  # pixels: the running median that removes sky and nebulosity
THRESHOLD = 5.0  # in units of the filtered measurement noise
WINDOW = 5  # local-maximum neighbourhood, pixels
MATCH_RADIUS = 2.0  # pixels


def noise_variance(clean: np.ndarray, s: float, r: float, b: float) -> np.ndarray:
    """Per-pixel variance of (y - b) / s at the clean intensity: (s x + b + r^2) / s^2."""
    return (s * np.maximum(clean, 0.0) + b + r**2) / s**2


def detect(
    image: np.ndarray,
    variance: np.ndarray,
    *,
    psf_sigma: float = PSF_SIGMA,
    background_size: int = BACKGROUND_SIZE,
    threshold: float = THRESHOLD,
    window: int = WINDOW,
) -> np.ndarray:
    """[N, 2] (row, column) of the point sources of a [H, W] image (module docstring).

    variance: [H, W] noise variance of the image's measurement (noise_variance).
    """
    image = np.asarray(image, np.float64)
    if image.ndim != 2 or np.shape(variance) != image.shape:
        raise ValueError(
            f"expected [H, W] image and variance, got {image.shape}, {np.shape(variance)}"
        )
    filtered = ndimage.gaussian_filter(image, psf_sigma, mode="reflect")
    background = ndimage.median_filter(filtered, size=background_size, mode="reflect")
    # The normalised Gaussian squared is a Gaussian of sigma / sqrt(2) over 4 pi sigma^2.
    filtered_variance = ndimage.gaussian_filter(
        np.asarray(variance, np.float64), psf_sigma / np.sqrt(2), mode="reflect"
    ) / (4 * np.pi * psf_sigma**2)
    significance = (filtered - background) / np.sqrt(np.maximum(filtered_variance, 1e-30))
    peaks = filtered == ndimage.maximum_filter(filtered, size=window, mode="reflect")
    return np.argwhere(peaks & (significance > threshold))


def count(
    clean: np.ndarray,
    restored: np.ndarray,
    s: float,
    r: float,
    b: float,
    *,
    match_radius: float = MATCH_RADIUS,
    **detector,
) -> dict[str, int]:
    """{"true", "detected", "false", "missed"} point sources of a restoration of a [H, W] or
    [H, W, 1] crop measured with s, r, b; `detector` passes on to detect."""
    clean, restored = (
        np.asarray(v, np.float64).reshape(np.shape(clean)[:2]) for v in (clean, restored)
    )
    variance = noise_variance(clean, s, r, b)
    truth, found = detect(clean, variance, **detector), detect(restored, variance, **detector)
    if len(truth) and len(found):
        near_truth = spatial.cKDTree(truth).query(found, distance_upper_bound=match_radius)[0]
        near_found = spatial.cKDTree(found).query(truth, distance_upper_bound=match_radius)[0]
        false, missed = int(np.sum(np.isinf(near_truth))), int(np.sum(np.isinf(near_found)))
    else:
        false, missed = len(found), len(truth)
    return {"true": len(truth), "detected": len(found), "false": false, "missed": missed}


APERTURE_RADIUS = 3.0  # pixels: the photometry aperture (the stars are 2-4 px across)
ANNULUS = (5.0, 8.0)  # pixels: the local sky around each star, its median per pixel


def photometry(
    clean: np.ndarray,
    restored: np.ndarray,
    s: float,
    r: float,
    b: float,
    *,
    radius: float = APERTURE_RADIUS,
    **detector,
) -> dict[str, float | None]:
    """Aperture photometry of the true stars: {"bias", "scatter"} of the relative flux error
    (F_restored - F_true) / F_true over the point sources that `detect` finds in the clean crop,
    each F the sum within `radius` pixels minus the annulus's median sky; bias the median,
    scatter 1.4826 times the median absolute deviation (robust to a star on an edge). None for
    a crop without stars."""
    clean, restored = (
        np.asarray(v, np.float64).reshape(np.shape(clean)[:2]) for v in (clean, restored)
    )
    stars = detect(clean, noise_variance(clean, s, r, b), **detector)
    rows, cols = np.indices(clean.shape)
    errors = []
    for row, col in stars:
        distance = np.hypot(rows - row, cols - col)
        aperture, annulus = distance <= radius, (distance >= ANNULUS[0]) & (distance <= ANNULUS[1])
        fluxes = [
            image[aperture].sum() - aperture.sum() * np.median(image[annulus])
            for image in (clean, restored)
        ]
        if fluxes[0] > 0:
            errors.append(fluxes[1] / fluxes[0] - 1.0)
    if not errors:
        return {"bias": None, "scatter": None}
    errors = np.asarray(errors)
    bias = float(np.median(errors))
    return {"bias": bias, "scatter": float(1.4826 * np.median(np.abs(errors - bias)))}
