"""Forward operators: what the detector measures of a clean image x, before the noise.

    y ~ Poisson(s * A(x) + b) + N(0, r^2)          A: [B, H, W, C_in] -> [B, H, W, C_out]

`Identity` (every pixel and channel measured: a denoising problem) and `Mosaic` (a colour filter
array: one colour per pixel, scaled by that channel's sensitivity, the other two never measured:
a camera RAW frame). Each is one small object with `forward`, `adjoint`, the channel counts,
`weights` (the per-pixel, per-channel weight with which x is measured: both operators measure
each value of x at most once, so the proximal data step stays in closed form) and
`channel_masks` (the groups the chi-square is reported for), so that the likelihood, the
guidance, the chi-square, the start and the tiling ask it instead of branching on the kind of
data (../shared/STYLE.md section 11; deepinv's `physics.A` / `A_adjoint`). Both
act pixel by pixel, so a tile whose top-left corner is at (top, left) of the image is measured
by the operator `at(top, left)`: the same operator, with the mosaic's colour phase shifted.

The noise model itself (pdr_jax.physics.noise) sees only A(x): its log-likelihoods and their
closed-form gradients are per measured pixel, and the gradient with respect to x is the adjoint
of the gradient with respect to A(x) (linear A), which `jax.vjp` gives as well.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax.numpy as jnp
import numpy as np

# The colour (0 R, 1 G, 2 B) of each pixel of the 2x2 cell, row by row.
CFA_PATTERNS = {
    "RGGB": ((0, 1), (1, 2)),
    "BGGR": ((2, 1), (1, 0)),
    "GRBG": ((1, 0), (2, 1)),
    "GBRG": ((1, 2), (0, 1)),
}


@dataclasses.dataclass(frozen=True)
class Identity:
    """Every pixel and channel measured as it is: A(x) = x, for any number of channels."""

    channels_in = None  # any: as many as the prior has
    channels_out = None  # the same as in

    def forward(self, x):
        """x [B, H, W, C] -> the same."""
        return x

    def adjoint(self, y):
        return y

    def weights(self, height: int, width: int) -> np.ndarray:
        """The weight of every value of x in the measurement: 1 (broadcasts)."""
        del height, width
        return np.float32(1.0)

    channel_gains = np.float32(1.0)  # each channel's sensitivity (broadcasts)
    start_sigma_factor = 1.0  # see Mosaic.start_sigma_factor
    radius = 0  # pixels a measurement reaches beyond its own (see Blur)
    diagonal = True  # each value of x measured by one pixel at most: `weights` describes A

    def summary(self) -> dict:
        """What the restoration's report records of the operator."""
        return {"name": "Identity"}

    def fill(self, z: np.ndarray) -> np.ndarray:
        """[H, W, C] numpy values of the measurement -> an image of x's channels: the same."""
        return z

    def channel_masks(self, height: int, width: int, channels: int) -> np.ndarray:
        """[C, 1, 1, C] float32: one mask per measured channel (chi-square per channel)."""
        del height, width
        return np.eye(channels, dtype=np.float32)[:, None, None, :]

    def at(self, top: int, left: int) -> Identity:
        """The operator of a tile at (top, left): the same."""
        del top, left
        return self


IDENTITY = Identity()


