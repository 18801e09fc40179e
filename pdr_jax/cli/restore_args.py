"""pdr-restore's command line: its flags, their types and checks (the program is
pdr_jax.cli.restore, whose docstring is the --help text)."""

from __future__ import annotations

import argparse

import numpy as np

from pdr_jax.cli import finish_parser
from pdr_jax.presets import (  # the shipped models, by name (pdr_jax.model_io.resolve_model)
    DEFAULT_CHECKPOINT,
    DEFAULT_CONDITIONAL_CHECKPOINT,
    DEFAULT_RGB_CHECKPOINT,
)
from pdr_jax.settings import COLOUR_MODES, ENSEMBLE_SIZES, FLUX_MODES

EXAMPLES = (
    "pdr-restore noisy.tif --output restored.tif --domain microscopy --scale 10 --read-noise 2 "
    "--preview preview.png",
    "pdr-restore raw_dir/ --output out_dir/ --units adu --gain 1.5 --black-level 100 "
    "--white-level 4095 --domain astronomy --scale 50 --read-noise 3 --report report.json",
    "pdr-restore noisy.tif --output restored.tif --domain microscopy --scale 10 --read-noise 2 "
    "--num-samples 8 --uncertainty restored_std.tif",
    "pdr-restore frame.fits --output restored.fits --domain astronomy --scale auto "
    "--read-noise auto",
    "pdr-restore noisy.tif --output restored.tif --domain microscopy --scale 10 --read-noise 2 "
    "--method conditional",
    "pdr-restore photo.dng --output photo.tif --units adu --gain auto --read-noise auto "
    "--domain photography --scale auto --preview photo.png",
    "pdr-restore mosaic.npy --cfa RGGB --wb 2.0,1,1.6 --output rgb.npy --domain photography "
    "--scale 10 --read-noise 2",
    "pdr-restore cells.tif --psf airy:520,1.4,65 --output deconvolved.tif --domain microscopy "
    "--scale 20 --read-noise 1.5",
    "pdr-restore field.fits --psf auto --output deconvolved.fits --domain astronomy --scale 50 "
    "--read-noise 2",
)


# read_measurement's keyword arguments, each the flag of the same name.
MEASUREMENT_FLAGS = ("scale", "read_noise", "background", "units", "gain", "black_level")
MEASUREMENT_FLAGS += ("white_level", "cfa", "wb", "nonfinite", "linearise", "psf")


