"""Image-quality and physics metrics, pure functions of arrays.

Physics metrics judge a restoration x_hat against the measurement y it came from, under the
noise model lambda = s x + b, y ~ Poisson(lambda) + N(0, r^2) (see pdr_jax.physics.noise):

- `chi_square`: mean((y - lambda_hat)^2 / (lambda_hat + r^2)), ~1 for a fit at the noise level,
  < 1 for overfitting the noise, > 1 for a biased or oversmoothed fit.
- `residual_autocorrelation`, `spectral_flatness`: whether the normalised residuals are white;
  structure left in them is signal the restoration missed or invented.
- `relative_bias`, `relative_bias_by_level`: mean error relative to the mean signal.

(Gain and read noise from photon-transfer curves: pdr_jax.physics.noise_estimation.)

Image shapes: [H, W], [H, W, C] or [B, H, W, C]; statistics pool every pixel (and mask == 0
pixels are left out where a mask is taken).
"""

from __future__ import annotations

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


def as_bhwc(image, name: str = "image"):
    """([B, H, W, C] view, undo) of an [H, W], [H, W, C] or [B, H, W, C] array (numpy or jax,
    dtype kept); undo maps a [B, H, W, C] result back to the input's layout (an [H, W] input's
    result with several channels, a demosaicked mosaic say, to [H, W, C]). The one place where
    pdr_jax normalises image layouts (metrics, restoration)."""
    if image.ndim == 2:
        return image[None, :, :, None], lambda x: x[0, :, :, 0] if x.shape[-1] == 1 else x[0]
    if image.ndim == 3:
        return image[None], lambda x: x[0]
    if image.ndim == 4:
        return image, lambda x: x
    raise ValueError(f"{name}: expected [H, W], [H, W, C] or [B, H, W, C], got shape {image.shape}")


def _as_bhwc(image):
    return as_bhwc(jnp.asarray(image, jnp.float32))[0]


