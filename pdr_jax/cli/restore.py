"""Restore low-light measurements (Poisson-Gaussian noise) with a pdr_jax diffusion prior.

INPUT: files (.npy, .tif/.tiff, .fits/.fit, .png/.jpg, camera RAW) or folders of them. The data
are electrons (--units electrons) or raw ADU converted with --gain/--black-level/--white-level
(saturated pixels are masked out of the likelihood). Before anything is restored each file is
checked against the stated physics (pdr_jax.physics.noise_estimation.check_physics: a mean far
above --scale, less noise than shot noise and --read-noise allow); a file that contradicts it is
refused with the fix named, and --force restores it anyway.

Colour: a 3-channel input (RGB TIFF/PNG/JPEG, [H, W, 3] .npy, a FITS cube) is restored with its
channels together by the colour prior (pdr-rgb-default); --checkpoint pdr-gray-default restores
each channel on its own instead. 8-bit images are sRGB-encoded: they are restored as the
intensities they hold unless --linearise srgb decodes them to linear light first (then the
output is linear). A Bayer mosaic (a camera RAW file: .dng/.nef/.cr2/.arw, its CFA pattern,
black levels and white balance read from it; or a one-channel file with --cfa RGGB|BGGR|GRBG|GBRG
and --wb R,G,B) is restored and demosaicked in one model, y ~ Poisson(s g[c] x[c] + b) +
N(0, r^2) per pixel with c its CFA colour and g = 1 / wb: the output is the white-balanced
linear camera RGB x, [H, W, 3].

OUT: a file for one input, a folder for several; the format follows its extension (.npy, .tif,
.fits, .png as 16 bit): the restored clean intensity x in [0, 1] float32; --save-electrons also
writes s*x+b. A FITS output keeps the input FITS header (WCS, exposure...) and adds HISTORY
cards saying how it was restored; a TIFF output keeps the input TIFF's resolution and ImageJ
metadata and describes the restoration; .npy and 16-bit PNG outputs keep no metadata.

Every image is restored at any size through overlapping tiles fused at every sampler step.
--method prior (default): the diffusion prior with likelihood guidance through
pdr_jax.restore.restore, whose tuned defaults the flags start from (the one-call
variance-stabilised estimate, re-noised and refined by EDM Euler steps where the noise is high
enough; --steps 0: the one-call estimate alone, the fast setting); --num-samples K averages K
samples and --uncertainty writes their per-pixel std. --method conditional: a model conditioned
on the measurement (pdr_jax/conditional.py, default conditional-gray-default) through the same
call with pdr_jax.restore.CONDITIONAL_SETTINGS (20 EDM Euler steps from noise, no guidance),
the measurement's tiles conditioning each tile (saturated pixels are not masked: the model has
no likelihood term). --checkpoint takes a model directory (pdr-convert of an EDM pickle, a
training workdir's model/) or a shipped model's name.

Exit status 1 if any input failed (it is logged and skipped; the others are still written).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import tempfile
import time
import traceback

import numpy as np
import tqdm

from pdr_jax.cli import finish_parser
from pdr_jax.presets import (  # the shipped models, by name (pdr_jax.model_io.resolve_model)
    DEFAULT_CHECKPOINT,
    DEFAULT_CONDITIONAL_CHECKPOINT,
    DEFAULT_RGB_CHECKPOINT,
)

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
)
OUTPUT_FORMATS = (".npy", ".tif", ".tiff", ".fits", ".fit", ".png")


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


def parse_args(argv=None):
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
    )

    sampler, guidance = SamplerSettings(), GuidanceSettings()

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1].rstrip()
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
        f"name; default: the shipped model of --method ({DEFAULT_RGB_CHECKPOINT} for 3-channel "
        f"inputs and mosaics, else {DEFAULT_CHECKPOINT})",
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
        "pixel: restored and demosaicked to [H, W, 3] by the colour prior (a camera RAW file "
        "gives its own)",
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
    conditional_sampler = CONDITIONAL_SETTINGS["sampler"]
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"sampler steps (default: {sampler.num_steps} after the start; {conditional_sampler.num_steps} "
        "--method conditional)",
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
        default=None,
        help=f"EDM heun (2 steps - 1 network calls), euler or dpmpp (DPM-Solver++(2M)), steps calls each "
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
        default=guidance.mode,
        help="x0: correct the denoised estimate; dps: through the denoiser; prox: the exact "
        "proximal data step (pdr_jax.physics.guidance)",
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
    for flag, value, strict in (
        ("--scale", args.scale, True),
        ("--read-noise", args.read_noise, False),
        ("--background", args.background, False),
        ("--gain", args.gain, True),
    ):
        if value not in (None, "auto") and not (value > 0 if strict else value >= 0):
            p.error(
                f"{flag} must be {'>' if strict else '>='} 0{' or auto' if flag != '--background' else ''}, got {value:g}"
            )
    if args.num_samples < 1 or args.steps < 0:
        p.error(
            f"--num-samples must be >= 1 and --steps >= 0, got {args.num_samples}, {args.steps}"
        )
    return args


def expand_inputs(inputs) -> list[pathlib.Path]:
    from pdr_jax.io.readers import is_supported

    files = []
    for item in inputs:
        path = pathlib.Path(item)
        if path.is_dir():
            files += sorted(f for f in path.iterdir() if f.is_file() and is_supported(f))
        else:
            files.append(path)
    return files


def output_paths(files, output: str) -> list[pathlib.Path]:
    out = pathlib.Path(output)
    if len(files) == 1 and out.suffix.lower() in OUTPUT_FORMATS:
        return [out]
    if out.suffix.lower() in OUTPUT_FORMATS:
        raise SystemExit(
            f"--output {out} is a file but there are {len(files)} inputs: give a folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    return [out / (f.stem + ".tif") for f in files]


def write_preview(preview_path, path, y, x, std, mask, physics, chi_square: float) -> None:
    """The --preview figure of one restored frame (pdr_jax.evaluation.report): y, mask
    [H, W, C'] (the measurement of physics.operator), x [H, W, C] (3 channels shown as sRGB),
    std like x or None. A mosaic is shown demosaicked (operator.fill), its residual per pixel."""
    from pdr_jax.evaluation.report import plot_restoration_preview

    s, r, b = physics.s, physics.r, physics.b
    operator = physics.operator
    mean = s * np.asarray(operator.forward(x[None]))[0] + b
    residual = np.where(mask, (y - mean) / np.sqrt(np.maximum(mean, 0.0) + r**2), np.nan)
    noisy = operator.fill((y - b) / s) / operator.channel_gains
    squeeze = lambda a: a[..., 0] if a.shape[-1] == 1 else a
    residual, noisy, x = squeeze(residual), squeeze(noisy), squeeze(x)
    if residual.ndim == 3:  # colour: the channels' residuals summed / sqrt(C), still ~N(0, 1)
        residual = residual.sum(-1) / np.sqrt(residual.shape[-1])
    std = None if std is None else (std.mean(-1) if std.shape[-1] > 1 else std[..., 0])
    title = (
        f"{path.name}: chi-square {chi_square:.3f}  ({physics.domain}, s = {s:g} e-, "
        f"r = {r:g} e-, b = {b:g} e-)"
    )
    plot_restoration_preview(
        preview_path, noisy=noisy, restored=x, residual=residual, std=std, title=title
    )


def check_writable(path: pathlib.Path, flag: str) -> None:
    """SystemExit naming the flag unless a file can be created in path's folder (made if
    missing): checked before anything is computed. A probe file, not permission bits, so a
    read-only mount or a file in the folder's place is caught for root too."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as e:
        raise SystemExit(
            f"{flag} {path}: cannot write there ({type(e).__name__}: {e}); nothing was restored"
        ) from None


