"""One restoration path: `restore(prior, y, physics=Physics(...))` for every caller.

    y electrons [H, W] | [H, W, C] | [B, H, W, C]   (a measurement of physics.operator)
      --(tile plan: reflection padding, tiles fused at every denoiser call)-->
      --(start: the one-call variance-stabilised estimate, re-noised)-->
      --(EDM sampler with likelihood guidance, `num_samples` per image)-->
      --(flux: sum A(x) = sum (y - b) / s by a scale or a sky offset, per colour)-->
    Restoration(image in [0, 1] like y, or [.., 3] from a mosaic; report, posterior std)

The forward operator (`Physics.operator`, pdr_jax.physics.operators) is what every step asks
about the measurement: the guidance's likelihood and its gradient, the start (`fill`: the
stabilised mosaic demosaicked), the chi-square and its groups (per channel, or per Bayer
colour). The denoiser's tiles are tiles of x; the likelihood acts on the whole padded image
through the operator `at` the padding's offset, so a colour filter array keeps its phase.
Reflection padding ("reflect": pixel -1 mirrors pixel 1) keeps a period-2 mosaic's colours.

`tools/restore.py`, `tools/evaluate.py` (methods "pdr" and "pdr-vst"), the notebooks and the
README call `restore`; what varies between them are the settings records below, whose
defaults are the tuned defaults (chosen on `corpus:val`, see docs/tuning.md, "Restoration
defaults"). `Prior` wraps a `pdr_jax.precond` network; anything with the same members (a
closed-form Gaussian denoiser in the tests) restores the same way.

The start (`SamplerSettings.start`):
  "vst"    the one-call estimate of GAT + denoiser + exact unbiased inverse (Makitalo & Foi
           2013, with the prior's denoiser in BM3D's place) at estimate_sigma_factor times the
           stabilised noise level sigma_v (unit std after the GAT, scaled into [0, 1] like the
           image; the factor 1.03 smooths a little more than the noise asks for: at 1.00 the
           estimate kept part of the noise, chi-square 0.89 on astronomy val crops at s = 250,
           0.93 at 1.03), re-noised to
           start_sigma = start_factor * 2 sigma_v in model space (SDEdit, Meng et al. 2022);
           the guided sampler runs from there down to sigma_min. Where the measurement's
           noise is low (`noise_level(y)` < refine_min_noise; on corpus:val the sampler's
           steps lost PSNR there and gained it at higher noise), and with num_steps = 0, the
           one-call estimate is the result, averaged over SamplerSettings.estimate_ensemble
           (default 8) flips and transposes of each tile (estimate_ensemble=1 with
           num_steps=0: the fast method, one network call per tile). A Bayer mosaic is
           stabilised, demosaicked (Mosaic.fill) and denoised; where its noise level is at
           least planes_min_noise and the denoiser has a grayscale `plane_prior`
           (LumaChromaPrior), that estimate is averaged with the denoise-then-demosaick one
           (baselines.stabilised_planes): at high noise, demosaicking first leaves noise that
           a prior trained on white noise misjudges. Where the estimate is the result,
           polish_factor > 0 (MOSAIC_SAMPLER) denoises it once more at that times the image's
           noise_level: the correlated noise of a demosaicked start outlives the first call;
           then a mosaic's luminance is re-estimated from its measured pixels by the
           grayscale prior (measured_luminance, baselines.measured_luminance).
  "noise"  EDM's start: latents * sigma_max (zero latents: a deterministic estimate).

The end (`SamplerSettings.conserve_flux`, by default the domain's CONSERVE_FLUX): each colour
of the image is scaled ("scale": microscopy, photographs) or offset ("offset", a sky level:
astronomy) so that its forward model's total over the valid pixels is the measured
sum(y - b) / s (flux_correction; the scale only where the counts know that total to
FLUX_MAX_UNCERTAINTY).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Protocol

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from pdr_jax import baselines, cpu, metrics, model_io, samplers
from pdr_jax.physics import calibration, conditioning, operators
from pdr_jax.physics import guidance as physics_guidance
from pdr_jax.physics.noise_estimation import check_parameter
from pdr_jax.restore import composite, tiling
from pdr_jax.settings import (
    FLUX_MAX_UNCERTAINTY,
    GuidanceSettings,
    SamplerSettings,
    TilingSettings,
    auto_kappa,
    deblur_iterations,
    flux_mode,
)


@dataclasses.dataclass(frozen=True)
class Physics:
    """The measurement model y ~ Poisson(s A(x) + b) + N(0, r^2) in electrons, and the domain.

    The CLI names are in the errors: s is --scale, r --read-noise, b --background; the operator
    A is the identity, --cfa/--wb's Mosaic (a RAW frame), --psf's Blur (a point-spread
    function) or their Chain (a blurred RAW frame).
    """

    s: float  # electrons at clean intensity 1 (--scale)
    r: float  # read noise, electrons rms (--read-noise)
    b: float = 0.0  # background, electrons (--background)
    domain: str = "photography"  # a name of conditioning.DOMAINS
    operator: operators.Identity | operators.Mosaic | operators.Blur | operators.Chain = (
        operators.IDENTITY
    )

    def __post_init__(self):
        for name in ("s", "r", "b"):
            check_parameter(name, getattr(self, name))
        if self.domain not in conditioning.DOMAINS:
            raise ValueError(
                f"unknown domain {self.domain!r}; expected one of {conditioning.DOMAINS}"
            )

    def labels(self, rows: int):
        """[rows, 6] conditioning vectors (pdr_jax.physics.conditioning)."""
        vector = conditioning.conditioning_vector(self.domain, self.s, self.r, self.b)
        return jnp.broadcast_to(vector, (rows, vector.shape[-1]))


class Denoiser(Protocol):
    """What `restore` needs of a model: Prior below, pdr_jax.conditional.ConditionalModel (a
    model conditioned on the measurement), a closed-form denoiser in the tests."""

    img_resolution: int  # the largest tile
    img_channels: int
    downsampling: int  # tile sizes are multiples of it
    model_channels: int  # for tiling.choose_tile's memory estimate
    # Optional: a grayscale Denoiser for a mosaic's Bayer planes in the start (LumaChromaPrior's
    # grayscale prior; SamplerSettings.planes_min_noise). Absent: the start does without.
    # plane_prior: Denoiser

    def sampler_args(self, physics: Physics, rows: int) -> dict:
        """denoise_fn(x [rows, h, w, C], sigma) -> D in model space, sigma_min, sigma_max,
        round_sigma (samplers.network_sampler_args)."""

    def conditioning_image(self, y, physics: Physics):
        """None for a prior; for a model conditioned on the measurement (pdr_jax.conditional)
        the image [B, H, W, C'] computed from y [B, H, W, C] electrons: denoise_fn is then
        called as denoise_fn(x, sigma, conditioning tiles at the tiles' origins)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Prior:
    """A `pdr_jax.precond` network and its variables as a Denoiser.

    conditioned=False feeds the all-zero conditioning vector (what label dropout trains the
    network for); an unconditional network (label_dim 0) gets no labels either way.
    """

    net: object
    variables: object
    conditioned: bool = True

    def __post_init__(self):
        label_dim = self.net.model.label_dim
        if label_dim not in (0, conditioning.DEFAULT_SPEC.dim):
            raise ValueError(
                f"the network's label_dim {label_dim} is not the {conditioning.DEFAULT_SPEC.dim}-D "
                "physics conditioning (pdr_jax.physics.conditioning)"
            )

    @classmethod
    def load(cls, directory: str) -> Prior:
        """The prior of a model directory (model_io.load_model)."""
        return cls(*model_io.load_model(directory))

    img_resolution = property(lambda self: self.net.model.img_resolution)
    img_channels = property(lambda self: self.net.model.in_channels)
    downsampling = property(lambda self: 2 ** (len(self.net.model.channel_mult) - 1))
    model_channels = property(lambda self: self.net.model.model_channels)

    def sampler_args(self, physics: Physics, rows: int) -> dict:
        if not self.net.model.label_dim:
            labels = None
        elif self.conditioned:
            labels = physics.labels(rows)
        else:
            labels = conditioning.unconditional(rows)
        return samplers.network_sampler_args(self.net, self.variables, labels)

    def conditioning_image(self, y, physics: Physics):
        """None: a prior sees only x."""
        del y, physics


@dataclasses.dataclass(frozen=True)
class Restoration:
    """What `restore` returns."""

    image: np.ndarray  # like y, float32 in [0, 1]: the mean of the samples
    report: dict  # chi_square, whiteness, mean_photons, kappa, warnings, timings, settings, ...
    std: np.ndarray | None = None  # like y: per-pixel std over num_samples > 1 samples


# The measurement.


def _as_bhwc(y, channels: int, operator):
    """y [H, W] / [H, W, C] / [B, H, W, C] -> ([B, H, W, C] float32 numpy, undo), checked
    against the operator's and the prior's channels."""
    y, undo = metrics.as_bhwc(np.asarray(y, np.float32), "y")
    if operator.channels_in not in (None, channels):
        raise ValueError(
            f"the forward operator {type(operator).__name__} measures a {operator.channels_in}-"
            f"channel image but the prior has {channels} channel(s): use a colour prior "
            "(pdr-rgb-default)"
        )
    expected = operator.channels_out or channels
    if y.shape[-1] != expected:
        raise ValueError(
            f"y has {y.shape[-1]} channel(s) but the prior and operator measure {expected}: "
            "restore each channel on its own (tools/restore.py does), use a prior with as many "
            "channels, or give a mosaic as one channel"
        )
    return y, undo


def _valid_mask(mask, y: np.ndarray, undo_shape) -> np.ndarray:
    """The likelihood mask as [B, H, W, C] float32 (1 = valid), checked against y."""
    if mask is None:
        return np.ones_like(y)
    calibration.check_finite(mask, "mask")
    if np.shape(mask) != undo_shape:
        raise ValueError(f"mask shape {np.shape(mask)} differs from y {undo_shape}")
    valid = (np.asarray(mask, np.float32).reshape(y.shape) > 0).astype(np.float32)
    if not valid.any():
        raise ValueError("mask excludes every pixel")
    return valid


def _margin(radius: int, downsampling: int) -> int:
    """Pixels added on every side for an operator that reaches `radius` pixels: at least the
    radius, and a multiple of downsampling / 2 so that an untiled image keeps its sides'
    multiples of the network's downsampling."""
    if not radius:
        return 0
    half = max(downsampling // 2, 1)
    return -(-radius // half) * half


# The start.


def noise_level(y: np.ndarray, physics: Physics) -> float:
    """The measurement's noise std in model space, 2 sqrt(mean(max(y, 0)) + r^2) / s: what
    SamplerSettings.refine_min_noise compares (0.04-2.2 over the corpus benchmark's cells)."""
    return float(2 * np.sqrt(np.mean(np.maximum(y, 0)) + physics.r**2) / physics.s)


def _call_with(denoise_fn, cond, x, sigma):
    """denoise_fn(x, sigma, cond): a conditional model's call on the whole image."""
    return denoise_fn(x, sigma, cond)


@cpu.jit
def _apply(denoise_fn, x, sigma):
    """denoise_fn(x, sigma), compiled once per denoiser (a Partial: its arrays are traced)."""
    return denoise_fn(x, sigma)


def _unit_denoiser(denoise_fn, factor: float, sigmas: list):
    """denoise_unit(image [H, W, C] in [0, 1], noise std sigma_v) for baselines.stabilised:
    denoise_fn in model space (2u - 1, noise 2 sigma_v) run at factor * 2 sigma_v; each sigma_v
    appended to `sigmas`."""

    def denoise_unit(unit, sigma_v):
        sigmas.append(sigma_v)
        model = jnp.asarray(2 * unit[None] - 1, jnp.float32)
        return (np.asarray(_apply(denoise_fn, model, jnp.float32(2 * factor * sigma_v)))[0] + 1) / 2

    return denoise_unit


def _vst_estimate(
    denoise_fn, y: np.ndarray, physics: Physics, operator, factor: float = 1.0, plane_fn=None
):
    """(x [1, H', W', C] in [0, 1], sigma_v): the one-call estimate of one padded image
    y [1, H', W', C'] (baselines.stabilised with the prior, its channels together, in BM3D's
    place, run at factor * sigma_v; a mosaic stabilised, then demosaicked by operator.fill) and
    sigma_v (inf for a constant image: nothing to denoise). plane_fn (a mosaic): a grayscale
    denoiser; the estimate is then the mean of that one and baselines.stabilised_planes' (the
    Bayer planes denoised by plane_fn at factor times their sigma_v, then demosaicked), and
    sigma_v the planes'."""
    sigmas = []
    # A demosaicked mosaic's noise is correlated (Mosaic.start_sigma_factor).
    denoise_unit = _unit_denoiser(denoise_fn, factor * operator.start_sigma_factor, sigmas)
    s, r, b = physics.s, physics.r, physics.b
    x = baselines.stabilised(denoise_unit, y[0], s, r, b, joint_channels=True, operator=operator)
    if plane_fn is not None:
        # The planes' noise is white, their range the mosaic's own (the demosaicked image's
        # is narrower on photographs), and the start is re-noised from their sigma_v (on
        # corpus:val mosaics at s = 2: +0.9 dB at r = 0.5, +0.15 at r = 3 over the other's).
        sigmas = []
        plane_unit = _unit_denoiser(plane_fn, factor, sigmas)
        x = (x + baselines.stabilised_planes(plane_unit, y[0], operator, s, r, b)) / 2
    return x[None], (sigmas[0] if sigmas else float("inf"))


def _deblurred(estimate, y, physics: Physics, operator, iterations: int, mask) -> np.ndarray:
    """`iterations` Richardson-Lucy (EM) iterations of the shifted-Poisson model from the
    denoised estimate [B, H', W', C] of the measurement y through a PSF, rescaled per image to
    the estimate's flux over the measured pixels (mask > 0) and clipped to [0, 1]: they
    sharpen, and the denoised estimate's total is the better one (on corpus:val astronomy EM
    added 0.2-1.3 % to it, and 0.4-0.9 % stayed in the restorations)."""
    estimate = np.asarray(estimate, np.float64)
    sharp = baselines.shifted_poisson_em(
        y,
        operator,
        physics.s,
        physics.r,
        physics.b,
        iterations=iterations,
        start=estimate,
        mask=mask,
    )
    sharp = np.clip(np.asarray(sharp, np.float64), 0.0, 1.0)
    measured = np.asarray(mask)[..., :1] > 0
    flux = lambda v: np.sum(v * measured, axis=(1, 2, 3), keepdims=True)
    scale = np.where(flux(sharp) > 0, flux(estimate) / np.maximum(flux(sharp), 1e-30), 1.0)
    return np.clip(sharp * scale, 0.0, 1.0).astype(np.float32)


def _offset(x, u, data, iterations: int = 60) -> np.ndarray:
    """[B, C]: the offset o in [-1, 1] with sum(u * clip(x + o, 0, 1)) = data (x, u [B, C, N];
    the sum grows with o, linearly between the points where a pixel clips): Newton's steps,
    which land on a linear piece's root, kept inside a bisection bracket; where the data lie
    outside the sum's range, the end of [-1, 1] that comes nearest."""
    low, high = np.full(data.shape, -1.0), np.ones(data.shape)
    offset = np.zeros(data.shape)
    tolerance = 1e-7 * np.maximum(np.sum(u, axis=-1, dtype=np.float64), 1e-30)
    for _ in range(iterations):
        shifted = x + offset[..., None].astype(np.float32)
        inside = (shifted > 0) & (shifted < 1)
        np.clip(shifted, 0.0, 1.0, out=shifted)
        error = np.sum(u * shifted, axis=-1, dtype=np.float64) - data
        slope = np.sum(u * inside, axis=-1, dtype=np.float64)
        if np.all(np.abs(error) <= tolerance):
            break
        low, high = np.where(error < 0, offset, low), np.where(error > 0, offset, high)
        newton = offset - error / np.where(slope > 0, slope, 1.0)
        bracketed = (slope > 0) & (newton > low) & (newton < high)
        offset = np.where(
            np.abs(error) <= tolerance, offset, np.where(bracketed, newton, (low + high) / 2)
        )
    return offset


def flux_correction(y, x, physics: Physics, valid, groups, adjoint, mode: str):
    """(x corrected, scale [B, C], offset [B, C]): per image and colour c, x's channel c
    brought to the measured total over the valid pixels of the colour, sum(y - b) / s.

    y [B, H, W, C'] measured through A; x [B, H', W', C] (a canvas around y's, where A acts);
    valid: y's mask; groups: A's channel_masks, one per channel of x (a colour image's
    channels, a mosaic's Bayer colours, one for gray), each measured through that channel
    only; adjoint: A^T from y's shape to x's. A is linear, so the total of A(v) over colour c
    is sum(u_c * v) with u_c = A^T(valid * groups[c]): one adjoint per colour, then no
    operator call. mode (FLUX_MODES): "scale" multiplies the channel by the ratio of the
    totals, "offset" adds the constant that matches them (_offset: the total of
    clip(x + offset, 0, 1) grows with it; a measured total at or below zero takes the colour
    to 0), "off" neither. The scale leaves a colour as it is where either total is not
    positive or the counts know theirs to no better than FLUX_MAX_UNCERTAINTY (its standard
    deviation sqrt(sum(s A x + b + r^2)) / s relative to it): on a near-black image the read
    noise would set a factor for every pixel, while an offset's error is the measured mean's
    own (on corpus:val astronomy such a rule cost the offset 0.01-0.58 dB). Per colour, so
    that what the prior added to one colour (a floor on a dark one) is not taken from the
    others."""
    s, r, b = physics.s, physics.r, physics.b
    x = np.asarray(x, np.float32)
    batch, channels = x.shape[0], x.shape[-1]
    scale, offset = np.ones((batch, channels)), np.zeros((batch, channels))
    if mode == "off":
        return x, scale, offset
    # Channel-first [B, C, N], so that every sum runs over contiguous memory.
    u = np.empty((batch, channels, x[0, ..., 0].size), np.float32)  # u_c in channel c
    data, pixels = np.empty((batch, channels)), np.empty((batch, channels))
    counts = np.asarray(y, np.float32) - np.float32(b)
    for c, group in enumerate(groups):
        mask = np.broadcast_to(np.asarray(valid, np.float32) * group, np.shape(y))
        u[:, c] = np.asarray(adjoint(mask))[..., c].reshape(batch, -1)
        data[:, c] = np.sum(mask * counts, axis=(1, 2, 3), dtype=np.float64) / s
        pixels[:, c] = np.sum(mask, axis=(1, 2, 3), dtype=np.float64)
    x_flat = np.ascontiguousarray(np.moveaxis(x, -1, 1).reshape(batch, channels, -1))
    total = lambda v: np.sum(u * v, axis=-1, dtype=np.float64)  # [B, C]: of A(v)
    if mode == "scale":
        model = total(x_flat)
        spread = np.sqrt(s * total(np.maximum(x_flat, 0.0)) + (b + r**2) * pixels) / s
        ok = (data > 0) & (model > 0) & (spread <= FLUX_MAX_UNCERTAINTY * data)
        scale = np.where(ok, data / np.where(ok, model, 1.0), 1.0)
        corrected = x * scale[:, None, None, :].astype(np.float32)
    else:
        offset = _offset(x_flat, u, data)
        corrected = x + offset[:, None, None, :].astype(np.float32)
    return np.clip(corrected, 0.0, 1.0), scale, offset


def _start(
    denoise_fn,
    y_pad,
    physics,
    operator,
    channels: int,
    sampler: SamplerSettings,
    num_samples: int,
    key,
    net_sigma,
    mask_pad,
    plane_fn=None,
    deblur: int = 0,
):
    """(latents [B K, H', W', C], sigma_max, start estimate [B, H', W', C] or None).

    y_pad: [B, H', W', C'] measured through `operator` (its phase at the padded origin);
    channels: C, the prior's. Through a PSF the one-call estimate is of the blurred image;
    `deblur` Richardson-Lucy iterations (from that estimate, mask_pad the data) deblur it.
    plane_fn: a mosaic's Bayer planes denoised by it join the estimate (_vst_estimate)."""
    rows = y_pad.shape[0] * num_samples
    noise_key = jax.random.key(0) if key is None else key
    latents = sampler.latent_scale * jax.random.normal(
        noise_key, (rows, *y_pad.shape[1:3], channels), jnp.float32
    )
    if sampler.start == "noise":
        return latents, min(sampler.sigma_max, net_sigma[1]), None
    estimates, sigmas = zip(
        *(
            _vst_estimate(
                denoise_fn,
                y_pad[i : i + 1],
                physics,
                operator,
                sampler.estimate_sigma_factor,
                plane_fn,
            )
            for i in range(len(y_pad))
        )
    )
    estimate, sigma_v = np.concatenate(estimates), max(sigmas)
    if operator.radius and deblur:
        estimate = _deblurred(estimate, y_pad, physics, operator, deblur, mask_pad)
    start_sigma = float(np.clip(sampler.start_factor * 2 * sigma_v, 2 * net_sigma[0], net_sigma[1]))
    x_model = jnp.repeat(jnp.asarray(2 * estimate - 1), num_samples, axis=0)
    return x_model / start_sigma + latents, start_sigma, estimate


def _polished(denoise_fn, estimate, y_pad, physics, factor: float, net_sigma) -> np.ndarray:
    """The one-call estimate [B, H', W', C] denoised once more, each image at factor times its
    own noise_level (within the network's sigma range): SamplerSettings.polish_factor."""
    out = []
    for i in range(len(estimate)):
        sigma = float(np.clip(factor * noise_level(y_pad[i : i + 1], physics), *net_sigma))
        model = jnp.asarray(2 * estimate[i : i + 1] - 1, jnp.float32)
        out.append((np.asarray(_apply(denoise_fn, model, jnp.float32(sigma))) + 1) / 2)
    return np.clip(np.concatenate(out), 0.0, 1.0).astype(np.float32)


# The restoration.


def network_calls(
    sampler: SamplerSettings,
    refine: bool = True,
    draw: bool | None = None,
    planes: bool = False,
    luminance: bool = False,
) -> int:
    """Denoiser calls per tile: the one-call estimate ("vst" start; estimate_ensemble calls
    where it is the result, i.e. not refined, and as many again for its polish_factor call
    and for a mosaic's measured luminance, `luminance`; twice the first where a mosaic's Bayer
    planes join it, `planes`) plus the sampler's steps
    (Heun 2N - 1, Euler and DPM-Solver++ N) where it draws (refines, or samples for a std;
    default: where it refines)."""
    draw = refine if draw is None else draw
    calls = samplers.network_calls(sampler.solver, sampler.num_steps if draw else 0)
    if sampler.start != "vst":
        return calls
    if refine:
        return calls + (2 if planes else 1)
    after = (sampler.polish_factor > 0) + luminance
    return calls + sampler.estimate_ensemble * ((2 if planes else 1) + after)


def restore(
    prior: Denoiser,
    y,
    *,
    physics: Physics,
    mask=None,
    guidance: GuidanceSettings = GuidanceSettings(),
    sampler: SamplerSettings = SamplerSettings(),
    tiling_settings: TilingSettings | None = TilingSettings(),
    num_samples: int = 1,
    key=None,
) -> Restoration:
    """Restore x in [0, 1] from electrons y ~ Poisson(s x + b) + N(0, r^2) with a diffusion prior.

    Args:
      prior: a Prior (or any Denoiser).
      y: [H, W], [H, W, C] or [B, H, W, C] float electrons, C = prior.img_channels (a mosaic:
        one channel, physics.operator a Mosaic); a batch shares one physics.
      physics: s, r, b, the domain and the forward operator.
      mask: like y, 1 = valid, 0 = ignored by the likelihood (saturated, dead, hot pixels).
      guidance: the likelihood step (pdr_jax.physics.guidance; kappa "auto" = auto_kappa of
        the mean photon count over the valid pixels).
      sampler: steps, solver and start.
      tiling_settings: tiles for images of any size (a plan of one tile for a small image);
        None: the whole image in one network call, e.g. a batch of crops.
      num_samples: K samples per image (differing by their start noise); the image is their
        mean, `std` their per-pixel standard deviation. Where the one-call estimate is the
        result (noise below refine_min_noise) and K > 1, the K samples are still drawn for
        `std` and the image is the estimate (report "std_from"); num_steps 0 draws none.
      key: PRNG key of the start noise (None: key 0).

    Returns a Restoration. Raises ValueError naming the field for NaN/Inf data, bad physics,
    a mask of the wrong shape or a prior with other channels.
    """
    start_time = time.perf_counter()
    calibration.check_finite(y, "y")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    operator = physics.operator
    y_b, undo = _as_bhwc(y, prior.img_channels, operator)
    valid = _valid_mask(mask, y_b, np.shape(y))
    mean_photons = float(np.sum((y_b - physics.b) * valid) / valid.sum())
    # A PSF's scene is larger than the image by its radius (a margin that is not data), so
    # the measured pixels are the valid part of its circular convolution on the canvas.
    margin = _margin(operator.radius, prior.downsampling)
    extend = lambda v, mode: np.pad(v, ((0, 0), (margin, margin), (margin, margin), (0, 0)), mode)
    crop = lambda v: v[:, margin : v.shape[1] - margin, margin : v.shape[2] - margin]
    y_canvas, valid_canvas = extend(y_b, "reflect"), extend(valid, "constant")
    if guidance.kappa == "auto":
        guidance = dataclasses.replace(guidance, kappa=auto_kappa(mean_photons))
    report_warnings = []
    if mean_photons < 1.0:
        report_warnings.append(
            f"mean photon count {mean_photons:.3g} < 1: the likelihood is weak and the result is "
            "dominated by the prior"
        )

    # Whether the sampler refines the one-call estimate (False: the estimate is the result,
    # averaged over sampler.estimate_ensemble flips and transposes). Through a PSF the
    # sampler's data steps do the deconvolution: it always runs.
    level = noise_level(y_b, physics)
    refine = sampler.start == "noise" or (
        sampler.num_steps > 0 and (level >= sampler.refine_min_noise or not operator.diagonal)
    )
    ensemble = 1 if refine else sampler.estimate_ensemble
    # Richardson-Lucy in the start through a PSF: as many iterations as the noise allows.
    deblur = 0
    if operator.radius and sampler.start == "vst":
        deblur = deblur_iterations(sampler, level, physics.domain)
    # A noisy mosaic's start also denoises its Bayer planes, with the denoiser's grayscale
    # prior (SamplerSettings.planes_min_noise).
    # Where the estimate is the result, its luminance is re-estimated from the measured pixels
    # by that prior (SamplerSettings.measured_luminance).
    plane_prior = getattr(prior, "plane_prior", None)
    gray_start = (
        sampler.start == "vst" and plane_prior is not None and hasattr(operator, "to_planes")
    )
    planes = gray_start and level >= sampler.planes_min_noise
    luminance = gray_start and not refine and sampler.measured_luminance

    # The tile plan (a whole image: none) and its denoisers.
    batch, height, width, _ = y_canvas.shape
    if tiling_settings is None:
        if height % prior.downsampling or width % prior.downsampling:
            raise ValueError(
                f"y is {height}x{width}: without tiling both sides must be multiples of the "
                f"network's downsampling {prior.downsampling} (pass tiling_settings)"
            )
        plan, pad, unpad = None, (lambda v: np.asarray(v)), (lambda v: np.asarray(v))
        args = prior.sampler_args(physics, batch * num_samples)
        denoise_fn = args["denoise_fn"]
        start_fn = composite.ensembled(prior.sampler_args(physics, 1)["denoise_fn"], ensemble)
        planes = planes and height % 2 == 0 and width % 2 == 0  # whole Bayer cells
        gray_fn = (
            composite.ensembled(plane_prior.sampler_args(physics, 1)["denoise_fn"], ensemble)
            if planes or luminance
            else None
        )
        inside = np.ones((1, height, width, 1), np.float32)
        operator_pad = operator
    else:
        tile = tiling_settings.tile or tiling.choose_tile(
            height,
            width,
            resolution=prior.img_resolution,
            multiple=prior.downsampling,
            model_channels=prior.model_channels,
            batch=tiling_settings.batch,
            memory_budget_mb=tiling_settings.memory_budget_mb,
        )
        plan = tiling.plan_tiles(
            height,
            width,
            tile=tile,
            overlap=min(tiling_settings.overlap, tile // 4),
            multiple=prior.downsampling,
        )
        pad = lambda v: np.asarray(tiling.pad(jnp.asarray(v), plan))
        unpad = lambda v: np.asarray(tiling.unpad(v, plan))
        # No more tiles per network call than the plan has: a chunk is padded to its size.
        chunk = min(tiling_settings.batch, plan.num_tiles)
        args = prior.sampler_args(physics, chunk)
        denoise_fn = tiling.tiled_denoiser(args["denoise_fn"], plan, batch=chunk)
        start_fn = tiling.tiled_denoiser(
            composite.ensembled(args["denoise_fn"], ensemble), plan, batch=chunk
        )
        # The planes are one image of the canvas's shape (Mosaic.to_planes): the same tiles.
        planes = planes and not any(side % 2 for side in plan.padded_shape)
        gray_fn = (
            tiling.tiled_denoiser(
                composite.ensembled(
                    plane_prior.sampler_args(physics, chunk)["denoise_fn"], ensemble
                ),
                plan,
                batch=chunk,
            )
            if planes or luminance
            else None
        )
        inside = np.zeros((1, *plan.padded_shape, 1), np.float32)
        inside[:, plan.pad_top : plan.pad_top + height, plan.pad_left : plan.pad_left + width] = 1
        # The padded image's origin is (-pad_top, -pad_left) of the measurement's.
        operator_pad = operator.at(-plan.pad_top, -plan.pad_left)
    y_pad = pad(y_canvas)
    mask_pad = pad(valid_canvas) * inside  # the padding is not data
    repeat = lambda v: jnp.repeat(jnp.asarray(v), num_samples, axis=0)
    cond = prior.conditioning_image(jnp.asarray(y_pad), physics)
    if cond is not None:  # a conditional model: every call sees the measurement (its tiles)
        if sampler.start == "vst":
            raise ValueError(
                "a model conditioned on the measurement starts from noise: pass "
                "SamplerSettings(start='noise') (pdr_jax.restore.CONDITIONAL_SETTINGS)"
            )
        if plan is None:
            denoise_fn = Partial(_call_with, args["denoise_fn"], repeat(cond))
        else:
            denoise_fn = tiling.tiled_denoiser(
                args["denoise_fn"], plan, batch=chunk, cond_image=repeat(cond)
            )

    # The start, then the guided sampler.
    prepared = time.perf_counter()
    latents, sigma_max, estimate = _start(
        start_fn,
        y_pad,
        physics,
        operator_pad,
        prior.img_channels,
        sampler,
        num_samples,
        key,
        (args["sigma_min"], args["sigma_max"]),
        mask_pad,
        gray_fn if planes else None,
        deblur,
    )
    if not refine and estimate is not None and sampler.polish_factor > 0:
        net_sigma = (args["sigma_min"], args["sigma_max"])
        estimate = _polished(start_fn, estimate, y_pad, physics, sampler.polish_factor, net_sigma)
    if luminance:
        denoise_unit = _unit_denoiser(gray_fn, 1.0, [])
        srb = (physics.s, physics.r, physics.b)
        estimate = np.stack(
            [
                baselines.measured_luminance(
                    denoise_unit, estimate[i], y_pad[i], operator_pad, *srb, mask_pad[i]
                )
                for i in range(len(estimate))
            ]
        )
    started = time.perf_counter()
    # Samples are drawn where they are the result, and for the std of num_samples > 1 where the
    # one-call estimate is the result (the image stays the estimate; std_from says so).
    draw = refine or (num_samples > 1 and sampler.num_steps > 0)
    if draw:
        guided_fn, guidance_fn = physics_guidance.make_guidance(
            denoise_fn,
            repeat(y_pad),
            *(jnp.float32(v) for v in (physics.s, physics.r, physics.b)),
            mask=repeat(mask_pad),
            settings=guidance,
            operator=operator_pad,
        )
        schedule = dict(
            num_steps=sampler.num_steps,
            sigma_min=args["sigma_min"],
            sigma_max=sigma_max,
            rho=sampler.rho,
            round_sigma=args["round_sigma"],
        )
        x_model = samplers.sample(
            sampler.solver, guided_fn, latents, guidance_fn=guidance_fn, **schedule
        )
        samples = jnp.clip(0.5 * (x_model + 1.0), 0.0, 1.0).reshape(
            batch, num_samples, *latents.shape[1:]
        )
        samples = unpad(samples)
    sampled = time.perf_counter()

    x_canvas = np.asarray(samples.mean(axis=1) if refine else unpad(jnp.asarray(estimate)))
    chex.assert_shape(x_canvas, (*y_canvas.shape[:3], prior.img_channels))
    forward = lambda v: crop(np.asarray(operator.forward(jnp.asarray(v))))  # A(x), like y
    groups = operator.channel_masks(*y_b.shape[1:3], y_b.shape[-1])
    adjoint = lambda m: np.asarray(operator.adjoint(jnp.asarray(extend(m, "constant"))))
    x_canvas, scale, offset = flux_correction(
        y_b, x_canvas, physics, valid, groups, adjoint, flux_mode(sampler, physics.domain)
    )
    measured = forward(x_canvas)
    x = crop(x_canvas)
    std = None
    if draw and num_samples > 1:
        std = (crop(np.asarray(samples.std(axis=1))) * scale[:, None, None, :]).astype(np.float32)
    std_from = None
    if std is not None:
        std_from = "samples" if refine else "samples drawn beside the one-call estimate"
    if num_samples > 1 and std is None:
        report_warnings.append(
            "num_steps 0: the one-call estimate is the result and no samples were drawn, so "
            "there is no posterior std"
        )
    num_nonfinite = int(np.sum(~np.isfinite(x)))
    if num_nonfinite:
        report_warnings.append(f"{num_nonfinite} restored pixel(s) are NaN/Inf")
    for message in report_warnings:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    s, r, b = physics.s, physics.r, physics.b
    residuals = metrics.normalized_residuals(y_b, measured, s, r, b)
    report = {
        "chi_square": float(metrics.chi_square(y_b, measured, s, r, b, valid)),
        # Per channel (R, G, B of a colour restoration) or per Bayer colour (a mosaic's R, G,
        # B pixels): one that alone is off shows up here.
        "chi_square_per_channel": [
            float(metrics.chi_square(y_b, measured, s, r, b, valid * group)) for group in groups
        ],
        "whiteness": float(metrics.whiteness(residuals, mask=valid)),
        "spectral_flatness": float(metrics.spectral_flatness(residuals)),
        "mean_photons": mean_photons,
        "num_valid_pixels": int(valid.sum()),
        "saturated_fraction": float(1 - valid.mean()),
        "kappa": float(guidance.kappa),
        "start_sigma": None if estimate is None else float(sigma_max),
        "noise_level": level,
        "refined": refine,
        "planes_start": planes,
        "measured_luminance": luminance,
        "deblur_iterations": deblur,
        "flux_scale": scale.tolist(),  # [B][C]
        "flux_offset": offset.tolist(),  # [B][C], in [0, 1] units of x (electrons: times s)
        "network_calls": network_calls(sampler, refine, draw, planes, luminance),
        "posterior_std": None if std is None else float(std.mean()),
        "std_from": std_from,
        "tile": None if plan is None else plan.tile,
        "num_tiles": 1 if plan is None else plan.num_tiles,
        "plan": None if plan is None else plan.to_json(),
        "physics": {**dataclasses.asdict(physics), "operator": operator.summary()},
        "margin": margin,
        "settings": {
            "guidance": dataclasses.asdict(guidance),
            "sampler": dataclasses.asdict(sampler),
            "tiling": None if tiling_settings is None else dataclasses.asdict(tiling_settings),
            "num_samples": num_samples,
        },
        "timings": {
            "prepare_s": prepared - start_time,
            "start_s": started - prepared,
            "sample_s": sampled - started,
            "total_s": time.perf_counter() - start_time,
        },
        "warnings": report_warnings,
    }
    return Restoration(undo(x), report, None if std is None else undo(std))
