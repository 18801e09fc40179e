"""Point-spread functions: the blur of a microscope or telescope, as a kernel that sums to 1.

    y ~ Poisson(s * (h * x) + b) + N(0, r^2)

Parametric PSFs, each integrated over the pixel (the detector counts every photon that lands
on a pixel, not the value at its centre) by averaging `OVERSAMPLE` x `OVERSAMPLE` sub-pixel
samples, truncated where the light outside is below `TAIL` (at most `MAX_RADIUS` pixels) and
renormalised, so that the total flux is kept:

- `gaussian(fwhm)`: a Gaussian of full width at half maximum `fwhm` pixels (integrated in
  closed form with the error function).
- `moffat(fwhm, beta)`: Moffat 1969, (1 + rho^2 / alpha^2)^-beta, the profile of a
  seeing-limited star; alpha = fwhm / (2 sqrt(2^(1/beta) - 1)); beta 2.5-4.7 is typical.
- `airy(wavelength_nm, na, pixel_nm)`: the in-focus widefield pattern (2 J1(v) / v)^2 with
  v = 2 pi NA rho / wavelength (rho in the sample plane, `pixel_nm` per pixel).

`parse(spec)` reads the `--psf` forms "gaussian:FWHM", "moffat:FWHM,BETA" and
"airy:WAVELENGTH_NM,NA,PIXEL_NM"; `check(kernel, source)` validates a measured PSF (an image:
2-D, odd sides, finite, non-negative, centred) and normalises it. Reading a PSF file is I/O and
lives with the other readers; this module is numpy only.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import special

OVERSAMPLE = 7  # sub-pixel samples per pixel side for the pixel integration
TAIL = 1e-3  # the parametric kernels end where less than this fraction of the light is outside
MAX_RADIUS = 32  # ... or at this radius, whichever is smaller (an Airy pattern's slow tail)


def _radius_for(enclosed, scale: float) -> int:
    """The smallest radius r <= MAX_RADIUS (pixels) with enclosed(r) >= 1 - TAIL, at least 1;
    `scale` is the profile's width, from which the search starts."""
    radius = max(1, math.ceil(scale))
    while radius < MAX_RADIUS and enclosed(radius) < 1.0 - TAIL:
        radius += 1
    return radius


def _pixel_integrated(profile, radius: int) -> np.ndarray:
    """[2R + 1, 2R + 1] float64: profile(rho^2) averaged over OVERSAMPLE^2 points of each pixel
    (pixel centres at integer offsets from the centre), normalised to sum 1."""
    n = OVERSAMPLE
    sub = (np.arange(n) + 0.5) / n - 0.5
    centres = np.arange(-radius, radius + 1, dtype=np.float64)
    coords = (centres[:, None] + sub[None, :]).ravel()
    rho2 = coords[:, None] ** 2 + coords[None, :] ** 2
    values = profile(rho2).reshape(2 * radius + 1, n, 2 * radius + 1, n).mean(axis=(1, 3))
    return values / values.sum()


def gaussian(fwhm: float) -> np.ndarray:
    """A pixel-integrated Gaussian of full width at half maximum `fwhm` pixels, sum 1."""
    _check_positive(fwhm=fwhm)
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    # The light outside a square of half-side R is at most that outside the inscribed circle.
    radius = _radius_for(lambda r: 1.0 - math.exp(-0.5 * (r / sigma) ** 2), 3 * sigma)
    edges = (np.arange(-radius, radius + 2) - 0.5) / (math.sqrt(2.0) * sigma)
    line = np.diff(special.erf(edges)) / 2.0  # the Gaussian's mass in each pixel, exactly
    kernel = np.outer(line, line)
    return kernel / kernel.sum()