@dataclasses.dataclass(frozen=True)
class Mosaic:
    """A colour filter array: pixel (h, w) measures colour c = cfa(h, w) of x, times gains[c].

    pattern: a key of CFA_PATTERNS, the 2x2 cell at the operator's origin. gains: the channels'
    relative sensitivities (R, G, B), the inverses of a RAW file's white-balance multipliers,
    so that x is white-balanced linear camera RGB. phase: (row, column) of the origin within the
    cell, (0, 0) for a whole image; `at` sets it for a tile.
    """

    pattern: str = "RGGB"
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    phase: tuple[int, int] = (0, 0)

    channels_in = 3
    channels_out = 1
    # The restoration's start denoises `fill`'s demosaicked stabilised image at this factor times
    # the measured pixels' noise level: the interpolation leaves that noise correlated, which a
    # prior trained on white noise under-removes at its nominal level. Chosen on corpus:val RAW
    # crops (s = 10 / 50 / 250, r = 3, 4 crops, the colour prior at 40 kimg; PSNR dB): 1.0
    # 21.41 / 29.38 / 35.14, 1.15 23.36 / 30.37 / 35.64, 1.25 24.42 / 30.75 / 35.82, 1.5 23.85 /
    # 29.82 / 35.35, 2.0 18.12 / 26.11 / 32.94.
    start_sigma_factor = 1.25

    def __post_init__(self):
        if self.pattern not in CFA_PATTERNS:
            raise ValueError(
                f"unknown CFA pattern {self.pattern!r}; expected one of {tuple(CFA_PATTERNS)}"
            )
        if len(self.gains) != 3 or not all(float(g) > 0 for g in self.gains):
            raise ValueError(f"gains must be 3 numbers > 0 (R, G, B), got {self.gains}")

    def colours(self, height: int, width: int) -> np.ndarray:
        """[H, W] int: the colour each pixel measures (0 R, 1 G, 2 B), from this phase."""
        cell = np.asarray(CFA_PATTERNS[self.pattern])
        rows = (np.arange(height) + self.phase[0]) % 2
        columns = (np.arange(width) + self.phase[1]) % 2
        return cell[rows[:, None], columns[None, :]]

    def weights(self, height: int, width: int) -> np.ndarray:
        """[H, W, 3] float32: gains[c] at each pixel's colour c, 0 at the other two."""
        one_hot = np.eye(3, dtype=np.float32)[self.colours(height, width)]
        return one_hot * np.asarray(self.gains, np.float32)

    @property
    def channel_gains(self) -> np.ndarray:
        """[3]: each channel's sensitivity, R, G, B."""
        return np.asarray(self.gains, np.float32)

    @property
    def origin_pattern(self) -> str:
        """The 2x2 cell at this operator's origin, e.g. 'GRBG' for RGGB at phase (0, 1)."""
        return "".join("RGB"[c] for c in self.colours(2, 2).ravel())

    def fill(self, z: np.ndarray) -> np.ndarray:
        """[H, W, 1] numpy values of the mosaic -> [H, W, 3]: demosaicked by Menon et al. 2007
        (colour_demosaicing's DDFAPD with its refining step: directional interpolation along
        edges). Values only: no gains applied. The restoration's start demosaicks the
        variance-stabilised mosaic with it: on corpus:val RAW crops (colour prior at 40 kimg,
        r = 3) it gave +1.5 / +3.1 / +5.9 dB over bilinear interpolation at s = 10 / 50 / 250,
        whose colour fringes at edges the one-call estimate kept."""
        with warnings.catch_warnings():  # its scipy.ndimage.filters imports warn
            warnings.simplefilter("ignore", DeprecationWarning)
            from colour_demosaicing import demosaicing_CFA_Bayer_Menon2007

        z = np.asarray(z, np.float64)
        return demosaicing_CFA_Bayer_Menon2007(z[..., 0], self.origin_pattern)

    @staticmethod
    def to_planes(z: np.ndarray) -> np.ndarray:
        """[H, W, ...] mosaic values (H, W even) -> the same shape: its four Bayer planes (the
        pixels of each parity (i, j), H/2 x W/2 each) as the quadrants of one image, the plane
        (0, 0) top left, (0, 1) mirrored left-right top right, (1, 0) mirrored up-down bottom
        left, (1, 1) mirrored both ways bottom right. The mirrors put each seam between the
        same image border of two planes, so a denoiser sees a continuous image there (the
        planes are the scene in other colours) and not a jump to the opposite border. Colour
        blind: the planes are by parity, whatever the pattern and phase."""
        z = np.asarray(z)
        if z.shape[0] % 2 or z.shape[1] % 2:
            raise ValueError(f"Bayer planes need even sides, got {z.shape[:2]}")
        top = np.concatenate([z[0::2, 0::2], z[0::2, 1::2][:, ::-1]], axis=1)
        bottom = np.concatenate([z[1::2, 0::2][::-1], z[1::2, 1::2][::-1, ::-1]], axis=1)
        return np.concatenate([top, bottom], axis=0)

    @staticmethod
    def from_planes(q: np.ndarray) -> np.ndarray:
        """The inverse of to_planes."""
        q = np.asarray(q)
        h, w = q.shape[0] // 2, q.shape[1] // 2
        z = np.empty_like(q)
        z[0::2, 0::2], z[0::2, 1::2] = q[:h, :w], q[:h, w:][:, ::-1]
        z[1::2, 0::2], z[1::2, 1::2] = q[h:, :w][::-1], q[h:, w:][::-1, ::-1]
        return z

    def channel_masks(self, height: int, width: int, channels: int = 1) -> np.ndarray:
        """[3, H, W, 1] float32: the pixels of each colour R, G, B (chi-square per colour)."""
        del channels
        colours = self.colours(height, width)
        return np.stack([(colours == c)[..., None] for c in range(3)]).astype(np.float32)

    def forward(self, x):
        """x [B, H, W, 3] -> the mosaic [B, H, W, 1]."""
        weights = self.weights(*x.shape[-3:-1])
        return jnp.sum(x * weights, axis=-1, keepdims=True)

    def adjoint(self, y):
        """y [B, H, W, 1] -> [B, H, W, 3]: each value back in its colour, times its gain."""
        return y * self.weights(*y.shape[-3:-1])

    radius = 0
    diagonal = True

    def summary(self) -> dict:
        return {"name": "Mosaic", **dataclasses.asdict(self)}

    def at(self, top: int, left: int) -> Mosaic:
        """The operator of a tile whose top-left pixel is (top, left) of this one's."""
        phase = ((self.phase[0] + top) % 2, (self.phase[1] + left) % 2)
        return dataclasses.replace(self, phase=phase)