def check_output_format(path: pathlib.Path, channels: int | None) -> None:
    """ValueError before restoring when the output format is unknown or cannot hold the image's
    channels (None: not known yet, only the format is checked)."""
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(
            f"{path}: unknown output format {suffix!r}; expected one of {OUTPUT_FORMATS}"
        )
    if suffix == ".png" and channels not in (1, None):
        raise ValueError(
            f"{path}: 16-bit PNG output is grayscale only; use .tif for {channels} channels"
        )


def integer_warning(array_dtype, units: str) -> list[str]:
    """A note that an integer file is read as electrons (right for photon-counting detectors and
    simulations, wrong for camera counts)."""
    if units == "electrons" and np.issubdtype(np.dtype(array_dtype), np.integer):
        return [
            f"the file holds {array_dtype} integers, read as electrons (--units electrons): raw "
            "camera counts need --units adu with --gain/--black-level/--white-level"
        ]
    return []


class PhysicsMismatch(ValueError):
    """The measurement contradicts the stated physics (--units, --scale, --read-noise)."""


def check_physics(path, electrons, mask, physics, force: bool) -> list[str]:
    """Before restoring: the first frame against the stated physics
    (pdr_jax.physics.noise_estimation.check_physics). Raises PhysicsMismatch naming the fix, or
    with --force returns the problems as warnings."""
    from pdr_jax.physics import noise_estimation

    check = noise_estimation.check_physics(
        electrons[0, :, :, 0], physics.s, physics.r, physics.b, mask[0, :, :, 0]
    )
    if check.problems and not force:
        raise PhysicsMismatch(
            f"{path}: not restored, the data contradict the stated physics: "
            + "; ".join(check.problems)
            + " (--force restores anyway)"
        )
    return list(check.problems)