def residual_autocorrelation(residuals, max_lag: int = 2, mask=None):
    """Normalised spatial autocorrelation ``rho(dy, dx)`` for ``|dy|, |dx| <= max_lag``.

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
    """Largest ``|rho|`` of residual_autocorrelation away from lag (0, 0); scalar, ~0 when white."""
    rho = residual_autocorrelation(residuals, max_lag, mask)
    centre = jnp.zeros(rho.shape, bool).at[max_lag, max_lag].set(True)
    return jnp.max(jnp.where(centre, 0.0, jnp.abs(rho)))


def _half_plane(height: int, width: int) -> np.ndarray:
    """[H, W] bool: one frequency of each conjugate pair (u, v) ~ (-u, -v), self-conjugate ones
    (DC, Nyquist lines' corners) excluded, so each kept periodogram value has 2 degrees of freedom.

    (u, v) is kept when its row-major index is below its conjugate's, i.e. u < -u mod H, or
    u == -u mod H and v < -v mod W; built from the two axes, so the only [H, W] array is the
    result (one byte per pixel).
    """
    u, v = np.arange(height), np.arange(width)
    u_conj, v_conj = (-u) % height, (-v) % width
    return (u < u_conj)[:, None] | ((u == u_conj)[:, None] & (v < v_conj)[None, :])


def spectral_flatness(residuals):
    """Wiener entropy of the residual power spectrum, scaled so white noise gives ~1.

    residuals: [H, W], [H, W, C] or [B, H, W, C]. The periodogram ``|FFT|^2`` over (H, W) is
    averaged over the n = B C images; flatness = geometric mean / arithmetic mean over the
    non-self-conjugate half-plane, divided by its expectation exp(psi(n) - log n) for white
    Gaussian residuals (a mean of n exponentials per frequency). Coloured residuals give < 1.
    Returns a scalar float32.
    """
    z = _as_bhwc(residuals)
    batch, height, width, channels = z.shape
    z = z - jnp.mean(z, axis=(1, 2), keepdims=True)
    power = jnp.mean(jnp.square(jnp.abs(jnp.fft.fft2(z, axes=(1, 2)))), axis=(0, 3))
    kept = _half_plane(height, width)
    count = int(kept.sum())
    # Masked sums rather than power[kept]: no gathered copy, and the same code under jit.
    log_mean = jnp.sum(jnp.where(kept, jnp.log(jnp.where(kept, power, 1.0)), 0.0)) / count
    flatness = jnp.exp(log_mean) / (jnp.sum(jnp.where(kept, power, 0.0)) / count)
    n = batch * channels
    return flatness / jnp.exp(jax.scipy.special.digamma(float(n)) - np.log(n))


def std_coverage(x_hat, std, x_true, k: float = 1.0) -> float:
    """Fraction of pixels whose error ``|x_hat - x_true|`` lies within k times the predicted std:
    a calibrated Gaussian posterior gives 0.683 at k = 1 and 0.954 at k = 2. Any equal shapes."""
    x_hat, std, x_true = (np.asarray(v, np.float64) for v in (x_hat, std, x_true))
    if not x_hat.shape == std.shape == x_true.shape:
        raise ValueError(
            f"shapes differ: x_hat {x_hat.shape}, std {std.shape}, x_true {x_true.shape}"
        )
    return float(np.mean(np.abs(x_hat - x_true) <= k * std))


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


# Image-quality metrics: a restoration x_hat against the clean image, plus the Poisson deviance.
#
# - `psnr`, `ssim`: as skimage.metrics.peak_signal_noise_ratio / structural_similarity with
#   gaussian_weights=True, sigma=1.5, use_sample_covariance=False (Wang et al. 2004, Eq. 13:
#   11 x 11 Gaussian window of std 1.5, K1 = 0.01, K2 = 0.03), in float64 numpy.
# - `ms_ssim`: multi-scale SSIM (Wang, Simoncelli & Bovik 2003, Eq. 7) with its 5 weights.
# - `fourier_ring_correlation`, `frc_resolution`: the FRC curve of two images and the
#   resolution where it first drops below a threshold (1/7 by default).
# - `poisson_deviance`: 2 KL(Poisson(y) || Poisson(lambda_hat)) per pixel, shifted for read noise.
#
# Images: [H, W] or [H, W, C] give a scalar; [B, H, W, C] gives [B] (one value per image).
# Channels are scored separately and averaged, as skimage does with channel_axis=-1.

SSIM_SIGMA = 1.5  # Gaussian window std (Wang et al. 2004)
SSIM_TRUNCATE = 3.5  # window radius int(3.5 sigma + 0.5) = 5: skimage's (scipy's) truncation
SSIM_K1, SSIM_K2 = 0.01, 0.03
# Wang, Simoncelli & Bovik 2003's calibrated exponents beta_j = gamma_j (alpha_5 = beta_5).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
FRC_THRESHOLD = 1.0 / 7.0


def _image_batch(image, name: str) -> tuple[np.ndarray, bool]:
    """([B, H, W, C] float64, whether a batch came in)."""
    image = np.asarray(image, np.float64)
    return as_bhwc(image, name)[0], image.ndim == 4


def _pair(x, x_true) -> tuple[np.ndarray, np.ndarray, bool]:
    a, batched = _image_batch(x, "x")
    b, _ = _image_batch(x_true, "x_true")
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: x {np.shape(x)} vs x_true {np.shape(x_true)}")
    return a, b, batched


def psnr(x, x_true, data_range: float = 1.0):
    """Peak signal-to-noise ratio 10 log10(data_range^2 / MSE) in dB (inf when equal).

    x, x_true: [H, W], [H, W, C] (scalar) or [B, H, W, C] ([B], one PSNR per image).
    """
    a, b, batched = _pair(x, x_true)
    mse = np.mean(np.square(a - b), axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        values = 10.0 * np.log10(data_range**2 / mse)
    return values if batched else float(values[0])


def _gaussian_window(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return taps / taps.sum()


def _filter_valid(image: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable correlation of [B, H, W, C] over H and W, 'valid' part only: every output
    window lies inside the image (skimage's SSIM filters with reflection, then crops these)."""
    n = len(taps)
    height, width = image.shape[1] - n + 1, image.shape[2] - n + 1
    rows = sum(w * image[:, k : k + height] for k, w in enumerate(taps))
    return sum(w * rows[:, :, k : k + width] for k, w in enumerate(taps))


def _ssim_terms(a: np.ndarray, b: np.ndarray, data_range: float):
    """Mean SSIM and mean contrast-structure term per image and channel: two [B, C] arrays."""
    taps = _gaussian_window()
    if min(a.shape[1:3]) < len(taps):
        raise ValueError(
            f"SSIM needs images of at least {len(taps)}x{len(taps)} pixels, got {a.shape[1:3]}"
        )
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
    # Population (co)variances, use_sample_covariance=False.
    var_a = _filter_valid(a * a, taps) - mu_a**2
    var_b = _filter_valid(b * b, taps) - mu_b**2
    cov = _filter_valid(a * b, taps) - mu_a * mu_b
    luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    contrast_structure = (2 * cov + c2) / (var_a + var_b + c2)
    return (
        np.mean(luminance * contrast_structure, axis=(1, 2)),
        np.mean(contrast_structure, axis=(1, 2)),
    )


def ssim(x, x_true, data_range: float = 1.0):
    """Structural similarity (Wang et al. 2004) with an 11 x 11 Gaussian window, std 1.5.

    Equals skimage.metrics.structural_similarity(x, x_true, data_range=data_range,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=-1) for
    float64 inputs (tests: < 1e-10; ~1e-6 for float32 inputs, which skimage keeps in float32).
    x, x_true: [H, W], [H, W, C] (scalar) or [B, H, W, C] ([B]); H, W >= 11.
    """
    a, b, batched = _pair(x, x_true)
    values = np.mean(_ssim_terms(a, b, data_range)[0], axis=1)
    return values if batched else float(values[0])


def _halve(image: np.ndarray) -> np.ndarray:
    """2 x 2 average and subsampling of [B, H, W, C] (Wang et al. 2003, Fig. 1's low-pass + 2x
    downsampling, as their msssim.m: an odd last row/column is mirrored)."""
    pads = [(0, 0), (0, image.shape[1] % 2), (0, image.shape[2] % 2), (0, 0)]
    image = np.pad(image, pads, mode="symmetric")
    batch, height, width, channels = image.shape
    return image.reshape(batch, height // 2, 2, width // 2, 2, channels).mean(axis=(2, 4))


def ms_ssim_num_scales(height: int, width: int, max_scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """The most scales (<= max_scales) whose coarsest image is still >= the 11-pixel window."""
    size, num_scales = min(height, width), 0
    while num_scales < max_scales and size >= len(_gaussian_window()):
        num_scales += 1
        size = (size + 1) // 2
    return num_scales


def ms_ssim(
    x, x_true, data_range: float = 1.0, *, num_scales: int | None = None, weights=MS_SSIM_WEIGHTS
):
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003, Eq. 7):

        MS-SSIM = [l_M cs_M]^w_M prod_{j < M} cs_j^w_j,

    each term the mean of its SSIM map (`ssim`'s window and constants) at scale j, the image
    halved between scales (2 x 2 mean). w are the paper's weights (as published: they sum
    to 1.0001); num_scales < 5 keeps the first num_scales renormalised to sum 1 (for images below the 5-scale minimum of
    161 pixels, e.g. 128-pixel crops: 4 scales). Negative mean terms are clipped to 0 first
    (as tf.image.ssim_multiscale does) so the fractional powers stay real.
    x, x_true: [H, W], [H, W, C] (scalar) or [B, H, W, C] ([B]); channels averaged.
    """
    a, b, batched = _pair(x, x_true)
    weights = np.asarray(weights, np.float64)
    if num_scales is not None and num_scales < len(weights):
        weights = weights[:num_scales] / weights[:num_scales].sum()
    fits = ms_ssim_num_scales(*a.shape[1:3], len(weights))
    if fits < len(weights):
        raise ValueError(
            f"MS-SSIM with {len(weights)} scales needs the coarsest scale >= 11 pixels; "
            f"{a.shape[1]}x{a.shape[2]} images allow {fits} (pass num_scales={fits})"
        )
    terms = []
    for scale in range(len(weights)):
        full, contrast_structure = _ssim_terms(a, b, data_range)
        last = scale == len(weights) - 1
        terms.append(np.maximum(full if last else contrast_structure, 0.0))
        if not last:
            a, b = _halve(a), _halve(b)
    values = np.prod(np.stack(terms) ** weights[:, None, None], axis=0).mean(axis=1)
    return values if batched else float(values[0])


def _tukey(n: int, alpha: float) -> np.ndarray:
    """[n] Tukey (tapered cosine) window: flat middle, cosine tapers over alpha n / 2 each end."""
    if alpha <= 0:
        return np.ones(n)
    t = (np.arange(n) + 0.5) / n
    edge = np.minimum(t, 1 - t) / (alpha / 2)
    return np.where(edge < 1, 0.5 - 0.5 * np.cos(np.pi * np.minimum(edge, 1)), 1.0)


def fourier_ring_correlation(a, b, *, taper: float = 0.25):
    """FRC of two images: (frequencies [K] cycles/pixel, frc [K] float64).

    ``FRC(q) = Re sum_ring F_a conj(F_b) / sqrt(sum_ring |F_a|^2 sum_ring |F_b|^2)`` over rings of
    one frequency bin (1 / min(H, W) cycles/pixel) at q = 1, ..., K = min(H, W) // 2 bins, i.e.
    up to Nyquist (0.5); the DC bin is left out. a, b: [H, W] or [H, W, C] (the channels' sums
    are pooled per ring). Each image has its mean removed and is multiplied by a Tukey window
    (taper = fraction tapered; 0 for none) so the image borders do not add a spurious
    correlated cross to the spectrum. Identical images give 1, independent noise ~N(0, 1/n)
    with n the ring's pixel count.
    """
    x, y, batched = _pair(a, b)
    if batched:
        raise ValueError("fourier_ring_correlation takes one image pair ([H, W] or [H, W, C])")
    x, y = x[0], y[0]
    height, width = x.shape[:2]
    window = np.outer(_tukey(height, taper), _tukey(width, taper))[:, :, None]
    fx = np.fft.fft2((x - x.mean(axis=(0, 1))) * window, axes=(0, 1))
    fy = np.fft.fft2((y - y.mean(axis=(0, 1))) * window, axes=(0, 1))
    size = min(height, width)
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij"))
    ring = np.rint(radius * size).astype(int).ravel()
    num_rings = size // 2

    def ring_sums(values):
        return np.bincount(ring, values.sum(axis=-1).ravel(), minlength=num_rings + 1)

    cross = ring_sums(np.real(fx * np.conj(fy)))
    power = ring_sums(np.abs(fx) ** 2) * ring_sums(np.abs(fy) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        frc = np.where(power > 0, cross / np.sqrt(power), 0.0)
    rings = np.arange(1, num_rings + 1)
    return rings / size, frc[rings]


def frc_resolution(frequencies, frc, threshold: float = FRC_THRESHOLD) -> float:
    """Resolution in pixels, 1 / q, at the first crossing of frc below threshold.

    frequencies, frc: [K] as fourier_ring_correlation returns (cycles/pixel, increasing).
    The crossing is interpolated linearly between the last ring above and the first below.
    Returns 1 / frequencies[-1] (2 pixels, Nyquist) when the curve never drops below, and inf
    when it starts below. 1/7 is the half-data criterion of two independent reconstructions
    (Rosenthal & Henderson 2003; Nieuwenhuizen et al. 2013); against a noise-free reference
    the equivalent threshold is 0.5 (Rosenthal & Henderson 2003).
    """
    frequencies, frc = np.asarray(frequencies, np.float64), np.asarray(frc, np.float64)
    below = np.flatnonzero(frc < threshold)
    if below.size == 0:
        return float(1.0 / frequencies[-1])
    k = int(below[0])
    if k == 0:
        return float("inf")
    fraction = (frc[k - 1] - threshold) / (frc[k - 1] - frc[k])
    return float(1.0 / (frequencies[k - 1] + fraction * (frequencies[k] - frequencies[k - 1])))


def poisson_deviance(y, x_hat, s, r, b, mask=None):
    """Mean Poisson deviance 2 [y' log(y' / lambda') - (y' - lambda')] over mask == 1; scalar.

    The per-pixel term is 2 KL(Poisson(y') || Poisson(lambda')), the Poisson analogue of the
    chi-square. Read noise is folded in with the shifted-Poisson approximation (y + r^2 ~
    Poisson(lambda + r^2), same mean and variance): y' = max(y + r^2, 0), lambda' = s x_hat + b
    + r^2 (floored at 1e-6); r = 0 gives the plain Poisson deviance. For a correct fit the mean
    is ~1 at high counts (a chi-square with one degree of freedom per pixel), lower at a few
    electrons. y: electrons, x_hat in [0, 1], s, r, b as chi_square.
    """
    r2 = jnp.square(jnp.asarray(r, jnp.float32))
    shifted = jnp.maximum(jnp.asarray(y, jnp.float32) + r2, 0.0)
    rate = jnp.maximum(noise.mean_electrons(x_hat, s, b) + r2, 1e-6)
    per_pixel = 2.0 * (jax.scipy.special.xlogy(shifted, shifted / rate) - (shifted - rate))
    return _masked_mean(per_pixel, mask)
