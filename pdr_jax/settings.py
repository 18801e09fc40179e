"""The settings records of a restoration: plain frozen dataclasses whose defaults are the tuned
setting (docs/tuning.md, "Restoration defaults"), validated on creation.

No jax here: the programs' --help shows these defaults without importing jax (pdr_jax.cli), and
pdr_jax.physics.guidance and pdr_jax.restore read them. pdr_jax.restore re-exports them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import warnings

DOMAINS = ("photography", "microscopy", "astronomy")  # pdr_jax.physics.conditioning
# The solvers of pdr_jax.samplers.sample, by the one name that restore(), pdr-restore --solver and
# pdr-sample --solver use: EDM Heun (2N - 1 network calls), EDM Euler (N), DPM-Solver++(2M) (N).
SOLVERS = ("heun", "euler", "dpmpp2m")
SOLVER_ALIASES = {"dpmpp": "dpmpp2m"}  # deprecated spellings -> names of SOLVERS
STARTS = ("vst", "noise")
# SamplerSettings.conserve_flux: how a restoration is brought to the measured total per colour
# (pdr_jax.restore.restoration.flux_correction).
FLUX_MODES = ("scale", "offset", "off")
LIKELIHOODS = ("wls", "gaussian", "exact")  # the keys of pdr_jax.physics.noise.LOG_LIKELIHOODS
GAMMA_SCHEDULES = ("sigma2", "sigma", "constant", "isotropic")
MODES = ("x0", "dps", "prox")
CFA_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")  # pdr_jax.physics.operators.CFA_PATTERNS


def solver_name(name: str) -> str:
    """`name` with a deprecated alias (SOLVER_ALIASES) replaced by its name in SOLVERS, with a
    FutureWarning; any other name is returned as it is (the caller checks it against SOLVERS)."""
    if name in SOLVER_ALIASES:
        warnings.warn(
            f"solver {name!r} is deprecated; use {SOLVER_ALIASES[name]!r}",
            FutureWarning,
            stacklevel=2,
        )
        return SOLVER_ALIASES[name]
    return name


@dataclasses.dataclass(frozen=True)
class GuidanceSettings:
    """How strongly and through what the likelihood steers the sampler. Validated on creation.

    The defaults are the tuned setting of pdr_jax.restore.restore (damped sigma^2 steps, no
    clip); the seed design of the table in pdr_jax.physics.guidance is
    GuidanceSettings(kappa=0.5, grad_clip=10.0, damping=False). kappa "auto" is resolved by
    pdr_jax.restore (auto_kappa of the mean photon count) before the settings reach
    pdr_jax.physics.guidance.
    """

    mode: str = "x0"  # "x0": correct the denoised estimate; "dps": through the denoiser;
    # "prox": the exact proximal data step (half-quadratic splitting)
    likelihood: str = "wls"  # a key of pdr_jax.physics.noise.LOG_LIKELIHOODS
    kappa: float | str = 1.0  # step-size scale, >= 0 (0 turns guidance off exactly), or "auto"
    schedule: str = "sigma2"  # a key of GAMMA_SCHEDULES (step_size)
    sigma_threshold: float = 0.01  # no correction at sigma <= this
    grad_clip: float | None = None  # clip the model-space gradient to +-grad_clip (None: off)
    damping: bool = True  # gamma -> gamma / (1 + gamma F), see damped_step
    # "prox" through a non-diagonal operator (a PSF): conjugate-gradient iterations of the
    # weighted least-squares data step (pdr_jax.physics.guidance.proximal_correction)
    cg_iterations: int = 8

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown guidance mode {self.mode!r}; expected one of {MODES}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(
                f"unknown likelihood {self.likelihood!r}; expected one of {LIKELIHOODS}"
            )
        if self.schedule not in GAMMA_SCHEDULES:
            raise ValueError(
                f"unknown gamma schedule {self.schedule!r}; expected one of {GAMMA_SCHEDULES}"
            )
        if self.kappa != "auto" and (isinstance(self.kappa, str) or not self.kappa >= 0):
            raise ValueError(f"kappa must be >= 0 or 'auto', got {self.kappa!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if not (isinstance(self.cg_iterations, int) and self.cg_iterations >= 1):
            raise ValueError(f"cg_iterations must be an integer >= 1, got {self.cg_iterations!r}")


# Self-ensemble sizes: the identity; + the left-right flip; + the up-down flips; + transposes.
ENSEMBLE_SIZES = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """How the sampler runs; the defaults are the tuned setting (docs/tuning.md)."""

    num_steps: int = 6  # sampler steps (Heun: 2 num_steps - 1 network calls); 0: the start itself
    solver: str = "euler"  # a name of SOLVERS (a deprecated alias is replaced by it, warning)
    start: str = "vst"  # "vst" or "noise" (pdr_jax.restore.restoration's docstring)
    start_factor: float = 0.7  # "vst": start_sigma = start_factor * 2 sigma_v (model space)
    latent_scale: float = 1.0  # std of the start's noise (x start_sigma); 0: deterministic
    estimate_sigma_factor: float = 1.03  # "vst": the denoiser runs at this times sigma_v
    refine_min_noise: float = 0.4  # "vst": run the sampler only where noise_level(y) >= this
    # "vst" through a PSF: Richardson-Lucy (EM) iterations from the denoised (blurred) estimate
    # before it is re-noised (0: the denoised blurred image is the start); None: as many as
    # the measurement's noise allows, floor(deblur_noise / noise_level(y)), at most
    # DEBLUR_MAX_ITERATIONS; deblur_noise None: the domain's, DEBLUR_NOISE (deblur_iterations)
    deblur_iterations: int | None = None
    deblur_noise: float | None = None
    # "vst": where the one-call estimate is the result (not refined), its denoiser averaged
    # over this many flips and transposes (ENSEMBLE_SIZES; pdr_jax.restore.composite): 8 calls
    # there cost about what refining costs elsewhere. On corpus:val (gray, s = 50 and 250)
    # +0.1 dB on astronomy, +0.26-0.42 dB on photographs and microscopy (docs/tuning.md).
    estimate_ensemble: int = 8
    # "vst" on a Bayer mosaic (pdr_jax.physics.operators.Mosaic) with a denoiser that has a
    # grayscale prior (`plane_prior`: LumaChromaPrior): where noise_level(y) >= this, the
    # one-call estimate is the mean of the demosaicked-then-denoised estimate and the
    # denoised-then-demosaicked one (its Bayer planes by the grayscale prior, then Menon 2007;
    # baselines.stabilised_planes), at twice the start's calls. inf: never (MOSAIC_SAMPLER sets
    # it; docs/tuning.md, "Colour").
    planes_min_noise: float = math.inf
    # "vst", where the one-call estimate is the result (not refined): denoised once more, with
    # the same estimate_ensemble, at this times the image's noise_level (0: not). A
    # demosaicked mosaic's noise is correlated, and the first call leaves low-frequency
    # blotches of it that a second, weaker call takes out (MOSAIC_SAMPLER: 0.2; on corpus:val
    # mosaics +0.29 / +0.35 dB at s = 250, every crop gaining; docs/tuning.md, "Colour").
    polish_factor: float = 0.0
    # "vst" on a Bayer mosaic with a denoiser that has a grayscale `plane_prior`, where the
    # one-call estimate is the result: after the polish, its luminance is re-estimated from
    # the measured pixels (baselines.measured_luminance: each pixel's stabilised value with the
    # estimate's colour difference added is a luminance measurement with white noise, which
    # the grayscale prior denoises at exactly its level). MOSAIC_SAMPLER: True (on corpus:val
    # mosaics +0.23 dB at s = 250 over the polish, every crop gaining; docs/tuning.md).
    measured_luminance: bool = False
    # Electrons in, electrons out: the restoration of each image is corrected so that its
    # forward model's total over the valid pixels equals the measured one, sum(A x) =
    # sum(y - b) / s (the maximum-likelihood total of a Poisson measurement, which
    # Richardson-Lucy keeps too), per colour (pdr_jax.restore.restoration.flux_correction).
    # FLUX_MODES: "scale" multiplies the colour by one factor, where the counts know that
    # total to FLUX_MAX_UNCERTAINTY; "offset" adds one constant to it (a sky level: what
    # positivity lifts on a dark sky is taken back without dimming the stars); both clipped
    # to [0, 1]; "off" leaves the sampler's total. None: the domain's,
    # CONSERVE_FLUX (flux_mode). The report records both (flux_scale, flux_offset, per image
    # and colour).
    conserve_flux: str | None = None
    sigma_min: float = 0.002
    sigma_max: float = 80.0  # "noise" start
    rho: float = 7.0

    def __post_init__(self):
        object.__setattr__(self, "solver", solver_name(self.solver))
        if self.solver not in SOLVERS or self.start not in STARTS:
            raise ValueError(
                f"solver must be one of {SOLVERS} and start one of {STARTS}, got "
                f"{self.solver!r}, {self.start!r}"
            )
        if self.estimate_ensemble not in ENSEMBLE_SIZES:
            raise ValueError(
                f"estimate_ensemble must be one of {ENSEMBLE_SIZES}, got {self.estimate_ensemble}"
            )
        if self.conserve_flux is not None and self.conserve_flux not in FLUX_MODES:
            raise ValueError(
                f"conserve_flux must be one of {FLUX_MODES} or None, got {self.conserve_flux!r}"
            )
        if self.num_steps < 0 or (self.num_steps == 0 and self.start != "vst"):
            raise ValueError(
                f"num_steps must be >= 1 (0 only with start='vst'), got {self.num_steps}"
            )
        if not (
            self.start_factor > 0
            and self.latent_scale >= 0
            and self.refine_min_noise >= 0
            and self.planes_min_noise >= 0
            and self.polish_factor >= 0
            and self.estimate_sigma_factor > 0
            and (self.deblur_iterations is None or self.deblur_iterations >= 0)
            and (self.deblur_noise is None or self.deblur_noise >= 0)
            and 0 < self.sigma_min < self.sigma_max
        ):
            raise ValueError(
                "need start_factor > 0, latent_scale >= 0, refine_min_noise >= 0, "
                "planes_min_noise >= 0, polish_factor >= 0, estimate_sigma_factor > 0, "
                "deblur_iterations >= 0 or None, deblur_noise >= 0 or None and "
                f"0 < sigma_min < sigma_max, got {self.start_factor}, {self.latent_scale}, "
                f"{self.refine_min_noise}, {self.planes_min_noise}, {self.polish_factor}, "
                f"{self.estimate_sigma_factor}, {self.deblur_iterations}, {self.deblur_noise}, "
                f"{self.sigma_min}, {self.sigma_max}"
            )


# SamplerSettings.conserve_flux "scale": a colour is scaled where the measured total's standard
# deviation is at most this fraction of it (an offset takes no such rule). On corpus:val (gray
# microscopy and astronomy, 4 crops per cell, r = 2, s = 10 / 50 / 250, no PSF and three) every
# crop's total was known to 0.05-5.5 % and a near-black astronomy crop's (mean 0.001) to
# 16-208 %, where scaling by the measured total cost up to 1.3 dB (docs/tuning.md, "Electrons
# in, electrons out").
FLUX_MAX_UNCERTAINTY = 0.1
# SamplerSettings.conserve_flux None: the domain's. On corpus:val the scale gained in microscopy
# (up to +0.57 dB through a PSF), on photographs (gray +0.00 to +0.50, RGB +0.02 to +0.12, RAW
# +0.03 to +0.47 dB) and lost in astronomy (16 crops per cell, denoising: -0.08, -0.13, -0.25 dB
# at s = 10, 50, 250, and the stars' aperture flux 1.4-2.8 points lower at s = 50 and 250):
# there the excess is the sky that positivity lifts, and a multiplicative scale takes it from
# the stars as well. The offset takes back the sky level itself: +1.50, +0.28, +0.04, +0.04 dB
# over none at s = 2, 10, 50, 250 on the same crops, +0.12 to +0.22 dB through the three PSFs,
# the stars' flux unchanged (docs/tuning.md, "Electrons in, electrons out").
CONSERVE_FLUX = {"astronomy": "offset", "microscopy": "scale", "photography": "scale"}


def flux_mode(sampler: SamplerSettings, domain: str) -> str:
    """How a restoration of `domain` is brought to the measured flux (FLUX_MODES):
    sampler.conserve_flux, or where it is None the domain's CONSERVE_FLUX."""
    return CONSERVE_FLUX[domain] if sampler.conserve_flux is None else sampler.conserve_flux