CHI_SQUARE_RANGE = (0.3, 3.0)  # outside it the noise model does not describe the data


def _mosaic(path, args, meta, channels: int):
    """The forward operator of the file: a Mosaic for a camera RAW file (its pattern and white
    balance, --cfa/--wb override) or a one-channel file with --cfa, else the identity."""
    from pdr_jax.physics import operators

    raw = meta.format == "raw"
    if not raw and args.cfa is None:
        if args.wb is not None:
            raise ValueError(f"{path}: --wb applies to a mosaic (--cfa, or a camera RAW file)")
        return operators.IDENTITY
    if channels != 1:
        raise ValueError(f"{path}: --cfa needs a one-channel mosaic, the file has {channels}")
    pattern = args.cfa or meta.header["cfa_pattern"]
    wb = args.wb or (meta.header.get("white_balance") if raw else None) or (1.0, 1.0, 1.0)
    return operators.Mosaic(pattern, gains=tuple(wb[1] / float(v) for v in wb))


def _green_planes(frame: np.ndarray, mosaic) -> np.ndarray:
    """[H, W] mosaic -> its two green planes side by side [H/2, W]: one colour, for the noise
    estimate (its local windows must not mix colours of different levels)."""
    colours = mosaic.colours(2, 2)
    greens = [frame[i::2, j::2] for i in range(2) for j in range(2) if colours[i, j] == 1]
    height = min(g.shape[0] for g in greens)
    width = min(g.shape[1] for g in greens)
    return np.concatenate([g[:height, :width] for g in greens], axis=1)