def moffat(fwhm: float, beta: float) -> np.ndarray:
    """A pixel-integrated Moffat profile of full width at half maximum `fwhm` pixels, sum 1."""
    _check_positive(fwhm=fwhm)
    if not beta > 1.0:
        raise ValueError(f"moffat beta must be > 1 (finite flux), got {beta}")
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    radius = _radius_for(lambda r: 1.0 - (1.0 + (r / alpha) ** 2) ** (1.0 - beta), fwhm)
    return _pixel_integrated(lambda rho2: (1.0 + rho2 / alpha**2) ** -beta, radius)


def airy(wavelength_nm: float, na: float, pixel_nm: float) -> np.ndarray:
    """A pixel-integrated Airy pattern, sum 1: emission wavelength, numerical aperture and the
    pixel size in the sample plane (camera pixel / magnification), in nanometres."""
    _check_positive(wavelength_nm=wavelength_nm, na=na, pixel_nm=pixel_nm)
    k = 2.0 * math.pi * na * pixel_nm / wavelength_nm  # v per pixel

    def profile(rho2):
        v = k * np.sqrt(rho2)
        safe = np.where(v > 1e-8, v, 1.0)
        return np.where(v > 1e-8, (2.0 * special.j1(safe) / safe) ** 2, 1.0)

    # Light within v: 1 - J0(v)^2 - J1(v)^2 (Rayleigh); the first dark ring is at v = 3.83.
    enclosed = lambda r: 1.0 - special.j0(k * r) ** 2 - special.j1(k * r) ** 2
    return _pixel_integrated(profile, _radius_for(enclosed, 3.83 / k))


def _check_positive(**values):
    for name, value in values.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"PSF {name} must be a finite number > 0, got {value}")


PARAMETRIC = {
    "gaussian": (gaussian, "FWHM_PX"),
    "moffat": (moffat, "FWHM_PX,BETA"),
    "airy": (airy, "WAVELENGTH_NM,NA,PIXEL_NM"),
}


def is_parametric(spec: str) -> bool:
    """Whether spec names a parametric PSF ("gaussian:2.5") rather than a file."""
    return spec.split(":", 1)[0].lower() in PARAMETRIC and ":" in spec


def parse(spec: str) -> np.ndarray:
    """The kernel of a parametric spec: "gaussian:FWHM_PX", "moffat:FWHM_PX,BETA",
    "airy:WAVELENGTH_NM,NA,PIXEL_NM" (pixels and nanometres). Raises ValueError naming the
    expected form."""
    name, _, arguments = spec.partition(":")
    entry = PARAMETRIC.get(name.lower())
    if entry is None:
        raise ValueError(
            f"unknown PSF {spec!r}: expected a file or one of "
            + ", ".join(f"{n}:{form}" for n, (_, form) in PARAMETRIC.items())
        )
    make, form = entry
    try:
        numbers = [float(v) for v in arguments.split(",")]
        return make(*numbers)
    except (TypeError, ValueError) as error:
        raise ValueError(f"PSF {spec!r}: expected {name}:{form} ({error})") from None


def check(kernel, source: str = "the PSF") -> np.ndarray:
    """A measured PSF image, validated and normalised to sum 1 (float64).

    It must be 2-D, with odd sides (the centre is a pixel), finite, non-negative (a background-
    subtracted PSF's small negative values are an error to fix at the source, not to guess
    about), with a positive sum and its centroid within one pixel of the centre; `source` (the
    file name) is in the error messages."""
    kernel = np.asarray(kernel, np.float64)
    if kernel.ndim == 3 and kernel.shape[-1] == 1:
        kernel = kernel[..., 0]
    if kernel.ndim != 2:
        raise ValueError(f"{source}: a PSF must be a 2-D image, got shape {kernel.shape}")
    if kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(
            f"{source}: a PSF must have odd sides (its centre a pixel), got {kernel.shape}"
        )
    if not np.all(np.isfinite(kernel)):
        raise ValueError(f"{source}: the PSF has NaN/Inf values")
    if kernel.min() < 0:
        raise ValueError(
            f"{source}: the PSF has negative values (min {kernel.min():.3g}); subtract its "
            "background so that it is >= 0"
        )
    total = kernel.sum()
    if not total > 0:
        raise ValueError(f"{source}: the PSF sums to {total}, expected > 0")
    kernel = kernel / total
    rows, cols = np.indices(kernel.shape)
    offset = (
        float((rows * kernel).sum()) - kernel.shape[0] // 2,
        float((cols * kernel).sum()) - kernel.shape[1] // 2,
    )
    if max(abs(offset[0]), abs(offset[1])) > 1.0:
        raise ValueError(
            f"{source}: the PSF's centroid is ({offset[0]:+.2f}, {offset[1]:+.2f}) px from its "
            "centre pixel; centre it (the restoration would shift the image by as much)"
        )
    return kernel


