"""Denoisers made of a prior: a colour one from a grayscale prior, and a self-ensemble.

OpponentPrior. Colour BM3D's lesson (Dabov et al. 2007): R, G and B share their structure, so denoise in a
decorrelated space, luminance L = (R + G + B) / 3 and two chrominances C1 = (R - B) / 2,
C2 = (R - 2G + B) / 4. The rows of that matrix are orthogonal, so white noise of std sigma in
every RGB channel is white and independent in each opponent channel, with std sigma times the
row's norm (1/sqrt(3), 1/sqrt(2), sqrt(6)/4). Luminance carries most of the signal with a third
of the noise power; the chrominances are smooth and low in contrast. In model space (2u - 1) the
matrix maps [-1, 1]^3 to [-1, 1]^3 and mid-grey to 0, so each opponent channel is a grayscale
image of the range the prior was trained on.

`OpponentPrior(gray)` is a `Denoiser` of 3-channel images: its denoiser calls the grayscale
prior once on a batch of the 3 B opponent channels, each at its own sigma, and maps back.
Everything of `restore` works with it as with a colour prior: the variance-stabilised start
(the GAT channels denoised together), the guided sampler, tiling, a Bayer mosaic's operator.

LumaChromaPrior. A Bayer mosaic measures one colour per pixel: its luminance is measured at
every pixel, its chrominances at a quarter or half of them. Restoring one, the grayscale prior
(trained on far more images than the colour one) is the better judge of luminance, while the
chrominances need a prior that knows colour. `LumaChromaPrior(gray, colour)` denoises x's
luminance plane with the grayscale prior and takes the two chrominances of the colour prior's
denoised x. The luminance noise is not x's sigma / sqrt(3) here: the restoration's start
denoises a demosaicked measurement, whose noise sits almost all in the luminance (Menon 2007 of
white noise of std 1 has opponent stds 0.91, 0.38, 0.25, against 0.58, 0.71, 0.61 for white
RGB noise) and which the start calls at Mosaic.start_sigma_factor (1.25) times its sigma: the
grayscale prior runs at LUMA_GAIN = 0.91 / 1.25 = 0.73 times the sigma it is given.

SelfEnsemble. A denoiser's error is partly its own and not the image's: averaging its outputs
over the 8 flips and transposes of its input (the dihedral group of the square; Timofte et al.
2016, "seven ways") keeps the signal and averages down that part, at 8 times the network calls.
The transposed group differs in shape for a non-square image, so the 8 run as two mapped calls
(lax.map: one network trace each, the memory of one call).
"""

from __future__ import annotations

import dataclasses
import functools

import einops
import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from pdr_jax.settings import (
    COLOUR_ENSEMBLE,
    COLOUR_MODES,
    COLOUR_SAMPLER,
    ENSEMBLE_SIZES,
    MOSAIC_SAMPLER,
    SamplerSettings,
)

OPPONENT = np.array([[1 / 3, 1 / 3, 1 / 3], [1 / 2, 0, -1 / 2], [1 / 4, -1 / 2, 1 / 4]], np.float32)
NOISE_GAIN = np.linalg.norm(OPPONENT, axis=1).astype(np.float32)  # std per unit RGB noise std


def to_opponent(x):
    """[..., 3] RGB (model or unit space) -> [..., 3] L, C1, C2."""
    return x @ jnp.asarray(OPPONENT.T)


def from_opponent(o):
    """The inverse of to_opponent."""
    return o @ jnp.asarray(np.linalg.inv(OPPONENT).T.astype(np.float32))


def _denoise(gray_fn, x, sigma):
    """D_rgb(x [B, H, W, 3], sigma scalar | [B]) through gray_fn(o [3 B, H, W, 1], sigma [3 B])."""
    batch = x.shape[0]
    sigma = jnp.broadcast_to(jnp.reshape(jnp.asarray(sigma, jnp.float32), (-1,)), (batch,))
    planes = einops.rearrange(to_opponent(x), "b h w c -> (c b) h w 1")
    sigmas = einops.rearrange(sigma[None, :] * jnp.asarray(NOISE_GAIN)[:, None], "c b -> (c b)")
    denoised = gray_fn(planes, sigmas)
    return from_opponent(einops.rearrange(denoised, "(c b) h w 1 -> b h w c", c=3))


