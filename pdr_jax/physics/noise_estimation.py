"""Noise parameters from photon-transfer curves, and from one noisy image's local mean-variance relation.

Photon-transfer curves (`fit_photon_transfer`, from `ptc_from_flat_pairs` or
`ptc_from_frame_pair`): gain and read noise from var_ADU = mean_ADU / gain + (read_noise / gain)^2
measured over pairs of exposures. `estimate_noise` does it from one image:

    var(y) = (y_mean - black) / gain + (read_noise / gain)^2        (ADU; gain = 1 for electrons)

A single image has no second exposure to difference against, so (after Foi et al. 2008, "Practical
Poissonian-Gaussian noise modeling and fitting for single-image raw-data") each interior pixel's
residual d = y - mean(its 8 neighbours) serves as the noise sample: for a locally smooth signal
(constant or linear) it has variance (1 + 1/8) var(y). Pixels are binned by the neighbour mean
(independent of the pixel's own noise, as in ptc_from_frame_pair), and each bin's
variance is the mean of its smallest 80% of d^2 divided by the fraction a normal distribution
keeps (0.4377): edges, stars and hot pixels, which make the tails heavy, fall in the trimmed
20%. Saturated pixels (>= white_level) and their neighbours are left out. The line through the
bins is fit_photon_transfer's weighted least squares; its uncertainty is the spread of
refits over bootstrap resamples of the bins.

`check_physics` compares a measurement with the physics a user states before anything is
restored: an image whose mean is far above intensity 1 (y - b > MAX_MEAN_INTENSITY s), or whose
noise variance is far below the model's s x + b + r^2 (the binned residual variance over the
model, median over bins, below MIN_VARIANCE_RATIO), is not electrons at that scale and read noise.
On Poisson-Gaussian images the ratio is 0.87-1.0 at every photon level; texture only raises it
(skimage's camera, grass, gravel: up to 78 at s = 10000), so there is no upper bound on it.

`check_parameter` is the one validity check of the stated s, r, b and gain (pdr_jax.restore.Physics,
read_measurement and pdr-restore's flags call it).

`auto_scale` is the rule for `--scale auto`: s is a choice of units (x = 1 at s electrons), not
a property of the data; the 99.5th percentile of the smoothed photon level puts the bright end
of the image near x = 1 and keeps outlier pixels from setting it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

TRIM_KEEP = 0.8  # fraction of the smallest d^2 kept per bin
# E[z^2 | |z| < q] for z ~ N(0, 1), q its 90% two-sided quantile: corrects the trimmed mean.
_TRIMMED_NORMAL_VARIANCE = 0.43766
_NEIGHBOUR_FACTOR = 1.0 + 1.0 / 8.0  # var(y - mean of 8 neighbours) / var(y)
SCALE_PERCENTILE = 99.5
# Bootstrap resamples without a positive slope, above this fraction: the gain is unresolved. On
# 256 px ADU images 0 of 64 at s >= 50 e-; 0-2 where the std already warns; 29-33 of 64 where a
# gain 19-2700x too high came with a small std (s = 2 e-, 16 of 200 noise seeds).
MAX_NO_SLOPE_FRACTION = 0.1


# The noise parameters' valid ranges, with the pdr-restore flags that set them: name -> (flag,
# strict); strict: > 0, else >= 0. No jax here, so pdr-restore checks its flags with it before
# importing jax. Every check of s, r, b (and of the gain) is check_parameter.
PARAMETERS = {
    "s": ("--scale", True),  # electrons at clean intensity 1
    "r": ("--read-noise", False),  # electrons rms
    "b": ("--background", False),  # electrons
    "gain": ("--gain", True),  # electrons per ADU
}


def check_parameter(name: str, value, label: str | None = None) -> float:
    """`value` as a float if it is a valid s, r, b or gain (PARAMETERS: finite, > 0 or >= 0),
    else ValueError "<label> must be a finite number > 0, got <value>"; label defaults to the
    flag and the name, e.g. "--scale (s)"."""
    flag, strict = PARAMETERS[name]
    value = float(value)
    if not math.isfinite(value) or (value <= 0 if strict else value < 0):
        label = label or f"{flag} ({name})"
        raise ValueError(
            f"{label} must be a finite number {'>' if strict else '>='} 0, got {value}"
        )
    return value


# Photon-transfer curves.


@dataclasses.dataclass(frozen=True)
class PhotonTransferFit:
    """A photon-transfer-curve fit var_ADU = slope * mean_ADU + intercept."""

    gain: float  # electrons per ADU, 1 / slope
    read_noise: float  # electrons, sqrt(intercept) * gain
    slope: float  # 1 / gain
    intercept: float  # ADU^2, (read_noise / gain)^2


def fit_photon_transfer(mean_adu, var_adu, weights=None) -> PhotonTransferFit:
    """Weighted least-squares line through (mean, variance) points of a photon-transfer curve.

    mean_adu, var_adu: [N] black-subtracted signal and its temporal variance, in ADU.
    weights: [N] or None; the default 1 / var^2 matches the scatter of a sample variance
    (proportional to the variance itself). Saturated points must be removed beforehand.
    """
    mean_adu = np.asarray(mean_adu, np.float64)
    var_adu = np.asarray(var_adu, np.float64)
    if mean_adu.shape != var_adu.shape or mean_adu.ndim != 1 or mean_adu.size < 2:
        raise ValueError(
            f"need two 1-D arrays of >= 2 points, got {mean_adu.shape}, {var_adu.shape}"
        )
    if not (np.all(np.isfinite(mean_adu)) and np.all(np.isfinite(var_adu))):
        raise ValueError("photon-transfer points contain NaN/Inf")
    if weights is None:
        weights = 1.0 / np.maximum(var_adu, 1e-12) ** 2
    design = np.stack([mean_adu, np.ones_like(mean_adu)], axis=1)
    sqrt_w = np.sqrt(np.asarray(weights, np.float64))
    (slope, intercept), *_ = np.linalg.lstsq(design * sqrt_w[:, None], var_adu * sqrt_w, rcond=None)
    if slope <= 0:
        raise ValueError(
            f"photon-transfer slope {slope:.3g} <= 0: no shot-noise signal in the data"
        )
    gain = 1.0 / slope
    read_noise = float(np.sqrt(max(intercept, 0.0)) * gain)
    return PhotonTransferFit(float(gain), read_noise, float(slope), float(intercept))


def ptc_from_flat_pairs(flat_pairs, black_level: float, white_level: float | None = None):
    """(mean_adu [N], var_adu [N]) from N pairs of flat fields at different exposures.

    flat_pairs: sequence of (frame_a, frame_b), raw ADU of equal shape. Per pair, the mean is
    the black-subtracted average and the variance var(a - b) / 2, which cancels fixed-pattern
    structure (vignetting, pixel response) common to both frames. Pairs with any pixel at or
    above white_level are dropped.
    """
    means, variances = [], []
    for frame_a, frame_b in flat_pairs:
        a, b = np.asarray(frame_a, np.float64), np.asarray(frame_b, np.float64)
        if a.shape != b.shape:
            raise ValueError(f"flat pair shapes differ: {a.shape} vs {b.shape}")
        if white_level is not None and max(a.max(), b.max()) >= white_level:
            continue
        means.append(0.5 * (a.mean() + b.mean()) - black_level)
        variances.append(np.var(a - b) / 2)
    return np.asarray(means), np.asarray(variances)


def neighbour_mean(image):
    """Mean of the 8 neighbours of each interior pixel of [H, W] or [H, W, C]: [H-2, W-2(, C)]."""
    height, width = image.shape[:2]
    total = sum(
        image[1 + dy : height - 1 + dy, 1 + dx : width - 1 + dx]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if (dy, dx) != (0, 0)
    )
    return total / 8


def ptc_from_frame_pair(
    frame_a, frame_b, black_level: float, num_bins: int = 16, min_pixels: int = 100
):
    """(mean_adu [<= num_bins], var_adu) from two exposures of one static, locally smooth scene.

    frame_a, frame_b: [H, W] or [H, W, C] raw ADU. Interior pixels are binned (equal-count
    bins) by the mean of their 8 neighbours in (a + b) / 2; each bin gives the pixels' own mean
    (a + b) / 2 - black_level and variance var(a - b) / 2. Binning on the neighbours keeps the
    selection independent of each pixel's own noise: binning on the pixel itself would put
    pixels whose noise happened to be low into low bins and bias the fit (regression to the
    mean). Bins with fewer than min_pixels pixels are dropped.
    """
    a, b = np.asarray(frame_a, np.float64), np.asarray(frame_b, np.float64)
    if a.shape != b.shape or a.ndim not in (2, 3) or min(a.shape[:2]) < 3:
        raise ValueError(f"need two equal [H, W(, C)] frames, got {a.shape} and {b.shape}")
    level = (neighbour_mean(0.5 * (a + b)) - black_level).ravel()
    mean = (0.5 * (a + b)[1:-1, 1:-1] - black_level).ravel()
    diff = (a - b)[1:-1, 1:-1].ravel()
    means, variances = [], []
    for chunk in np.array_split(np.argsort(level), num_bins):
        if chunk.size >= min_pixels:
            means.append(mean[chunk].mean())
            variances.append(np.var(diff[chunk]) / 2)
    return np.asarray(means), np.asarray(variances)


# One image.


@dataclasses.dataclass(frozen=True)
class NoiseEstimate:
    """Gain and read noise of one image, with bootstrap standard errors."""

    gain: float  # electrons per ADU (1 when the data are electrons and the gain was fixed)
    gain_std: float  # 0 when the gain was given
    read_noise: float  # electrons rms
    read_noise_std: float
    num_bins: int
    fit_rms: float  # relative rms of the bins about the fitted line
    warnings: tuple[str, ...] = ()


def _bins(
    y: np.ndarray, black_level: float, excluded: np.ndarray | None, num_bins: int, min_pixels: int
):
    """(mean [K], variance [K], pixels [K]) of the residual in equal-count bins of the level;
    excluded [H, W] bool (saturated, masked) pixels and their neighbours are left out."""
    y = np.asarray(y, np.float64)
    if y.ndim == 3:
        y = y[..., 0] if y.shape[-1] == 1 else None
    if y is None or y.ndim != 2 or min(y.shape) < 8:
        raise ValueError("noise estimation needs one [H, W] image of at least 8x8 pixels")
    level = neighbour_mean(y) - black_level
    residual = y[1:-1, 1:-1] - (level + black_level)
    keep = np.ones(level.shape, bool)
    if excluded is not None:  # a saturated pixel or neighbour breaks the noise model
        excluded = np.asarray(excluded, bool).reshape(y.shape)
        near = neighbour_mean(excluded.astype(np.float64)) > 0
        keep = ~(excluded[1:-1, 1:-1] | near)
    level, residual = level[keep], residual[keep]
    means, variances, counts = [], [], []
    for chunk in np.array_split(np.argsort(level), num_bins):
        if chunk.size < min_pixels:
            continue
        squares = np.sort(residual[chunk] ** 2)[: int(TRIM_KEEP * chunk.size)]
        means.append(level[chunk].mean())
        variances.append(squares.mean() / _TRIMMED_NORMAL_VARIANCE / _NEIGHBOUR_FACTOR)
        counts.append(chunk.size)
    return np.asarray(means), np.asarray(variances), np.asarray(counts)


def _fit(means, variances, gain):
    """(gain, intercept): the PTC line, or its intercept alone with the slope 1 / gain fixed."""
    if gain is None:
        fit = fit_photon_transfer(means, variances)
        return fit.gain, fit.intercept
    weights = 1.0 / np.maximum(variances, 1e-12) ** 2
    return gain, float(np.sum(weights * (variances - means / gain)) / np.sum(weights))


def estimate_noise(
    y,
    *,
    black_level: float = 0.0,
    white_level: float | None = None,
    gain: float | None = None,
    num_bins: int = 32,
    min_pixels: int = 50,
    num_bootstrap: int = 64,
    seed: int = 0,
) -> NoiseEstimate:
    """Gain (unless given) and read noise from one image y [H, W] (ADU, or electrons with gain=1).

    Raises ValueError when the image is too small or has no shot-noise signal (the slope of
    variance against level is not positive). Warnings (in the result) name a poor fit: bins
    more than 20% off the line, a negative intercept (read noise unresolved: 0 returned), a
    fitted gain whose bootstrap std exceeds 20% of it, or fewer than 6 usable bins.
    """
    excluded = None if white_level is None else np.asarray(y) >= white_level
    means, variances, _ = _bins(y, black_level, excluded, num_bins, min_pixels)
    warnings = []
    if means.size < 2:
        raise ValueError(
            f"only {means.size} usable level bin(s): the image is too small or saturated"
        )
    if means.size < 6:
        warnings.append(f"only {means.size} level bins: the estimate is rough")
    fitted_gain, intercept = _fit(means, variances, gain)
    model = means / fitted_gain + intercept
    fit_rms = float(np.sqrt(np.mean(((variances - model) / np.maximum(model, 1e-12)) ** 2)))
    if fit_rms > 0.2:
        warnings.append(
            f"the variances lie {fit_rms:.0%} (rms) off the Poisson-Gaussian line: the image may "
            "be processed (denoised, compressed, demosaicked) or its level not linear"
        )
    if intercept < 0:
        warnings.append("negative read-noise variance fitted: read noise unresolved, 0 returned")
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(num_bootstrap):
        pick = rng.integers(0, means.size, means.size)
        if np.unique(means[pick]).size < 2:
            continue
        try:
            draws.append(_fit(means[pick], variances[pick], gain))
        except ValueError:  # a resample without shot-noise slope
            continue
    draws = np.asarray(draws).reshape(-1, 2)
    gain_std = float(np.std(draws[:, 0])) if gain is None and len(draws) else 0.0
    no_slope = num_bootstrap - len(draws)
    if gain is None and no_slope > MAX_NO_SLOPE_FRACTION * num_bootstrap:
        # The std of the rest understates the spread: a gain 20-2700x off came with std 2-18%.
        warnings.append(
            f"gain {fitted_gain:.3g} poorly constrained: {no_slope} of {num_bootstrap} bootstrap "
            "resamples of the level bins show no shot-noise slope (too few photons at the "
            "bright end); give --gain if it is known"
        )
    elif gain_std > 0.2 * fitted_gain:
        warnings.append(
            f"gain {fitted_gain:.3g} +- {gain_std:.2g}: poorly constrained (too few photons at the "
            "bright end to separate shot noise from read noise); give --gain if it is known"
        )
    read_noise = float(np.sqrt(max(intercept, 0.0)) * fitted_gain)
    read_draws = np.sqrt(np.maximum(draws[:, 1], 0.0)) * draws[:, 0]
    return NoiseEstimate(
        gain=float(fitted_gain),
        gain_std=gain_std,
        read_noise=read_noise,
        read_noise_std=float(np.std(read_draws)) if len(draws) else float("nan"),
        num_bins=int(means.size),
        fit_rms=fit_rms,
        warnings=tuple(warnings),
    )


MAX_MEAN_INTENSITY = 3.0  # mean (y - b) / s above this: far brighter than intensity 1
MIN_VARIANCE_RATIO = 0.25  # measured / model noise variance below this: smoother than the noise
CHECK_SIDE = 1024  # check_physics measures the noise in the central CHECK_SIDE^2 pixels at most


@dataclasses.dataclass(frozen=True)
class PhysicsCheck:
    """How one measurement compares with stated physics (check_physics)."""

    mean_intensity: float  # mean (y - b) / s over the valid pixels
    variance_ratio: float | None  # measured / model noise variance (None: image too small)
    problems: tuple[str, ...]  # each names what is inconsistent and the fix; () when consistent


def check_physics(y_electrons, s: float, r: float, b: float = 0.0, mask=None) -> PhysicsCheck:
    """Check y [H, W] electrons against y ~ Poisson(s x + b) + N(0, r^2), x in [0, 1].

    mask: like y, 1 = valid (saturated or dead pixels 0: left out). The mean is over the whole
    frame, the noise variance from its central CHECK_SIDE^2 pixels (one binning pass, 0.33 s per
    megapixel on 2 busy cores, so at most ~0.35 s); nothing is fitted.
    """
    y = np.asarray(y_electrons, np.float64)
    y = y[..., 0] if y.ndim == 3 else y
    valid = np.ones(y.shape, bool) if mask is None else np.asarray(mask).reshape(y.shape) > 0
    mean_intensity = float((y[valid].mean() - b) / s) if valid.any() else 0.0
    problems = []
    if mean_intensity > MAX_MEAN_INTENSITY:
        problems.append(
            f"mean {y[valid].mean():.4g} e- per pixel is {mean_intensity:.3g}x --scale {s:g} "
            f"(+ --background {b:g}): the image would be far brighter than intensity 1; if the "
            "file holds camera counts use --units adu --gain auto, else --scale auto"
        )
    # The noise variance from the central CHECK_SIDE^2 pixels at most: 16 bins need far fewer pixels,
    # and the cost stays ~0.3 s however large the frame.
    crop = tuple(
        slice(max((n - CHECK_SIDE) // 2, 0), max((n - CHECK_SIDE) // 2, 0) + CHECK_SIDE)
        for n in y.shape
    )
    try:
        means, variances, _ = _bins(y[crop], 0.0, ~valid[crop], 16, 50)
    except ValueError:  # smaller than 8x8
        means = np.zeros(0)
    ratio = None
    if means.size >= 2:
        ratio = float(np.median(variances / (np.maximum(means, 0.0) + r**2)))
        if ratio < MIN_VARIANCE_RATIO:
            problems.append(
                f"the pixel-to-pixel noise variance is {ratio:.3g}x what Poisson noise at these "
                f"electrons plus read noise {r:g} e- would give: the data are not electrons with "
                "this read noise (camera counts with a gain above 1 e-/ADU: --units adu --gain "
                "auto; a wrong read noise: --read-noise auto; an image that is not a raw "
                "measurement cannot be restored by this model)"
            )
    return PhysicsCheck(mean_intensity, ratio, tuple(problems))


def auto_scale(y_electrons, background: float = 0.0) -> float:
    """--scale auto: the SCALE_PERCENTILE-th percentile of the smoothed photon level (electrons
    above the background) of y [H, W]; at least 1e-3."""
    y = np.asarray(y_electrons, np.float64)
    y = y[..., 0] if y.ndim == 3 else y
    level = neighbour_mean(y) - background
    return float(max(np.percentile(level, SCALE_PERCENTILE), 1e-3))