def fwhm(kernel: np.ndarray) -> float:
    """The full width at half maximum of a kernel's central row, in pixels (linear
    interpolation between samples): a check of the parametric kernels and a report field."""
    row = kernel[kernel.shape[0] // 2]
    centre, half = kernel.shape[1] // 2, row[kernel.shape[1] // 2] / 2.0
    right = centre
    while right + 1 < row.size and row[right + 1] > half:
        right += 1
    if right + 1 >= row.size:
        return float(row.size)
    crossing = right + (row[right] - half) / (row[right] - row[right + 1])
    return 2.0 * (crossing - centre)


# --psf auto: a Moffat fitted to the image's own stars.

AUTO = "auto"
AUTO_STAMP = 7  # half-side of the square (pixels) each star is fitted in
AUTO_MIN_STARS = 3
AUTO_MAX_STARS = 25  # the brightest isolated ones


@dataclasses.dataclass(frozen=True)
class MoffatFit:
    """What `fit_moffat` found: the median FWHM and beta over `num_stars` stars, and their
    spread (the interquartile range over the stars, pixels and unitless)."""

    fwhm: float
    beta: float
    num_stars: int
    fwhm_iqr: float
    beta_iqr: float

    @property
    def spec(self) -> str:
        """The parametric form `parse` reads: "moffat:FWHM,BETA"."""
        return f"moffat:{self.fwhm:.4g},{self.beta:.4g}"


def _moffat_stamp(params, offsets):
    """A pixel-integrated Moffat star plus a flat sky on a stamp: params (flux, dy, dx, fwhm,
    beta, sky); offsets: the stamp's sub-pixel sample offsets [n, n] (mean over a pixel's
    OVERSAMPLE^2 samples). Unit-flux profile times flux (beta > 1 integrates to pi a^2/(b-1))."""
    flux, dy, dx, width, beta, sky = params
    alpha = width / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    rho2 = (offsets[0] - dy) ** 2 + (offsets[1] - dx) ** 2
    profile = (beta - 1.0) / (math.pi * alpha**2) * (1.0 + rho2 / alpha**2) ** -beta
    side = offsets.shape[1] // OVERSAMPLE
    pixels = profile.reshape(side, OVERSAMPLE, side, OVERSAMPLE).mean(axis=(1, 3))
    return flux * pixels + sky


def _star_candidates(image, valid, noise: float, radius: int):
    """(row, col) of local maxima more than 20 noise above the local median, at least `radius`
    + 1 from the border and from invalid pixels, with no other maximum above 5 noise within
    2 radius: the isolated bright stars, brightest first."""
    from scipy import ndimage

    sky = ndimage.median_filter(image, size=4 * radius + 1, mode="reflect")
    excess = image - sky
    peaks = (image == ndimage.maximum_filter(image, size=3)) & (excess > 5 * noise)
    rows, cols = np.nonzero(peaks)
    heights = excess[rows, cols]
    bad = ndimage.binary_dilation(~valid, iterations=radius + 1)
    found = []
    for i in np.argsort(-heights):
        r, c = rows[i], cols[i]
        if heights[i] < 20 * noise:
            break
        inside = (
            radius < r < image.shape[0] - radius - 1 and radius < c < image.shape[1] - radius - 1
        )
        near = (np.abs(rows - r) <= 2 * radius) & (np.abs(cols - c) <= 2 * radius)
        if inside and not bad[r, c] and near.sum() == 1:
            found.append((int(r), int(c)))
    return found


def fit_moffat(image, *, read_noise: float = 0.0, valid=None) -> MoffatFit:
    """The seeing PSF of an astronomical image as a Moffat profile, fitted to its own stars.

    image [H, W] in electrons (a sky included); the AUTO_MAX_STARS brightest isolated local
    maxima (more than 20 noise above their neighbourhood's median, no other source within two
    stamp sizes, clear of the border and of invalid pixels) are each fitted with a pixel-
    integrated Moffat plus a flat sky by Poisson-weighted least squares (the variance of each
    pixel is its count plus read_noise^2), and the medians of FWHM and beta taken. A star that
    is resolved or blended is an outlier the median ignores. Raises ValueError when fewer than
    AUTO_MIN_STARS stars fit (a crowded, starless or microscopy image: give the PSF)."""
    from scipy import optimize

    image = np.asarray(image, np.float64)
    valid = np.ones(image.shape, bool) if valid is None else np.asarray(valid) > 0
    radius = AUTO_STAMP
    # Noise of the sky: the median absolute deviation of pixel differences (robust to sources).
    diffs = np.diff(image[valid.all(axis=1)] if valid.all(axis=1).any() else image, axis=1)
    noise = max(1.4826 * float(np.median(np.abs(diffs - np.median(diffs)))) / math.sqrt(2), 1e-6)
    candidates = _star_candidates(image, valid, noise, radius)[:AUTO_MAX_STARS]
    side = 2 * radius + 1
    sub = (np.arange(OVERSAMPLE) + 0.5) / OVERSAMPLE - 0.5
    line = (np.arange(-radius, radius + 1)[:, None] + sub[None, :]).ravel()
    offsets = np.stack(np.meshgrid(line, line, indexing="ij"))
    widths, betas = [], []
    for r, c in candidates:
        stamp = image[r - radius : r + radius + 1, c - radius : c + radius + 1]
        sky = float(np.median(np.concatenate([stamp[0], stamp[-1], stamp[:, 0], stamp[:, -1]])))
        flux = max(float(stamp.sum()) - sky * side * side, 1.0)
        sigma = np.sqrt(np.maximum(stamp, 0.0) + read_noise**2 + 1.0)

        def residual(p, stamp=stamp, sigma=sigma):
            return ((_moffat_stamp(p, offsets) - stamp) / sigma).ravel()

        start = (flux, 0.0, 0.0, 3.0, 2.5, sky)
        lower = (0.0, -1.5, -1.5, 0.5, 1.05, -np.inf)
        upper = (np.inf, 1.5, 1.5, float(radius), 20.0, np.inf)
        try:
            fit = optimize.least_squares(residual, start, bounds=(lower, upper), x_scale="jac")
        except (ValueError, FloatingPointError):
            continue
        if fit.success and fit.x[0] > 0 and 0.5 < fit.x[3] < radius - 0.5:
            widths.append(fit.x[3])
            betas.append(fit.x[4])
    if len(widths) < AUTO_MIN_STARS:
        raise ValueError(
            f"--psf auto found {len(widths)} isolated star(s) that a Moffat profile fits "
            f"(of {len(candidates)} candidates; it needs {AUTO_MIN_STARS}): give the PSF as "
            "moffat:FWHM_PX,BETA or as an image"
        )
    iqr = lambda v: float(np.subtract(*np.percentile(v, [75, 25])))
    return MoffatFit(
        float(np.median(widths)), float(np.median(betas)), len(widths), iqr(widths), iqr(betas)
    )