@dataclasses.dataclass(frozen=True, eq=False)
class OpponentPrior:
    """A grayscale `Denoiser` (e.g. restoration.Prior of pdr-gray-default) as a 3-channel one."""

    gray: object

    def __post_init__(self):
        if self.gray.img_channels != 1:
            raise ValueError(
                f"OpponentPrior needs a grayscale prior, got one of {self.gray.img_channels} "
                "channels"
            )

    img_channels = 3
    img_resolution = property(lambda self: self.gray.img_resolution)
    downsampling = property(lambda self: self.gray.downsampling)
    # tiling.choose_tile's memory estimate: the network runs 3 rows per image.
    model_channels = property(lambda self: 3 * self.gray.model_channels)

    def sampler_args(self, physics, rows: int) -> dict:
        args = dict(self.gray.sampler_args(physics, 3 * rows))
        args["denoise_fn"] = Partial(_denoise, args["denoise_fn"])
        return args

    def conditioning_image(self, y, physics):
        """None: a prior sees only x."""
        del y, physics


LUMA_GAIN = 0.73  # the luminance noise std per unit sigma of LumaChromaPrior's calls


def _luma_chroma(gray_fn, colour_fn, gain: float, x, sigma):
    """D(x [B, H, W, 3], sigma): gray_fn on x's luminance at gain * sigma, colour_fn's
    chrominances."""
    sigma = jnp.broadcast_to(jnp.reshape(jnp.asarray(sigma, jnp.float32), (-1,)), x.shape[:1])
    luma = gray_fn(to_opponent(x)[..., :1], gain * sigma)
    chroma = to_opponent(colour_fn(x, sigma))[..., 1:]
    return from_opponent(jnp.concatenate([luma, chroma], axis=-1))


@dataclasses.dataclass(frozen=True, eq=False)
class LumaChromaPrior:
    """A 3-channel `Denoiser`: luminance from a grayscale prior (at `gain` times sigma),
    chrominance from a colour prior (module docstring)."""

    gray: object
    colour: object
    gain: float = LUMA_GAIN

    def __post_init__(self):
        if (self.gray.img_channels, self.colour.img_channels) != (1, 3):
            raise ValueError(
                "LumaChromaPrior needs a grayscale and a colour prior, got priors of "
                f"{self.gray.img_channels} and {self.colour.img_channels} channels"
            )

    img_channels = 3
    img_resolution = property(
        lambda self: min(self.gray.img_resolution, self.colour.img_resolution)
    )
    downsampling = property(lambda self: max(self.gray.downsampling, self.colour.downsampling))
    model_channels = property(lambda self: self.gray.model_channels + self.colour.model_channels)
    # The start denoises a noisy mosaic's Bayer planes with it (SamplerSettings.planes_min_noise).
    plane_prior = property(lambda self: self.gray)

    def sampler_args(self, physics, rows: int) -> dict:
        args = dict(self.colour.sampler_args(physics, rows))
        gray_fn = self.gray.sampler_args(physics, rows)["denoise_fn"]
        args["denoise_fn"] = Partial(_luma_chroma, gray_fn, args["denoise_fn"], self.gain)
        return args

    def conditioning_image(self, y, physics):
        """None: priors see only x."""
        del y, physics


def _flip(x, k: int):
    """Flip [B, H, W, C] left-right (bit 0 of k) and up-down (bit 1); its own inverse."""
    if k & 1:
        x = x[:, :, ::-1]
    if k & 2:
        x = x[:, ::-1]
    return x


def _ensemble(fn, x, sigma, *, size: int):
    """The mean of g^-1(fn(g(x), sigma)) over the first `size` transforms g."""
    total = 0.0
    for transpose in (False, True)[: 2 if size == 8 else 1]:
        base = jnp.swapaxes(x, 1, 2) if transpose else x
        flips = range(min(size, 4))
        denoised = jax.lax.map(lambda g: fn(g, sigma), jnp.stack([_flip(base, k) for k in flips]))
        part = sum(_flip(denoised[k], k) for k in flips)
        total = total + (jnp.swapaxes(part, 1, 2) if transpose else part)
    return total / size


