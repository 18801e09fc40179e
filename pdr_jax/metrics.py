"""Image-quality and physics metrics, pure functions of arrays.

Physics metrics judge a restoration x_hat against the measurement y it came from, under the
noise model lambda = s x + b, y ~ Poisson(lambda) + N(0, r^2) (see pdr_jax.physics.noise):

- `chi_square`: mean((y - lambda_hat)^2 / (lambda_hat + r^2)), ~1 for a fit at the noise level,
  < 1 for overfitting the noise, > 1 for a biased or oversmoothed fit.
- `residual_autocorrelation`, `spectral_flatness`: whether the normalised residuals are white;
  structure left in them is signal the restoration missed or invented.
- `fit_photon_transfer` (+ `ptc_from_flat_pairs`, `ptc_from_frame_pair`): gain and read noise
  from the photon-transfer curve var_ADU = mean_ADU / gain + (read_noise / gain)^2.
- `relative_bias`, `relative_bias_by_level`: mean error relative to the mean signal.

Image shapes: [H, W], [H, W, C] or [B, H, W, C]; statistics pool every pixel (and mask == 0
pixels are left out where a mask is taken).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pdr_jax.physics import noise


def _masked_mean(values, mask):
    if mask is None:
        return jnp.mean(values)
    weights = jnp.broadcast_to(jnp.asarray(mask, values.dtype), values.shape)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def normalized_residuals(y, x_hat, s, r, b):
    """(y - lambda_hat) / sqrt(lambda_hat + r^2), lambda_hat = s x_hat + b; broadcast shape."""
    lam = noise.mean_electrons(x_hat, s, b)
    return (y - lam) * jax.lax.rsqrt(noise.variance(lam, r))


def chi_square(y, x_hat, s, r, b, mask=None):
    """Reduced chi-square mean((y - lambda_hat)^2 / (lambda_hat + r^2)) over mask == 1; scalar.

    y: electrons; x_hat: intensity in [0, 1]; s, r, b: scalars or broadcastable arrays.
    """
    return _masked_mean(jnp.square(normalized_residuals(y, x_hat, s, r, b)), mask)


def _as_bhwc(image):
    """[H, W] / [H, W, C] / [B, H, W, C] -> [B, H, W, C]."""
    image = jnp.asarray(image, jnp.float32)
    if image.ndim == 2:
        return image[None, :, :, None]
    if image.ndim == 3:
        return image[None]
    if image.ndim == 4:
        return image
    raise ValueError(f"expected an image [H, W], [H, W, C] or [B, H, W, C], got {image.shape}")


def residual_autocorrelation(residuals, max_lag: int = 2, mask=None):
    """Normalised spatial autocorrelation rho(dy, dx) for |dy|, |dx| <= max_lag.

    residuals: [H, W], [H, W, C] or [B, H, W, C] (e.g. normalized_residuals); mask: same shape
    or None (pixel pairs with a masked member are left out). Residuals are centred on their
    (masked) mean. Returns [2 max_lag + 1, 2 max_lag + 1] float32 with rho = 1 at the centre;
    for white residuals of N pixels the off-centre entries are ~N(0, 1/N).
    """
    z = _as_bhwc(residuals)
    m = jnp.ones_like(z) if mask is None else jnp.broadcast_to(_as_bhwc(mask), z.shape)
    z = (z - jnp.sum(z * m) / jnp.maximum(jnp.sum(m), 1.0)) * m
    height, width = z.shape[1:3]
    if not 0 <= max_lag < min(height, width):
        raise ValueError(f"max_lag {max_lag} must be in [0, {min(height, width) - 1}]")
    variance = jnp.sum(z * z) / jnp.maximum(jnp.sum(m), 1.0)
    rows = []
    for dy in range(-max_lag, max_lag + 1):
        row = []
        for dx in range(-max_lag, max_lag + 1):
            ys, yd = slice(max(dy, 0), height + min(dy, 0)), slice(max(-dy, 0), height - max(dy, 0))
            xs, xd = slice(max(dx, 0), width + min(dx, 0)), slice(max(-dx, 0), width - max(dx, 0))
            products = z[:, ys, xs] * z[:, yd, xd]
            pairs = m[:, ys, xs] * m[:, yd, xd]
            row.append(jnp.sum(products) / jnp.maximum(jnp.sum(pairs), 1.0))
        rows.append(jnp.stack(row))
    return jnp.stack(rows) / variance


def whiteness(residuals, max_lag: int = 2, mask=None):
    """Largest |rho| of residual_autocorrelation away from lag (0, 0); scalar, ~0 when white."""
    rho = residual_autocorrelation(residuals, max_lag, mask)
    centre = jnp.zeros(rho.shape, bool).at[max_lag, max_lag].set(True)
    return jnp.max(jnp.where(centre, 0.0, jnp.abs(rho)))


def _half_plane(height: int, width: int) -> np.ndarray:
    """[H, W] bool: one frequency of each conjugate pair (u, v) ~ (-u, -v), self-conjugate ones
    (DC, Nyquist lines' corners) excluded, so each kept periodogram value has 2 degrees of freedom."""
    u, v = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    index = u * width + v
    conjugate = ((-u) % height) * width + (-v) % width
    return index < conjugate


def spectral_flatness(residuals):
    """Wiener entropy of the residual power spectrum, scaled so white noise gives ~1.

    residuals: [H, W], [H, W, C] or [B, H, W, C]. The periodogram |FFT|^2 over (H, W) is
    averaged over the n = B C images; flatness = geometric mean / arithmetic mean over the
    non-self-conjugate half-plane, divided by its expectation exp(psi(n) - log n) for white
    Gaussian residuals (a mean of n exponentials per frequency). Coloured residuals give < 1.
    Returns a scalar float32.
    """
    z = _as_bhwc(residuals)
    batch, height, width, channels = z.shape
    z = z - jnp.mean(z, axis=(1, 2), keepdims=True)
    power = jnp.mean(jnp.square(jnp.abs(jnp.fft.fft2(z, axes=(1, 2)))), axis=(0, 3))
    kept = power[_half_plane(height, width)]
    flatness = jnp.exp(jnp.mean(jnp.log(kept))) / jnp.mean(kept)
    n = batch * channels
    return flatness / jnp.exp(jax.scipy.special.digamma(float(n)) - np.log(n))


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


def _neighbour_mean(image):
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
    level = (_neighbour_mean(0.5 * (a + b)) - black_level).ravel()
    mean = (0.5 * (a + b)[1:-1, 1:-1] - black_level).ravel()
    diff = (a - b)[1:-1, 1:-1].ravel()
    means, variances = [], []
    for chunk in np.array_split(np.argsort(level), num_bins):
        if chunk.size >= min_pixels:
            means.append(mean[chunk].mean())
            variances.append(np.var(diff[chunk]) / 2)
    return np.asarray(means), np.asarray(variances)


def relative_bias(x_hat, x_true, mask=None):
    """mean(x_hat - x_true) / mean(x_true) over mask == 1; scalar (0 = unbiased)."""
    x_hat, x_true = jnp.asarray(x_hat, jnp.float32), jnp.asarray(x_true, jnp.float32)
    return _masked_mean(x_hat - x_true, mask) / _masked_mean(x_true, mask)


def relative_bias_by_level(x_hat, x_true, num_bins: int = 8):
    """Relative bias in equal-count bins of the true signal: (levels [K], bias [K]).

    levels: mean x_true per bin; bias: mean(x_hat - x_true) / mean(x_true) per bin. Shows
    whether dark regions are pushed up (a common failure at low photon counts).
    """
    x_hat = np.asarray(x_hat, np.float64).ravel()
    x_true = np.asarray(x_true, np.float64).ravel()
    order = np.argsort(x_true)
    levels, biases = [], []
    for chunk in np.array_split(order, num_bins):
        if chunk.size:
            level = x_true[chunk].mean()
            levels.append(level)
            biases.append((x_hat[chunk] - x_true[chunk]).mean() / max(level, 1e-12))
    return np.asarray(levels), np.asarray(biases)