def _triple(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected three numbers > 0 as R,G,B, got {text!r}")
    return values


def _number_or_auto(text: str):
    """A flag value: 'auto' or a float."""
    if text.strip() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def parse_args(argv=None, doc: str = ""):
    """The parsed flags; doc: the program's docstring (first paragraph the description, the
    rest the epilog)."""
    # pdr_jax.settings, not pdr_jax.restore: --help without importing jax.
    from pdr_jax.settings import (
        CFA_PATTERNS,
        CONDITIONAL_SETTINGS,
        DOMAINS,
        LIKELIHOODS,
        MODES,
        SOLVERS,
        GuidanceSettings,
        SamplerSettings,
        parse_kappa,
        solver_name,
    )

    sampler, guidance = SamplerSettings(), GuidanceSettings()

    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1].rstrip()
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="measurement files or folders")
    p.add_argument("--output", required=True, help="output file (one input) or folder")
    p.add_argument(
        "--method",
        choices=("prior", "conditional"),
        default="prior",
        help="prior: guided diffusion prior; conditional: a conditional restoration model",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="model directory (pdr-convert, a training workdir's model/) or a shipped model's "
        f"name; default: the shipped model of --method ({DEFAULT_RGB_CHECKPOINT} for mosaics, "
        f"--colour luma and joint, else {DEFAULT_CHECKPOINT})",
    )
    p.add_argument(
        "--colour",
        choices=("auto", *COLOUR_MODES),
        default="auto",
        help="how a 3-channel input or a mosaic is restored. opponent: a grayscale prior "
        "(default pdr-gray-default) on the luminance and two chrominances, as colour BM3D "
        "does; luma: the chrominances of a colour prior (default pdr-rgb-default) with the "
        "luminance of pdr-gray-default; joint: a colour prior on R, G, B together; channels: "
        "a grayscale prior on each channel alone. auto (default): opponent for 3-channel "
        "inputs, luma for mosaics, joint for a 3-channel input with a colour --checkpoint",
    )
    p.add_argument(
        "--self-ensemble",
        type=int,
        choices=(1, 2, 4, 8),
        default=None,
        help="average the denoiser over this many flips and transposes of its input (that many "
        "times the network calls); default 8 with --colour opponent, else 1",
    )
    p.add_argument("--domain", required=True, choices=DOMAINS)
    p.add_argument(
        "--scale",
        type=_number_or_auto,
        required=True,
        help="photon scale s: electrons per unit clean intensity, or auto: the 99.5th percentile of the "
        "smoothed photon level (s is a choice of units; pdr_jax.physics.noise_estimation.auto_scale)",
    )
    p.add_argument(
        "--read-noise",
        type=_number_or_auto,
        required=True,
        help="read noise r (electrons rms), or auto: estimated from the image's local mean-variance relation",
    )
    p.add_argument("--background", type=float, default=0.0, help="background b (electrons)")
    p.add_argument("--units", choices=("electrons", "adu"), default="electrons")
    p.add_argument(
        "--gain",
        type=_number_or_auto,
        help="electrons per ADU (--units adu), or auto: estimated with the read noise from the image "
        "(needs tens of photons at its bright end; the report gives the uncertainty)",
    )
    p.add_argument("--black-level", type=float, help="ADU of an unexposed pixel (--units adu)")
    p.add_argument("--white-level", type=float, help="saturation ADU (--units adu)")
    p.add_argument(
        "--cfa",
        choices=CFA_PATTERNS,
        help="the input (one channel) is a Bayer mosaic with this 2x2 pattern from its top-left "
        "pixel: restored and demosaicked to [H, W, 3] (--colour luma; a camera RAW file "
        "gives its own pattern)",
    )
    p.add_argument(
        "--wb",
        type=_triple,
        help="R,G,B white-balance multipliers of a mosaic, as a RAW converter applies them: the "
        "channels' sensitivities are their inverses and the output is white-balanced (default: "
        "the RAW file's, else 1,1,1)",
    )
    p.add_argument(
        "--nonfinite",
        choices=("mask", "refuse"),
        default="mask",
        help="NaN/Inf pixels (FITS BLANK, masked regions): mask them out of the likelihood and "
        "let the prior fill them (default; the report counts them), or refuse the file",
    )
    p.add_argument(
        "--linearise",
        choices=("none", "srgb"),
        default="none",
        help="srgb: decode sRGB-encoded 8-bit values to linear light before restoring (the data "
        "and the output are then linear intensities); none: the values as they are (default)",
    )
    p.add_argument(
        "--psf",
        default=None,
        metavar="SPEC",
        help="deconvolve as well: the point-spread function, a file (FITS/TIFF/.npy: one 2-D "
        "image at the data's pixel scale, odd sides, centred; normalised to sum 1) or "
        "gaussian:FWHM_PX, moffat:FWHM_PX,BETA, airy:WAVELENGTH_NM,NA,PIXEL_NM (pixel-"
        "integrated), or auto: a Moffat fitted to the image's own bright isolated stars "
        "(astronomy; at least 3). Images of any size (tiles; the scene gets a margin of the "
        "PSF's radius); the data step is then prox (DECONVOLUTION_GUIDANCE)",
    )
    conditional_sampler = CONDITIONAL_SETTINGS["sampler"]
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"sampler steps (default: {sampler.num_steps} after the start; {conditional_sampler.num_steps} "
        "--method conditional)",
    )
    p.add_argument(
        "--estimate-ensemble",
        type=int,
        choices=ENSEMBLE_SIZES,
        default=None,
        help="where the one-call estimate is the result (low noise, or --steps 0), average it "
        f"over this many flips and transposes of each tile (default {sampler.estimate_ensemble}; "
        "a colour input's opponent path is self-ensembled already: 1); --steps 0 "
        "--estimate-ensemble 1 is the fast setting, one network call per tile",
    )
    p.add_argument(
        "--start",
        choices=("vst", "noise"),
        default=None,
        help=f"vst: refine the one-call variance-stabilised estimate; noise: EDM's start at sigma_max "
        f"(default {sampler.start}; --method conditional: noise)",
    )
    p.add_argument(
        "--solver",
        choices=SOLVERS,
        type=solver_name,  # the deprecated "dpmpp" warns and means dpmpp2m
        default=None,
        help=f"EDM heun (2 steps - 1 network calls), euler or dpmpp2m (DPM-Solver++(2M)), steps calls each "
        f"(default {sampler.solver}; --method conditional: {conditional_sampler.solver})",
    )
    p.add_argument(
        "--num-samples",
        type=int,
        default=1,
        help="average this many samples (each from its own start noise)",
    )
    p.add_argument(
        "--preview",
        help="write a PNG of noisy | restored | residual (normalised by the noise model) | "
        "posterior std, with colour bars and the chi-square (first frame and channel; a file "
        "for one input, else a folder)",
    )
    p.add_argument(
        "--uncertainty",
        help="with --num-samples > 1: write the per-pixel posterior std of the samples here (a "
        "file for one input, else a folder); where the one-call estimate is the result the "
        "sampler still draws the samples for it (the report's std_from says which)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="restore even when the data contradict the stated physics (a mean far above "
        "--scale, less noise than --read-noise and shot noise allow); the problems become "
        "warnings in the report",
    )
    p.add_argument(
        "--guidance",
        choices=MODES,
        default=None,
        help="x0: correct the denoised estimate; dps: through the denoiser; prox: the exact "
        f"proximal data step (pdr_jax.physics.guidance); default {guidance.mode}, with --psf "
        "prox (pdr_jax.restore.DECONVOLUTION_GUIDANCE)",
    )
    p.add_argument("--likelihood", choices=LIKELIHOODS, default=guidance.likelihood)
    p.add_argument(
        "--kappa",
        type=parse_kappa,
        default=None,
        help=f"guidance strength (default {guidance.kappa}, --method conditional 0; 0: the model alone; "
        "auto: from the mean photon count, pdr_jax.restore.auto_kappa)",
    )
    p.add_argument(
        "--conserve-flux",
        choices=FLUX_MODES,
        default=None,
        help="bring each restoration, per channel (or Bayer colour), to the measured total "
        "sum(y - b) / s: scale multiplies it (where the counts know the total to 10 %%), "
        "offset adds a constant (a sky level), off leaves the sampler's total (default: the domain's, "
        "scale for microscopy and photography, offset for astronomy, whose excess flux is "
        "sky lifted by positivity: SamplerSettings.conserve_flux, "
        "pdr_jax.settings.CONSERVE_FLUX; the report's flux_scale and flux_offset)",
    )
    p.add_argument(
        "--tile", type=int, default=None, help="tile size (default: chosen by the documented rule)"
    )
    p.add_argument("--overlap", type=int, default=16)
    p.add_argument("--batch", type=int, default=8, help="tiles per network call")
    p.add_argument(
        "--memory-budget-mb", type=float, default=2048.0, help="for the automatic tile size"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--save-electrons", action="store_true", help="also write s*x+b (suffix _electrons)"
    )
    p.add_argument("--report", help="JSON report of every image and a summary")
    finish_parser(p, *EXAMPLES)
    args = p.parse_args(argv)
    conditional = args.method == "conditional"
    if args.checkpoint is None and conditional:
        args.checkpoint = DEFAULT_CONDITIONAL_CHECKPOINT

    defaults = CONDITIONAL_SETTINGS if conditional else {"guidance": guidance, "sampler": sampler}
    for name, part, field in (
        ("steps", "sampler", "num_steps"),
        ("start", "sampler", "start"),
        ("solver", "sampler", "solver"),
        ("kappa", "guidance", "kappa"),
    ):
        if getattr(args, name) is None:
            setattr(args, name, getattr(defaults[part], field))
    if args.uncertainty and (args.num_samples < 2 or args.steps == 0):
        p.error(
            "--uncertainty needs --num-samples >= 2 and --steps >= 1 (samples to take a std of)"
        )
    from pdr_jax.physics.noise_estimation import PARAMETERS, check_parameter  # no jax

    for name, (flag, _) in PARAMETERS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value not in (None, "auto"):
            try:
                check_parameter(name, value, label=flag)
            except ValueError as err:
                p.error(str(err))
    if args.num_samples < 1 or args.steps < 0:
        p.error(
            f"--num-samples must be >= 1 and --steps >= 0, got {args.num_samples}, {args.steps}"
        )
    return args
