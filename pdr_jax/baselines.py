"""Classical baselines for Poisson-Gaussian denoising: variance stabilisation + a Gaussian denoiser.

Measurement model (pdr_jax.physics.noise): y = Poisson(lambda) + N(0, r^2) electrons with
lambda = s x + b, x in [0, 1]. Every baseline returns x_hat = (lambda_hat - b) / s clipped to
[0, 1], the range of the clean images, so it is scored like the diffusion restorations.

- `gat_forward` / `gat_inverse`: the generalized Anscombe transform (GAT) and the closed-form
  approximation of its exact unbiased inverse (Makitalo & Foi 2011, 2013; formulas below).
- `gat_bm3d`: GAT -> BM3D (the `bm3d` package) with sigma = 1 -> unbiased inverse
  (the VST + BM3D pipeline of Makitalo & Foi 2013).
- `gat_nlm`: GAT -> non-local means (skimage.restoration.denoise_nl_means) -> unbiased inverse.
- `noisy_estimate`: (y - b) / s, the unbiased per-pixel maximum-likelihood estimate.

Images are [H, W] or [H, W, C] numpy arrays (a C > 1 image is denoised channel by channel);
the noise parameters s, r, b are scalars in electrons.

GAT for z = alpha p + n, p ~ Poisson(lambda), n ~ N(mu, sigma^2) (Starck, Murtagh & Bijaoui
1998; the GAT as Makitalo & Foi 2013 write it):

    f(z) = (2 / alpha) sqrt(alpha z + 3/8 alpha^2 + sigma^2 - alpha mu)   where the root is real,
    f(z) = 0                                                              elsewhere.

Our electrons have alpha = 1, mu = 0, sigma = r, so f(y) = 2 sqrt(y + 3/8 + r^2): Var f(y) ~ 1
once lambda is a few electrons (tests measure it).

Inverse. Applying the algebraic inverse (D / 2)^2 - 3/8 - r^2 to a denoised D ~ E[f(y)] is
biased at low counts, because E[f(y)] != f(E[y]). The exact unbiased inverse maps E[f(y) |
lambda] back to lambda; Makitalo & Foi, "A closed-form approximation of the exact unbiased
inverse of the Anscombe variance-stabilizing transformation", IEEE TIP 20(9), 2011
(doi:10.1109/TIP.2011.2121085) approximate it for Poisson data by

    I(D) = D^2 / 4 + sqrt(3/2) / (4 D) - 11 / (8 D^2) + 5 sqrt(3/2) / (8 D^3) - 1/8,

and Makitalo & Foi, "Optimal inversion of the generalized Anscombe transformation for
Poisson-Gaussian noise", IEEE TIP 22(1), 2013 (doi:10.1109/TIP.2012.2202675) use
I(D, sigma) = I(D) - sigma^2 for the GAT, clipped at 0, then lambda_hat = alpha I(D, sigma /
alpha) + mu. I(D) vanishes at D = 2 sqrt(3/8) = E[f(y)] for lambda = 0 (pure Poisson) and its
inverse-power terms blow up below it, so D <= 2 sqrt(3/8) maps to 0 here. Written from these
formulas (not from the authors' code). Measured on simulated data (tests/test_baselines.py):
relative bias < 1.5% for lambda >= 2 and r in {0, 1, 2, 5}, < 3.5% at lambda = 1, and at most
0.04 electrons at lambda = 0.2-0.5, where the closed form is only an approximation.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np

_SQRT_3_2 = math.sqrt(1.5)
D_MIN = 2.0 * math.sqrt(3.0 / 8.0)  # E[f(y)] of lambda = 0 Poisson data, where I(D) = 0


def gat_forward(y, r: float, *, alpha: float = 1.0, mu: float = 0.0):
    """Generalized Anscombe transform f(y) = (2/alpha) sqrt(alpha y + 3/8 alpha^2 + r^2 - alpha mu).

    y: any shape, float (electrons when alpha = 1). r: Gaussian read noise std (same units as
    y). Returns float64 of y's shape; 0 where the root is not real.
    """
    y = np.asarray(y, np.float64)
    argument = alpha * y + 0.375 * alpha**2 + r**2 - alpha * mu
    return np.where(argument > 0, 2.0 / alpha * np.sqrt(np.maximum(argument, 0.0)), 0.0)


def gat_inverse(D, r: float, *, alpha: float = 1.0, mu: float = 0.0):
    """Closed-form approximation of the exact unbiased GAT inverse: E[f(y)] -> E[y].

    D: any shape, a denoised GAT image (an estimate of E[f(y)]). r, alpha, mu as gat_forward.
    Returns lambda_hat >= mu, float64 of D's shape (see the module docstring for the formula
    and its measured bias).
    """
    D = np.asarray(D, np.float64)
    safe = np.maximum(D, D_MIN)  # the branch below D_MIN is discarded; avoid 1/D^3 overflow
    poisson = (
        0.25 * safe**2
        + 0.25 * _SQRT_3_2 / safe
        - 1.375 / safe**2
        + 0.625 * _SQRT_3_2 / safe**3
        - 0.125
    )
    inverse = np.where(D > D_MIN, np.maximum(poisson - (r / alpha) ** 2, 0.0), 0.0)
    return alpha * inverse + mu


def noisy_estimate(y, s: float, r: float, b: float = 0.0):
    """(y - b) / s clipped to [0, 1]: the per-pixel estimate with no denoising. r is unused.

    y: [H, W] or [H, W, C] electrons. Returns float32 of y's shape.
    """
    del r
    return np.clip((np.asarray(y, np.float64) - b) / s, 0.0, 1.0).astype(np.float32)


def shifted_poisson_em(
    y, operator, s: float, r: float, b: float = 0.0, *, iterations: int, start=None, mask=None
):
    """Richardson-Lucy (EM) for y + r^2 ~ Poisson(s A(x) + b + r^2) through a forward operator.

    x <- x A^T(m z / lambda) / A^T(m), lambda = s A(x) + b + r^2, z = max(y + r^2, 0), m the
    mask (1 = data): the multiplicative update that increases the shifted-Poisson likelihood
    and keeps x >= 0 (Richardson 1972, Lucy 1974; the read noise folded into the Poisson mean
    as in the rest of pdr_jax). y: [B, H, W, C'] electrons on the operator's canvas; start:
    [B, H, W, C] in [0, 1] units (None: the flat image of y's mean); mask: like y. Returns x
    [B, H, W, C] float32, >= 0, not clipped above. It amplifies noise as it goes: the iteration
    count is the regularisation.
    """
    import jax
    import jax.numpy as jnp

    y = jnp.asarray(y, jnp.float32)
    m = jnp.ones_like(y) if mask is None else jnp.asarray(mask, jnp.float32)
    offset = b + r * r
    z = jnp.maximum(y + r * r, 0.0)
    norm = jnp.maximum(operator.adjoint(m), 1e-12)  # A^T m
    if start is None:
        level = jnp.sum((y - b) * m) / jnp.maximum(jnp.sum(m), 1.0) / s
        start = jnp.full(operator.adjoint(y).shape, jnp.maximum(level, 1e-3))
    x = jnp.maximum(jnp.asarray(start, jnp.float32), 1e-6)

    seen = norm > 1e-6  # values of x that some measured pixel sees: the others stay

    def update(_, x):
        lam = jnp.maximum(s * operator.forward(x) + offset, 1e-6)
        ratio = jnp.maximum(operator.adjoint(m * z / lam), 0.0) / norm  # FFT rounding: >= 0
        return jnp.where(seen, x * ratio, x)

    return np.asarray(jax.lax.fori_loop(0, iterations, update, x), np.float32)


def _per_channel(denoise, image):
    """Apply denoise([H, W] float64) -> [H, W] to each channel of an [H, W] or [H, W, C] image."""
    if image.ndim == 2:
        return denoise(image)
    if image.ndim == 3:
        return np.stack([denoise(image[..., c]) for c in range(image.shape[-1])], axis=-1)
    raise ValueError(f"expected an image [H, W] or [H, W, C], got shape {image.shape}")


def _denoised_in_range(denoise_unit, image):
    """A stabilised image (noise std 1) through denoise_unit(image scaled to [0, 1], noise std
    scaled alike), scaled back; a constant image as it is (nothing to denoise)."""
    lo, hi = float(image.min()), float(image.max())
    if hi - lo < 1e-12:
        return image
    denoised = denoise_unit((image - lo) / (hi - lo), 1.0 / (hi - lo))
    return np.asarray(denoised, np.float64) * (hi - lo) + lo


def stabilised(
    denoise_unit,
    y,
    s: float,
    r: float,
    b: float,
    *,
    joint_channels: bool = False,
    operator=None,
):
    """GAT -> denoise_unit(image in [0, 1], noise std) -> unbiased inverse -> x in [0, 1].

    The stabilised image (noise std 1) is rescaled to [0, 1] before denoising, with the noise
    std scaled alike, as Makitalo & Foi's VST + BM3D demo does: the denoisers' defaults assume
    that range. joint_channels=True hands denoise_unit the whole [H, W, C] image (one range,
    one noise std: a multi-channel prior denoises its channels together); otherwise each
    channel goes alone.

    operator (pdr_jax.physics.operators; None: the identity): y is its measurement, e.g. a
    mosaic [H, W, 1]. The GAT acts on electrons, so every pixel has unit noise std whatever its
    colour's gain; `operator.fill` turns the stabilised measurement into x's channels
    (Menon 2007 demosaicking of the stabilised mosaic; the caller tells the denoiser the
    measured pixels' noise level, the restoration times operator.start_sigma_factor), the channels are denoised together,
    and the inverse divides by s times each channel's gain.
    """

    denoise = functools.partial(_denoised_in_range, denoise_unit)
    z = gat_forward(np.asarray(y, np.float64), r)
    gains = np.float64(1.0)
    if operator is not None:
        z, gains = operator.fill(z), np.asarray(operator.channel_gains, np.float64)
    lam = gat_inverse(denoise(z) if joint_channels else _per_channel(denoise, z), r)
    return np.clip((lam - b) / (s * gains), 0.0, 1.0).astype(np.float32)


def stabilised_planes(denoise_unit, y, mosaic, s: float, r: float, b: float = 0.0):
    """Denoise, then demosaick: the GAT of a mosaic y [H, W, 1] (H, W even), its four Bayer
    planes as one grayscale image (mosaic.to_planes; after the GAT their noise is white, std 1,
    and a grayscale denoiser is exact about it) through denoise_unit(image [H, W, 1] in [0, 1],
    noise std) like `stabilised`, the unbiased inverse, divided by s times each pixel's gain,
    then demosaicked (mosaic.fill, Menon 2007) -> x [H, W, 3] in [0, 1].

    The classical pipeline's order (gat_bm3d_menon) with the planes denoised together; the
    restoration's start averages it with the demosaicked-then-denoised estimate of `stabilised`
    where the noise is high (SamplerSettings.planes_min_noise)."""
    z = _denoised_in_range(
        denoise_unit, mosaic.to_planes(gat_forward(np.asarray(y, np.float64), r))
    )
    gains = mosaic.weights(*z.shape[:2]).sum(axis=-1, keepdims=True)
    x = np.clip((gat_inverse(mosaic.from_planes(z), r) - b) / (s * gains), 0.0, 1.0)
    return np.clip(mosaic.fill(x), 0.0, 1.0).astype(np.float32)


def measured_luminance(denoise_unit, estimate, y, mosaic, s: float, r: float, b: float, valid):
    """A mosaic's colour estimate [H, W, 3] in [0, 1] with its luminance re-estimated from the
    measured pixels: in the GAT domain (y [H, W, 1] electrons, valid [H, W, 1]) each pixel's
    stabilised value z, plus the estimate's luminance (the mean of its three stabilised
    channels) minus the estimate's value of the pixel's colour, is a measurement of the
    luminance whose noise is white with std 1 (the colour difference comes from the estimate);
    it goes through denoise_unit like `stabilised` (a grayscale prior: exact about white noise,
    where the demosaicked start's luminance noise is correlated), and every channel of the
    estimate moves by the luminance's change, so its colour differences stay. Pixels that are
    not valid take the estimate's own value. The unbiased inverse, divided by s times each
    channel's gain, gives x [H, W, 3] in [0, 1]."""
    gains = np.asarray(mosaic.channel_gains, np.float64)
    z_hat = gat_forward(s * gains * np.asarray(estimate, np.float64) + b, r)  # [H, W, 3]
    own = np.sum(z_hat * (np.asarray(mosaic.weights(*z_hat.shape[:2])) > 0), -1, keepdims=True)
    z = np.where(np.asarray(valid) > 0, gat_forward(np.asarray(y, np.float64), r), own)
    luma = z_hat.mean(axis=-1, keepdims=True)
    denoised = _denoised_in_range(denoise_unit, z - own + luma)
    lam = gat_inverse(z_hat + (denoised - luma), r)
    return np.clip((lam - b) / (s * gains), 0.0, 1.0).astype(np.float32)


def gat_bm3d(y, s: float, r: float, b: float = 0.0):
    """GAT + BM3D (sigma 1 in the stabilised domain) + closed-form unbiased inverse.

    y: [H, W] or [H, W, C] electrons ~ Poisson(s x + b) + N(0, r^2). Returns x_hat, float32 of
    y's shape in [0, 1]. BM3D is Makitalo & Foi 2013's denoiser; `bm3d` is the reference
    implementation from Tampere (pip install bm3d), imported here so the rest of pdr_jax does
    not need it.
    """
    import bm3d

    return stabilised(lambda image, sigma: bm3d.bm3d(image, sigma_psd=sigma), y, s, r, b)


def gat_cbm3d(y, s: float, r: float, b: float = 0.0):
    """Colour BM3D: GAT of every channel, `bm3d.bm3d_rgb` on the stabilised [H, W, 3] image (one
    range for the three channels, so one noise std; BM3D works in its opponent colour space,
    where the channels' shared structure is denoised together), closed-form unbiased inverse.

    y: [H, W, 3] electrons. Returns x_hat, float32 [H, W, 3] in [0, 1].
    """
    import bm3d

    if np.ndim(y) != 3 or np.shape(y)[-1] != 3:
        raise ValueError(f"gat_cbm3d needs an [H, W, 3] image, got shape {np.shape(y)}")
    return stabilised(
        lambda image, sigma: bm3d.bm3d_rgb(image, sigma_psd=sigma, colorspace="opp"),
        y,
        s,
        r,
        b,
        joint_channels=True,
    )


def gat_bm3d_menon(y, mosaic, s: float, r: float, b: float = 0.0):
    """The classical RAW pipeline: GAT + BM3D on each of the four Bayer planes (each plane
    with its colour's gain, s g), then Menon et al. 2007 demosaicking (colour_demosaicing's
    DDFAPD with its refining step) of the denoised mosaic.

    y: [H, W] or [H, W, 1] mosaic electrons, H and W even; mosaic: a
    pdr_jax.physics.operators.Mosaic (pattern, gains, phase). Returns x_hat [H, W, 3] float32 in
    [0, 1], white-balanced linear camera RGB like the restoration's.
    """
    with warnings.catch_warnings():  # its scipy.ndimage.filters imports warn
        warnings.simplefilter("ignore", DeprecationWarning)
        from colour_demosaicing import demosaicing_CFA_Bayer_Menon2007

    y = np.asarray(y, np.float64).reshape(np.shape(y)[:2])
    if y.shape[0] % 2 or y.shape[1] % 2:
        raise ValueError(f"gat_bm3d_menon needs even sides, got {y.shape}")
    colours = mosaic.colours(*y.shape)
    denoised = np.empty_like(y)
    for i in range(2):
        for j in range(2):
            gain = mosaic.gains[colours[i, j]]
            denoised[i::2, j::2] = gat_bm3d(y[i::2, j::2], s * gain, r, b)
    x = demosaicing_CFA_Bayer_Menon2007(denoised, mosaic.origin_pattern)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def gat_nlm(
    y,
    s: float,
    r: float,
    b: float = 0.0,
    *,
    patch_size: int = 5,
    patch_distance: int = 6,
    h: float = 0.8,
):
    """GAT + non-local means (skimage, fast mode) + closed-form unbiased inverse.

    y: [H, W] or [H, W, C] electrons. h is the filtering strength in units of the noise std
    (0.8 sigma with the sigma-aware patch distance: scikit-image's rule of thumb for fast
    mode). Returns x_hat, float32 of y's shape in [0, 1].
    """
    from skimage.restoration import denoise_nl_means

    def nlm(image, sigma):
        return denoise_nl_means(
            image,
            patch_size=patch_size,
            patch_distance=patch_distance,
            h=h * sigma,
            sigma=sigma,
            fast_mode=True,
            preserve_range=True,
        )

    return stabilised(nlm, y, s, r, b)


# Deconvolution: Richardson-Lucy as microscopists and astronomers run it (scikit-image), its
# total-variation-regularised form, and denoising before deconvolving. Each takes the PSF
# kernel [k, k] (sum 1) and the iteration count that `pdr-evaluate` tunes per photon level.


def _blur_same(image, kernel):
    """scipy's zero-padded 'same' convolution, as scikit-image's richardson_lucy uses it."""
    from scipy import signal

    return signal.convolve(image, kernel, mode="same")


def richardson_lucy_trace(image, kernel, counts):
    """{n: scikit-image's richardson_lucy(image, kernel, n, clip=False) for n in counts}, from one
    run of max(counts) iterations (the same update: start 0.5, zero-padded 'same' convolutions,
    eps 1e-12): the oracle's every iteration count at the price of the largest."""
    image = np.asarray(image, np.float64)
    estimate = np.full(image.shape, 0.5)
    mirror = np.flip(kernel)
    wanted, out = set(counts), {}
    for n in range(1, max(counts) + 1):
        estimate = estimate * _blur_same(image / (_blur_same(estimate, kernel) + 1e-12), mirror)
        if n in wanted:
            out[n] = estimate.copy()
    return out


def _intensity(y, s: float, b: float):
    """(y - b) / s, clipped below at 0: the image a Richardson-Lucy user hands it (x units)."""
    return np.clip((np.asarray(y, np.float64) - b) / s, 0.0, None)


def richardson_lucy(y, kernel, s: float, r: float, b: float = 0.0, *, iterations: int):
    """scikit-image's Richardson-Lucy on (y - b) / s, per channel, clipped to [0, 1] at the end.

    y: [H, W] or [H, W, C] electrons of a blurred measurement. The iteration count is the
    regulariser: too few leave the blur, too many amplify the noise. r is unused."""
    from skimage import restoration

    del r

    def deconvolve(image):
        return restoration.richardson_lucy(image, kernel, num_iter=iterations, clip=False)

    x = _per_channel(deconvolve, _intensity(y, s, b))
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def richardson_lucy_tv(
    y, kernel, s: float, r: float, b: float = 0.0, *, iterations: int, weight: float
):
    """Richardson-Lucy with total-variation regularisation (Dey et al. 2006): each update divided
    by ``1 - weight div(grad x / |grad x|)``, which flattens noise and keeps edges. The divisor is
    kept >= 0.1 (a weight too large for the image would otherwise flip signs). Per channel,
    clipped to [0, 1] at the end; r is unused."""
    del r
    mirror = np.flip(kernel)

    def deconvolve(image):
        x = np.full(image.shape, 0.5)
        for _ in range(iterations):
            gy, gx = np.gradient(x)
            norm = np.sqrt(gx**2 + gy**2 + 1e-6)
            divergence = np.gradient(gy / norm, axis=0) + np.gradient(gx / norm, axis=1)
            ratio = _blur_same(image / (_blur_same(x, kernel) + 1e-12), mirror)
            x = x * ratio / np.maximum(1.0 - weight * divergence, 0.1)
        return x

    x = _per_channel(deconvolve, _intensity(y, s, b))
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def gat_bm3d_rl(y, kernel, s: float, r: float, b: float = 0.0, *, iterations: int):
    """GAT+BM3D of the blurred measurement, then Richardson-Lucy on the denoised image: the
    classical denoise-then-deconvolve pipeline."""
    from skimage import restoration

    denoised = gat_bm3d(y, s, r, b).astype(np.float64)
    deconvolve = lambda image: restoration.richardson_lucy(
        image, kernel, num_iter=iterations, clip=False
    )
    return np.clip(_per_channel(deconvolve, denoised), 0.0, 1.0).astype(np.float32)