def read_measurement(path: pathlib.Path, args):
    """(electrons [F, H, W, C] float32, valid mask like it, the reader's ImageMeta, noise,
    the forward operator).

    noise: {"scale", "read_noise", "gain"} with "auto" values replaced by the estimates of the
    first frame and channel (of a mosaic: its green pixels; pdr_jax.physics.noise_estimation),
    and "estimate" (their standard errors and warnings) when anything was estimated. A camera
    RAW file is read as its Bayer mosaic with the black level of each CFA position.
    """
    from pdr_jax.io.readers import read_image
    from pdr_jax.physics import calibration, noise_estimation

    array, meta = read_image(path, raw_mode="mosaic")
    data = np.asarray(array, np.float32) * meta.scale + meta.offset
    # NaN/Inf pixels (FITS BLANK, masked detector regions) carry no data: out of the likelihood,
    # filled by the prior (--nonfinite refuse: the file fails instead).
    finite = np.isfinite(data)
    num_nonfinite = int(finite.size - np.count_nonzero(finite))
    if num_nonfinite and (args.nonfinite == "refuse" or not finite.any()):
        calibration.check_finite(data, f"{path}")
    if num_nonfinite:
        data = np.where(finite, data, np.float32(np.median(data[finite])))
    operator = _mosaic(path, args, meta, data.shape[-1])
    planes = (
        (lambda a: a) if operator.channels_out is None else (lambda a: _green_planes(a, operator))
    )
    if meta.format == "raw":
        if args.units != "adu":
            raise ValueError(
                f"{path}: a camera RAW file holds ADU: use --units adu with --gain G or auto"
            )
        if args.black_level is None:  # each CFA position's own black level, their mean below
            cell = np.asarray(meta.header["cfa_black"], np.float32)
            height, width = data.shape[1:3]
            black_map = np.tile(cell, (height // 2, width // 2))[None, :, :, None]
            data = data - (black_map - float(np.mean(cell)))
    if args.linearise == "srgb":
        if meta.white_level is None or meta.format == "raw":
            raise ValueError(
                f"{path}: --linearise srgb needs integer data with a white level (8-bit images)"
            )
        white = meta.white_level
        data = calibration.srgb_to_linear(np.clip(data / white, 0, 1)) * white
    noise = {
        "scale": args.scale,
        "read_noise": args.read_noise,
        "gain": args.gain,
        "estimate": None,
        "nonfinite": num_nonfinite,
    }
    if args.units == "electrons":
        electrons, mask = data, np.ones_like(data)
        if args.read_noise == "auto":
            estimate = noise_estimation.estimate_noise(planes(data[0, :, :, 0]), gain=1.0)
            noise.update(read_noise=estimate.read_noise, estimate=dataclasses.asdict(estimate))
    else:
        gain = args.gain if args.gain is not None else meta.gain
        black = args.black_level if args.black_level is not None else (meta.black_level or 0.0)
        white = args.white_level if args.white_level is not None else meta.white_level
        missing = [name for name, v in (("--gain", gain), ("--white-level", white)) if v is None]
        if missing:
            raise ValueError(
                f"{path}: --units adu needs {', '.join(missing)} (the file does not record it)"
            )
        if "auto" in (gain, args.read_noise):
            estimate = noise_estimation.estimate_noise(
                planes(data[0, :, :, 0]),
                black_level=float(np.mean(black)),
                white_level=float(white),
                gain=None if gain == "auto" else float(gain),
            )
            gain = estimate.gain
            noise["estimate"] = dataclasses.asdict(estimate)
            if args.read_noise == "auto":
                noise["read_noise"] = estimate.read_noise
        noise["gain"] = float(gain)
        cal = calibration.Calibration(
            gain=float(gain), black_level=float(np.mean(black)), white_level=float(white)
        )
        electrons, mask = (np.asarray(v) for v in calibration.calibrate(data, cal))
    mask = mask * finite
    if args.scale == "auto":
        noise["scale"] = noise_estimation.auto_scale(electrons[0, :, :, 0], args.background)
    return electrons, mask, meta, noise, operator


# FITS cards that describe the stored array, not the image: written afresh for the output.
_FITS_STRUCTURAL = {
    "SIMPLE",
    "BITPIX",
    "EXTEND",
    "BSCALE",
    "BZERO",
    "BLANK",
    "XTENSION",
    "PCOUNT",
    "GCOUNT",
    "CHECKSUM",
    "DATASUM",
    "BUNIT",
    "DATAMIN",
    "DATAMAX",
}


def _fits_header(meta, history: list[str]):
    """The input's FITS cards (WCS, exposure, ...) minus the structural ones, plus HISTORY."""
    from astropy.io import fits

    header = fits.Header()
    if meta is not None and meta.format == "fits":
        for key, value in meta.header.items():
            if key not in _FITS_STRUCTURAL and not key.startswith("NAXIS"):
                try:
                    header[key] = value
                except (ValueError, TypeError):  # a value astropy cannot write back: leave it out
                    continue
    header["BUNIT"] = ("", "clean intensity x in [0, 1] (pdr_jax)")
    for line in history:
        header.add_history(line)
    return header


def _tiff_metadata(meta) -> dict:
    """tifffile.imwrite arguments that keep the input TIFF's resolution and ImageJ metadata."""
    if meta is None or meta.format != "tiff":
        return {}
    kwargs = {}
    header = meta.header
    if "XResolution" in header and "YResolution" in header:
        kwargs["resolution"] = (header["XResolution"], header["YResolution"])
        if "ResolutionUnit" in header:
            kwargs["resolutionunit"] = header["ResolutionUnit"]
    if header.get("imagej"):  # its own layout keys are written afresh by tifffile
        layout = {"ImageJ", "images", "channels", "slices", "frames", "hyperstack", "mode", "loop"}
        kwargs.update(
            imagej=True, metadata={k: v for k, v in header["imagej"].items() if k not in layout}
        )
    return kwargs


def write_together(writes) -> None:
    """Write each (path, write) pair's file as write(temporary path): a temporary file in the
    path's folder, all of them renamed into place once every one is complete. A failure (a
    full disk, say) removes the temporary files and leaves no partial output and no half of a
    file's outputs; a symlink at a path is replaced, never written through."""
    umask = os.umask(0)
    os.umask(umask)
    temporary = []
    try:
        for path, write in writes:
            path = pathlib.Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(
                prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent
            )
            os.close(handle)
            temporary.append((pathlib.Path(name), path))
            write(pathlib.Path(name))
            os.chmod(name, 0o666 & ~umask)  # mkstemp's 0600 -> what a plain open would give
    except BaseException:
        for name, _ in temporary:
            name.unlink(missing_ok=True)
        raise
    for name, path in temporary:
        os.replace(name, path)


def write_image(path: pathlib.Path, x: np.ndarray, meta=None, history=()) -> None:
    """x [H, W] / [H, W, C] / [F, H, W, C] float32 to path by its extension. A FITS output keeps
    the input FITS header (WCS included) with `history` as HISTORY cards; a TIFF output keeps the
    input TIFF's resolution and ImageJ metadata; .npy and 16-bit PNG keep nothing."""
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(path, x.astype(np.float32))
    elif suffix in (".tif", ".tiff"):
        import tifffile

        kwargs = _tiff_metadata(meta)
        if kwargs.get("imagej"):
            kwargs["metadata"] = {**kwargs["metadata"], "Info": "\n".join(history)}
        else:
            kwargs["description"] = "\n".join(history) or None
            # Colour as RGB samples, anything else as gray pages (tifffile asks to say which).
            kwargs["photometric"] = "rgb" if x.ndim >= 3 and x.shape[-1] == 3 else "minisblack"
        tifffile.imwrite(path, x.astype(np.float32), **kwargs)
    elif suffix in (".fits", ".fit"):
        from astropy.io import fits

        fits.PrimaryHDU(x.astype(np.float32), header=_fits_header(meta, list(history))).writeto(
            path, overwrite=True
        )
    elif suffix == ".png":
        from PIL import Image

        if x.ndim == 3 and x.shape[-1] != 1:
            raise ValueError(
                f"{path}: 16-bit PNG output is grayscale only; use .tif for {x.shape[-1]} channels"
            )
        Image.fromarray(
            np.round(np.clip(x.reshape(x.shape[:2]), 0, 1) * 65535).astype(np.uint16)
        ).save(path)
    else:
        raise ValueError(
            f"{path}: unknown output format {suffix!r}; expected one of {OUTPUT_FORMATS}"
        )


def electrons_path(out_path: pathlib.Path) -> pathlib.Path:
    """Where --save-electrons writes s*x+b: the output's name with the suffix _electrons."""
    return out_path.with_name(out_path.stem + "_electrons" + out_path.suffix)


def check_not_input(path: pathlib.Path, outputs) -> None:
    """ValueError before any work when an output is the input file itself (the same path, or
    a link to it): restoring must never destroy the measurement."""
    for output in outputs:
        output = pathlib.Path(output)
        same = output.resolve() == path.resolve() or (
            output.exists() and os.path.samefile(output, path)
        )
        if same:
            raise ValueError(
                f"{output} is the input file {path}: refusing to overwrite the measurement; "
                "choose another --output"
            )


def default_checkpoint(args, channels: int, operator) -> str:
    """--checkpoint, else the shipped model for the data: the colour prior for 3 channels and
    mosaics, the grayscale one otherwise (and per channel for other channel counts)."""
    if args.checkpoint is not None:
        return args.checkpoint
    colour = channels == 3 or operator.channels_in == 3
    return DEFAULT_RGB_CHECKPOINT if colour else DEFAULT_CHECKPOINT


def restore_one(path, out_path, models, args, key, std_path=None, preview_path=None):
    """Restore every frame and channel of one file; returns its report. models(checkpoint):
    the loaded model of a --checkpoint value (cached by the caller)."""

    import jax

    from pdr_jax.restore import GuidanceSettings, Physics, SamplerSettings, TilingSettings, restore

    electrons, mask, meta, noise, operator = read_measurement(path, args)
    checkpoint = default_checkpoint(args, electrons.shape[-1], operator)
    model = models(checkpoint)
    scale, read_noise = noise["scale"], noise["read_noise"]
    if noise["estimate"] is not None or args.scale == "auto":
        estimate = noise["estimate"] or {}
        print(
            f"  {path.name}: scale {scale:.4g} e-, read noise {read_noise:.3g} "
            f"+- {estimate.get('read_noise_std', 0.0):.2g} e-, gain {noise['gain']} "
            f"+- {estimate.get('gain_std', 0.0):.2g} (estimated where 'auto')",
            file=sys.stderr,
        )
    physics = Physics(scale, read_noise, args.background, args.domain, operator)
    physics_warnings = check_physics(path, electrons, mask, physics, args.force)
    guidance = GuidanceSettings(mode=args.guidance, likelihood=args.likelihood, kappa=args.kappa)
    sampler = dataclasses.replace(
        SamplerSettings(), num_steps=args.steps, start=args.start, solver=args.solver
    )
    tiles = TilingSettings(
        tile=args.tile,
        overlap=args.overlap,
        batch=args.batch,
        memory_budget_mb=args.memory_budget_mb,
    )
    frames, height, width_px, channels = electrons.shape
    # A colour prior restores the channels together, a grayscale one each channel on its own; a
    # mosaic's one channel becomes the colour prior's three.
    width = model.img_channels
    measured = operator.channels_out or width  # input channels per restoration
    if channels % measured:
        raise ValueError(
            f"{path}: {channels} channel(s), but the model restores {width} at a time "
            "(--checkpoint: a grayscale model restores any channels one by one)"
        )
    out_channels = channels // measured * width
    x = np.zeros((frames, height, width_px, out_channels), np.float32)
    std = np.zeros_like(x) if std_path else None
    reports = []
    for f in range(frames):
        for group, c in enumerate(range(0, channels, measured)):
            part, out = slice(c, c + measured), slice(group * width, (group + 1) * width)
            result = restore(
                model,
                electrons[f, :, :, part],
                physics=physics,
                mask=mask[f, :, :, part],
                guidance=guidance,
                sampler=sampler,
                tiling_settings=tiles,
                num_samples=args.num_samples,
                key=jax.random.fold_in(key, f * channels + group),
            )
            x[f, :, :, out] = result.image.reshape(height, width_px, width)
            if f == c == 0:
                first_std = None if result.std is None else result.std
            if std is not None:  # num_samples > 1: restore() always returns their std
                std[f, :, :, out] = result.std.reshape(height, width_px, width)
            if args.method == "conditional" and not mask[f, :, :, part].all():
                result.report["warnings"].append(
                    "saturated pixels are not masked by --method conditional"
                )
            reports.append(result.report)
    squeeze = lambda a: (
        (a[0] if frames == 1 else a)[..., 0] if a.shape[-1] == 1 else (a[0] if frames == 1 else a)
    )
    result_image = squeeze(x)
    mosaic = (
        f" --cfa {operator.pattern} --wb {','.join(f'{1 / g:.4g}' for g in operator.gains)}"
        if operator.channels_out
        else ""
    )
    history = [
        f"pdr_jax restore of {path.name}: --method {args.method} --checkpoint {checkpoint}{mosaic}",
        f"--domain {args.domain} --scale {scale:g} --read-noise {read_noise:g} "
        f"--background {args.background:g} --steps {args.steps} --solver {args.solver} --num-samples {args.num_samples}",
        f"chi-square {np.mean([r['chi_square'] for r in reports]):.4f}; values: clean intensity in [0, 1]",
    ]
    # Every output of the file or none (write_together): an image counted as failed leaves nothing.
    writes = [(out_path, lambda tmp: write_image(tmp, result_image, meta, history))]
    if std is not None:
        std_history = [*history, "values: per-pixel posterior std"]
        writes.append((std_path, lambda tmp: write_image(tmp, squeeze(std), meta, std_history)))
    if args.save_electrons:
        electrons_image = scale * result_image + args.background
        writes.append((electrons_path(out_path), lambda tmp: write_image(tmp, electrons_image)))
    if preview_path is not None:
        preview_std = None if first_std is None else first_std.reshape(height, width_px, width)
        writes.append(
            (
                preview_path,
                lambda tmp: write_preview(
                    tmp,
                    path,
                    electrons[0, :, :, :measured],
                    x[0, :, :, :width],
                    preview_std,
                    mask[0, :, :, :measured],
                    physics,
                    reports[0]["chi_square"],
                ),
            )
        )
    write_together(writes)
    warnings = sorted({w for r in reports for w in r["warnings"]})
    warnings += physics_warnings + integer_warning(meta.dtype, args.units)
    chi_square = float(np.mean([r["chi_square"] for r in reports]))
    if not CHI_SQUARE_RANGE[0] <= chi_square <= CHI_SQUARE_RANGE[1]:
        warnings.append(
            f"chi-square {chi_square:.4g} is far from 1: the noise model (--units, --scale, "
            "--read-noise, --background, --gain) does not describe these data"
        )
    s_lo, s_hi = 10 ** np.array([-1.0, 4.0])
    if not s_lo <= scale <= s_hi:
        warnings.append(
            f"scale {scale:g} outside the conditioning range [{s_lo:g}, {s_hi:g}]: clipped"
        )
    if noise["estimate"] is not None:
        warnings += [f"noise estimate: {w}" for w in noise["estimate"]["warnings"]]
    if noise["nonfinite"]:
        warnings.append(
            f"{noise['nonfinite']} NaN/Inf pixel(s) masked: no likelihood there, filled by the "
            "prior (--nonfinite refuse fails such files)"
        )
    mean = lambda key: float(np.mean([r[key] for r in reports]))
    return {
        "input": str(path),
        "output": str(out_path),
        "checkpoint": checkpoint,
        "operator": reports[0]["physics"]["operator"],
        "shape": [int(v) for v in electrons.shape],
        "chi_square": mean("chi_square"),
        # Per channel of the file (a grayscale model's per-channel restorations in order), or
        # per Bayer colour R, G, B of a mosaic.
        "chi_square_per_channel": [c for r in reports for c in r["chi_square_per_channel"]],
        "whiteness": mean("whiteness"),
        "spectral_flatness": mean("spectral_flatness"),
        "mean_photons": mean("mean_photons"),
        "saturated_fraction": mean("saturated_fraction"),
        "posterior_std": mean("posterior_std") if std is not None else None,
        "uncertainty": str(std_path) if std is not None else None,
        "tile": reports[0]["tile"],
        "num_tiles": reports[0]["num_tiles"],
        "plan": reports[0]["plan"],
        "kappa": reports[0].get("kappa"),
        "settings": reports[0].get("settings"),
        "network_calls": reports[0].get("network_calls"),
        "refined": reports[0].get("refined"),
        "std_from": reports[0].get("std_from"),
        "noise": {
            "scale": scale,
            "read_noise": read_noise,
            "gain": noise["gain"],
            "estimate": noise["estimate"],
        },
        "nonfinite_pixels": noise["nonfinite"],
        "seconds": float(sum(r["timings"]["total_s"] for r in reports)),
        "warnings": warnings,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    from pdr_jax.conditional import ConditionalModel
    from pdr_jax.model_io import load_model, read_network_json
    from pdr_jax.restore import Prior

    files = expand_inputs(args.inputs)
    if not files:
        raise SystemExit(f"no supported input files in {args.inputs}")
    print(f"pdr-restore: {len(files)} input(s) -> {args.output}", file=sys.stderr)
    from pdr_jax.io.readers import read_image

    outputs = output_paths(files, args.output)
    std_outputs = output_paths(files, args.uncertainty) if args.uncertainty else [None] * len(files)
    previews = (
        [p.with_suffix(".png") for p in output_paths(files, args.preview)]
        if args.preview
        else [None] * len(files)
    )
    # Every output is checked before anything is computed: a refusal costs nothing.
    for flag, paths in (
        ("--output", outputs),
        ("--uncertainty", std_outputs),
        ("--preview", previews),
        ("--report", [args.report]),
    ):
        for path in paths:
            if path is not None:
                check_writable(pathlib.Path(path), flag)
    failed, todo = [], []
    for path, out_path, std_path, preview in zip(
        files, outputs, std_outputs, previews, strict=True
    ):
        outputs_of_file = [o for o in (out_path, std_path) if o is not None]
        try:
            # Only a PNG output needs the channel count before restoring: decode then (a
            # PNG/JPEG/RAW decode is what restoring the file costs first; TIFF/FITS/npy are lazy).
            extra = [electrons_path(out_path)] if args.save_electrons else []
            check_not_input(path, [*outputs_of_file, *extra, *([preview] if preview else [])])
            png = any(o.suffix.lower() == ".png" for o in outputs_of_file)
            channels = read_image(path)[0].shape[-1] if png else None
            for output in outputs_of_file:
                check_output_format(output, channels)
        except Exception as err:  # noqa: BLE001 - unreadable input or unsuitable output: logged, counted, skipped
            failed.append({"input": str(path), "error": f"{type(err).__name__}: {err}"})
            print(f"  FAILED {path}: {type(err).__name__}: {err}", file=sys.stderr)
            continue
        todo.append((path, out_path, std_path, preview))
    loaded = {}

    def models(checkpoint: str):
        """The model of a --checkpoint value, loaded once."""
        if checkpoint not in loaded:
            kind = read_network_json(checkpoint).get("kind", "prior")
            if kind != args.method:
                raise SystemExit(
                    f"--checkpoint {checkpoint} is a {kind} model; use --method {kind}"
                )
            net, variables = load_model(checkpoint)
            conditional = args.method == "conditional"
            loaded[checkpoint] = (ConditionalModel if conditional else Prior)(net, variables)
            tqdm.tqdm.write(
                f"model {checkpoint}: {net.model.img_resolution}px, {net.model.in_channels} "
                f"channel(s), label_dim {net.model.label_dim}",
                file=sys.stderr,
            )
        return loaded[checkpoint]

    if args.checkpoint is not None:  # a wrong --checkpoint is refused before any restoring
        models(args.checkpoint)
    print(f"restoring {len(todo)} input(s)", file=sys.stderr)
    key = jax.random.key(args.seed)
    reports = []
    start = time.perf_counter()
    progress = tqdm.tqdm(todo, desc="restore", unit="file", file=sys.stderr, disable=len(todo) < 2)
    for i, (path, out_path, std_path, preview) in enumerate(progress):
        progress.set_postfix_str(path.name)
        try:
            rep = restore_one(
                path, out_path, models, args, jax.random.fold_in(key, i), std_path, preview
            )
        except Exception as err:  # noqa: BLE001 - a broken input is logged, counted and skipped
            failed.append({"input": str(path), "error": f"{type(err).__name__}: {err}"})
            tqdm.tqdm.write(f"  FAILED {path}: {type(err).__name__}: {err}", file=sys.stderr)
            if os.environ.get("PDR_JAX_DEBUG"):
                traceback.print_exc()
            continue
        reports.append(rep)
        written = "".join(
            f"\n  {what} -> {where}"
            for what, where in (("std", rep["uncertainty"]), ("preview", preview))
            if where is not None
        )
        tqdm.tqdm.write(
            f"  {path.name} -> {out_path}  chi2 {rep['chi_square']:.3f}, {rep['num_tiles']} tile(s) "
            f"of {rep['tile']}px, {rep['seconds']:.1f} s{written}"
            + "".join(f"\n  warning: {w}" for w in rep["warnings"]),
            file=sys.stderr,
        )
    summary = {
        "restored": len(reports),
        "failed": len(failed),
        "seconds": time.perf_counter() - start,
    }
    print(
        f"restored {len(reports)}, failed {len(failed)} in {summary['seconds']:.1f} s",
        file=sys.stderr,
    )
    if args.report:
        settings = {k: v for k, v in vars(args).items() if k not in ("inputs", "report")}
        content = {"summary": summary, "settings": settings, "images": reports, "failures": failed}
        try:
            write_together(
                [(args.report, lambda tmp: tmp.write_text(json.dumps(content, indent=2)))]
            )
        except OSError as err:
            print(
                f"--report {args.report}: not written ({type(err).__name__}: {err})",
                file=sys.stderr,
            )
            return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