DEBLUR_MAX_ITERATIONS = 20  # SamplerSettings.deblur_iterations None: at most this many
# SamplerSettings.deblur_noise None: the domain's. Richardson-Lucy's positivity sharpens point
# sources on a dark sky, and amplifies noise in extended structure: on corpus:val (4 crops per
# cell, the three PSFs of the benchmark) 3 iterations in the start gained 0.5-0.7 dB for
# astronomy at s = 50 and 8 gained 0.4-1.3 dB at s = 250, and none gained for microscopy
# (3 iterations lost 0.2-1.6 dB at s = 250 with the Airy and Gaussian PSFs, 2.3-3.9 at s = 50);
# at s = 10 every count lost (docs/deconvolution.md).
DEBLUR_NOISE = {"astronomy": 0.3, "microscopy": 0.0, "photography": 0.0}


def deblur_iterations(sampler: SamplerSettings, level: float, domain: str) -> int:
    """Richardson-Lucy iterations of a "vst" start through a PSF at the noise level `level`
    (pdr_jax.restore.noise_level): sampler.deblur_iterations, or where it is None
    floor(deblur_noise / level), at most DEBLUR_MAX_ITERATIONS, with sampler.deblur_noise or
    where that is None the domain's DEBLUR_NOISE."""
    if sampler.deblur_iterations is not None:
        return sampler.deblur_iterations
    scale = DEBLUR_NOISE[domain] if sampler.deblur_noise is None else sampler.deblur_noise
    if not scale > 0:
        return 0
    if not level > 0:
        return DEBLUR_MAX_ITERATIONS
    return int(min(DEBLUR_MAX_ITERATIONS, math.floor(scale / level)))