@dataclasses.dataclass(frozen=True)
class Blur:
    """A point-spread function: A(x) = h * x, each channel convolved with the same kernel.

    kernel: the PSF as a tuple of rows (hashable: the operator is a static argument of the
    compiled sampler), odd sides, sum 1 (pdr_jax.physics.psf makes and checks them); build it
    with `Blur.of(array)`. The convolution is circular, by FFT over the whole canvas x; the
    restoration makes that exact by giving x a margin of at least `radius` pixels around the
    measured image in which y is not data (mask 0), so the measured pixels are the valid part of
    the convolution of a scene larger than the image and no border is wrapped into them.
    """

    kernel: tuple[tuple[float, ...], ...]
    source: str = dataclasses.field(default="", compare=False)  # "gaussian:2.5", a file name

    channels_in = None
    channels_out = None
    channel_gains = np.float32(1.0)
    start_sigma_factor = 1.0

    @classmethod
    def of(cls, kernel, source: str = "") -> Blur:
        kernel = np.asarray(kernel, np.float64)
        return cls(tuple(tuple(float(v) for v in row) for row in kernel), source)

    def summary(self) -> dict:
        from pdr_jax.physics import psf  # scipy, only when asked

        return {
            "name": "Blur",
            "psf": self.source,
            "size": list(self.array.shape),
            "fwhm_px": round(psf.fwhm(self.array), 3),
        }

    def __post_init__(self):
        shape = self.array.shape
        if len(shape) != 2 or shape[0] % 2 == 0 or shape[1] % 2 == 0:
            raise ValueError(f"a PSF kernel must be 2-D with odd sides, got {shape}")
        if abs(self.array.sum() - 1.0) > 1e-4:
            raise ValueError(f"a PSF kernel must sum to 1 (flux kept), got {self.array.sum()}")

    @property
    def array(self) -> np.ndarray:
        return np.asarray(self.kernel, np.float64)

    @property
    def radius(self) -> int:
        """Pixels the blur reaches: the margin the scene needs around the measured image."""
        return max(len(self.kernel), len(self.kernel[0])) // 2

    def _transfer(self, height: int, width: int):
        """[H, W // 2 + 1] complex64: the rfft2 of the kernel centred at pixel (0, 0) of an
        H x W canvas (numpy, computed once per shape at trace time)."""
        kernel = self.array
        kh, kw = kernel.shape
        if kh > height or kw > width:
            raise ValueError(f"the PSF ({kh}x{kw}) is larger than the image ({height}x{width})")
        canvas = np.zeros((height, width))
        canvas[:kh, :kw] = kernel
        canvas = np.roll(canvas, (-(kh // 2), -(kw // 2)), axis=(0, 1))
        return np.fft.rfft2(canvas).astype(np.complex64)

    def _convolve(self, x, transfer):
        height, width = x.shape[-3:-1]
        spectrum = jnp.fft.rfft2(x, axes=(-3, -2)) * transfer[..., None]
        return jnp.fft.irfft2(spectrum, s=(height, width), axes=(-3, -2)).astype(x.dtype)

    def forward(self, x):
        """x [B, H, W, C] -> h * x [B, H, W, C] (circular over the canvas)."""
        return self._convolve(x, self._transfer(*x.shape[-3:-1]))

    def adjoint(self, y):
        """The correlation with h: <A x, y> = <x, A^T y>."""
        return self._convolve(y, np.conj(self._transfer(*y.shape[-3:-1])))

    @property
    def diagonal(self) -> bool:
        """A 1x1 kernel (the delta PSF) is the identity; any other mixes pixels."""
        return self.radius == 0

    def weights(self, height: int, width: int):
        """The identity's (only meaningful where `diagonal`: a 1x1 kernel, which is 1)."""
        return IDENTITY.weights(height, width)

    def fill(self, z: np.ndarray) -> np.ndarray:
        """The measurement as an image of x's channels: itself (blurred)."""
        return z

    def channel_masks(self, height: int, width: int, channels: int) -> np.ndarray:
        return IDENTITY.channel_masks(height, width, channels)

    def at(self, top: int, left: int) -> Blur:
        """Shift-invariant: the same operator anywhere."""
        del top, left
        return self


@dataclasses.dataclass(frozen=True)
class Chain:
    """outer(inner(x)): e.g. a colour filter array after the lens's blur, `Chain(Mosaic(...),
    Blur.of(psf))` for a blurred RAW frame. The outer operator must be pixel-wise (its normal
    matrix diagonal), which Identity and Mosaic are."""

    outer: Identity | Mosaic
    inner: Blur

    def __post_init__(self):
        if self.outer.radius:
            raise ValueError("the outer operator of a Chain must act pixel by pixel")

    channels_in = property(lambda self: self.outer.channels_in or self.inner.channels_in)
    channels_out = property(lambda self: self.outer.channels_out or self.inner.channels_out)
    channel_gains = property(lambda self: self.outer.channel_gains)
    start_sigma_factor = property(lambda self: self.outer.start_sigma_factor)
    radius = property(lambda self: self.inner.radius)
    diagonal = property(lambda self: self.inner.diagonal)
    weights = property(lambda self: self.outer.weights)

    def summary(self) -> dict:
        return {"name": "Chain", "outer": self.outer.summary(), "inner": self.inner.summary()}

    def forward(self, x):
        return self.outer.forward(self.inner.forward(x))

    def adjoint(self, y):
        return self.inner.adjoint(self.outer.adjoint(y))

    def fill(self, z: np.ndarray) -> np.ndarray:
        return self.outer.fill(z)

    def channel_masks(self, height: int, width: int, channels: int) -> np.ndarray:
        return self.outer.channel_masks(height, width, channels)

    def at(self, top: int, left: int) -> Chain:
        return Chain(self.outer.at(top, left), self.inner.at(top, left))