# One function object per size (static in a Partial: jit caches stay valid across calls).
_ENSEMBLES = {size: functools.partial(_ensemble, size=size) for size in ENSEMBLE_SIZES}


def ensembled(denoise_fn, size: int):
    """denoise_fn (a Partial) averaged over `size` flips and transposes (1: itself)."""
    return denoise_fn if size == 1 else Partial(_ENSEMBLES[size], denoise_fn)


@dataclasses.dataclass(frozen=True, eq=False)
class SelfEnsemble:
    """Any `Denoiser` averaged over `size` flips and transposes of its input (ENSEMBLE_SIZES)."""

    prior: object
    size: int = 8

    def __post_init__(self):
        if self.size not in ENSEMBLE_SIZES:
            raise ValueError(f"self-ensemble size must be one of {ENSEMBLE_SIZES}, got {self.size}")

    img_channels = property(lambda self: self.prior.img_channels)
    img_resolution = property(lambda self: self.prior.img_resolution)
    downsampling = property(lambda self: self.prior.downsampling)
    model_channels = property(lambda self: self.prior.model_channels)

    @property
    def plane_prior(self):
        """The prior's plane_prior, self-ensembled alike (None where it has none)."""
        planes = getattr(self.prior, "plane_prior", None)
        return None if planes is None else SelfEnsemble(planes, self.size)

    def sampler_args(self, physics, rows: int) -> dict:
        args = dict(self.prior.sampler_args(physics, rows))
        args["denoise_fn"] = ensembled(args["denoise_fn"], self.size)
        return args

    def conditioning_image(self, y, physics):
        return self.prior.conditioning_image(y, physics)


def colour_denoiser(model, mode: str | None, *, gray=None, self_ensemble: int | None = None):
    """(denoiser, its default SamplerSettings): how `model` restores a colour image in `mode`.

    "opponent": a grayscale `model` on the opponent channels (COLOUR_SAMPLER, self-ensemble
    COLOUR_ENSEMBLE); "luma": a colour `model`'s chrominance with the grayscale prior `gray` on
    the luminance (MOSAIC_SAMPLER); "joint": a colour `model` as it is; "channels" or None
    (grayscale data, or each channel on its own): `model` as it is. self_ensemble (None: the
    mode's default) averages the denoiser over that many flips and transposes at every call
    (the sampler's estimate_ensemble is then 1). Raises
    ValueError naming the mismatch of a model's channels and the mode."""
    if mode not in (None, *COLOUR_MODES):
        raise ValueError(f"colour mode must be one of {COLOUR_MODES} or None, got {mode!r}")
    channels = model.img_channels
    wanted = {"opponent": 1, "luma": 3, "joint": 3}.get(mode)
    if wanted is not None and channels != wanted:
        kind = "a grayscale" if wanted == 1 else "a colour"
        raise ValueError(
            f"--colour {mode} needs {kind} model; this one has {channels} channel(s)"
            + (" (use --colour joint)" if mode == "opponent" else " (e.g. pdr-rgb-default)")
        )
    sampler, size = SamplerSettings(), 1
    if mode == "opponent":
        model, sampler, size = OpponentPrior(model), COLOUR_SAMPLER, COLOUR_ENSEMBLE
    elif mode == "luma":
        if gray is None:
            raise ValueError("--colour luma needs the grayscale prior for the luminance (gray=)")
        model, sampler = LumaChromaPrior(gray, model), MOSAIC_SAMPLER
    size = self_ensemble or size
    if size == 1:
        return model, sampler
    # Averaged at every call already: averaging the one-call estimate again over the same
    # flips would repeat the work (for 8, exactly: the ensemble is equivariant).
    return SelfEnsemble(model, size), dataclasses.replace(sampler, estimate_ensemble=1)