# How a model conditioned on the measurement (pdr_jax.conditional.ConditionalModel) restores:
# from noise in 20 EDM Euler steps (DDIM with eta = 0 is Euler on the same ODE) with no
# likelihood guidance (the model sees the measurement itself). rho = 3 spaces the steps more
# evenly than EDM's 7: on corpus:val (2 crops per domain, s = 10 and 250) +0.35 dB on average
# over rho 7 for the shipped conditional model (rho 1: -0.59; DPM-Solver++ at rho 7: -0.58).
CONDITIONAL_SETTINGS = {
    "guidance": GuidanceSettings(kappa=0.0),
    "sampler": SamplerSettings(start="noise", solver="euler", num_steps=20, rho=3.0),
}

# How a measurement blurred by a point-spread function restores (pdr-restore --psf): the "prox"
# data step, solved through the PSF by conjugate gradients. On corpus:val (gaussian:2.5, 2
# crops each of microscopy and astronomy, s = 10 / 50 / 250, r = 2; PSNR dB) prox 29.28 / 33.36 /
# 36.21 (microscopy) and 34.74 / 36.95 / 38.63 (astronomy) against x0's 29.28 / 32.86 / 35.07
# and 34.72 / 35.64 / 36.21; 12 steps instead of 6, Richardson-Lucy in the start and higher
# start factors were worse (docs/deconvolution.md).
DECONVOLUTION_GUIDANCE = GuidanceSettings(mode="prox")

