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
import os
import pathlib
import sys
import time
import traceback

import numpy as np
import tqdm

from pdr_jax import io
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


# read_measurement's keyword arguments, each the flag of the same name.
MEASUREMENT_FLAGS = ("scale", "read_noise", "background", "units", "gain", "black_level")
MEASUREMENT_FLAGS += ("white_level", "cfa", "wb", "nonfinite", "linearise")


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
        solver_name,
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


def output_paths(files, output: str) -> list[pathlib.Path]:
    out = pathlib.Path(output)
    if len(files) == 1 and out.suffix.lower() in io.OUTPUT_FORMATS:
        return [out]
    if out.suffix.lower() in io.OUTPUT_FORMATS:
        raise SystemExit(
            f"--output {out} is a file but there are {len(files)} inputs: give a folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    return [out / (f.stem + ".tif") for f in files]


def default_checkpoint(args, channels: int, operator) -> str:
    """--checkpoint, else the shipped model for the data: the colour prior for 3 channels and
    mosaics, the grayscale one otherwise (and per channel for other channel counts)."""
    if args.checkpoint is not None:
        return args.checkpoint
    colour = channels == 3 or operator.channels_in == 3
    return DEFAULT_RGB_CHECKPOINT if colour else DEFAULT_CHECKPOINT


def restore_one(path, out_path, models, args, key, std_path=None, preview_path=None):
    """Restore every frame and channel of one file (pdr_jax.io) and write its outputs; returns
    its report. models(checkpoint): the loaded model of a --checkpoint value (cached by the
    caller)."""
    from pdr_jax.restore import GuidanceSettings, SamplerSettings, TilingSettings

    m = io.read_measurement(path, **{name: getattr(args, name) for name in MEASUREMENT_FLAGS})
    checkpoint = default_checkpoint(args, m.electrons.shape[-1], m.operator)
    model = models(checkpoint)
    if m.estimate is not None or args.scale == "auto":
        estimate = m.estimate or {}
        print(
            f"  {path.name}: scale {m.scale:.4g} e-, read noise {m.read_noise:.3g} "
            f"+- {estimate.get('read_noise_std', 0.0):.2g} e-, gain {m.gain} "
            f"+- {estimate.get('gain_std', 0.0):.2g} (estimated where 'auto')",
            file=sys.stderr,
        )
    physics = m.physics(args.domain)
    physics_warnings = io.check_measurement(m, physics, args.force)
    restoration = io.restore_measurement(
        model,
        m,
        physics,
        key=key,
        guidance=GuidanceSettings(mode=args.guidance, likelihood=args.likelihood, kappa=args.kappa),
        sampler=dataclasses.replace(
            SamplerSettings(), num_steps=args.steps, start=args.start, solver=args.solver
        ),
        tiling_settings=TilingSettings(
            tile=args.tile,
            overlap=args.overlap,
            batch=args.batch,
            memory_budget_mb=args.memory_budget_mb,
        ),
        num_samples=args.num_samples,
        keep_std=std_path is not None,
    )
    operator, reports = m.operator, restoration.reports
    mosaic = (
        f" --cfa {operator.pattern} --wb {','.join(f'{1 / g:.4g}' for g in operator.gains)}"
        if operator.channels_out
        else ""
    )
    history = [
        f"pdr_jax restore of {path.name}: --method {args.method} --checkpoint {checkpoint}{mosaic}",
        f"--domain {args.domain} --scale {m.scale:g} --read-noise {m.read_noise:g} "
        f"--background {args.background:g} --steps {args.steps} --solver {args.solver} --num-samples {args.num_samples}",
        f"chi-square {np.mean([r['chi_square'] for r in reports]):.4f}; values: clean intensity in [0, 1]",
    ]
    # Every output of the file or none: an image counted as failed leaves nothing.
    io.write_restoration(
        out_path,
        restoration,
        m,
        physics,
        history=history,
        std_path=std_path,
        electrons_path=io.writers.electrons_path(out_path) if args.save_electrons else None,
        preview_path=preview_path,
    )
    return io.restoration_report(
        m,
        restoration,
        checkpoint=checkpoint,
        output=out_path,
        uncertainty=std_path,
        physics_warnings=physics_warnings,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    from pdr_jax.conditional import ConditionalModel
    from pdr_jax.model_io import load_model, read_network_json
    from pdr_jax.restore import Prior

    files = io.readers.expand_inputs(args.inputs)
    if not files:
        raise SystemExit(f"no supported input files in {args.inputs}")
    print(f"pdr-restore: {len(files)} input(s) -> {args.output}", file=sys.stderr)
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
            try:
                if path is not None:
                    io.writers.check_writable(path)
            except OSError as e:
                raise SystemExit(
                    f"{flag} {path}: cannot write there ({type(e).__name__}: {e}); nothing was "
                    "restored"
                ) from None
    failed, todo = [], []
    for path, out_path, std_path, preview in zip(
        files, outputs, std_outputs, previews, strict=True
    ):
        outputs_of_file = [o for o in (out_path, std_path) if o is not None]
        try:
            # Only a PNG output needs the channel count before restoring: it decodes the file
            # (a PNG/JPEG/RAW decode is what restoring the file costs first; TIFF/FITS/npy are lazy).
            extra = [io.writers.electrons_path(out_path)] if args.save_electrons else []
            figures = [preview] if preview else []
            io.writers.check_outputs(path, [*outputs_of_file, *extra], figures)
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
            io.write_report(args.report, content)
        except OSError as err:
            print(
                f"--report {args.report}: not written ({type(err).__name__}: {err})",
                file=sys.stderr,
            )
            return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