# How a colour photograph restores by default (pdr-restore on a 3-channel input): the grayscale
# prior on the opponent channels (pdr_jax.restore.composite.OpponentPrior), averaged over the 8
# flips and transposes (COLOUR_ENSEMBLE), refined by the sampler only where the noise is higher
# than for gray. On corpus:val (8 colour crops, one-call estimates) this was within 0.06 dB of
# colour BM3D or above it in every cell, and 0.5-1.3 dB above the trained colour prior
# (docs/tuning.md, "Colour").
COLOUR_ENSEMBLE = 8
COLOUR_SAMPLER = SamplerSettings(refine_min_noise=0.55)

# How a Bayer mosaic restores by default: luminance from the grayscale prior, chrominance from
# the colour prior (pdr_jax.restore.composite.LumaChromaPrior), refined by the sampler down to
# a lower noise level than gray (its data steps demosaick: on corpus:val mosaics refining gained
# on the crops of noise level >= 0.1 and lost below, docs/tuning.md "Colour"); below it the
# one-call estimate is self-ensembled as everywhere (+0.2 dB at s = 250 on corpus:val). From
# noise level 0.5 the start averages in the Bayer planes denoised by the grayscale prior, then
# demosaicked (on corpus:val +1.5 dB at s = 10, r = 3, whose crops are at 0.64-0.77, and lost
# 0.17 dB on average on those of s = 10, r = 0.5, at 0.15-0.49).
MOSAIC_SAMPLER = SamplerSettings(
    refine_min_noise=0.1, planes_min_noise=0.5, polish_factor=0.2, measured_luminance=True
)
# pdr-restore --colour (pdr_jax.restore.composite.colour_denoiser)
COLOUR_MODES = ("opponent", "luma", "joint", "channels")


@dataclasses.dataclass(frozen=True)
class TilingSettings:
    """Tiles for images larger than the network (pdr_jax.restore.tiling); `tiling=None` in
    `restore` runs the whole image (or batch of crops) through the network at once."""

    tile: int | None = None  # tile size; None: tiling.choose_tile's documented rule
    overlap: int = 16  # capped at a quarter tile
    batch: int = 8  # tiles per network call
    memory_budget_mb: float = 2048.0  # for the automatic tile size


AUTO_KAPPA_SLOPE = 0.35
AUTO_KAPPA_RANGE = (0.4, 1.0)


def auto_kappa(mean_photons: float) -> float:
    """kappa = 1 - AUTO_KAPPA_SLOPE log10(mean photons per pixel), clipped to AUTO_KAPPA_RANGE.

    Each sampler step re-applies the (damped) likelihood correction to a new denoised
    estimate, so with many photons the corrections add up to more than one Kalman update and
    the result follows the noise; with few the full strength is needed. Provenance of the
    constants: docs/tuning.md, "Restoration defaults".
    """
    kappa = 1.0 - AUTO_KAPPA_SLOPE * math.log10(max(float(mean_photons), 1e-3))
    return float(min(max(kappa, AUTO_KAPPA_RANGE[0]), AUTO_KAPPA_RANGE[1]))


def parse_kappa(text: str) -> str | float:
    """A --kappa value: 'auto' (auto_kappa) or a number >= 0."""
    if text.strip() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'auto', got {text!r}")
    return value
