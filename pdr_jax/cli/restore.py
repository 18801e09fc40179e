"""Restore low-light measurements (Poisson-Gaussian noise) with a pdr_jax diffusion prior.

INPUT: files (.npy, .tif/.tiff, .fits/.fit, .png/.jpg, camera RAW) or folders of them. The data
are electrons (--units electrons) or raw ADU converted with --gain/--black-level/--white-level
(saturated pixels are masked out of the likelihood). Before anything is restored each file is
checked against the stated physics (pdr_jax.physics.noise_estimation.check_physics: a mean far
above --scale, less noise than shot noise and --read-noise allow); a file that contradicts it is
refused with the fix named, and --force restores it anyway.

Colour: a 3-channel input (RGB TIFF/PNG/JPEG, [H, W, 3] .npy, a FITS cube) is restored with its
channels together: by default the grayscale prior denoises its luminance and two chrominances
(--colour opponent, as colour BM3D does), averaged over 8 flips and transposes of each tile
(--self-ensemble); --colour joint uses the colour prior (pdr-rgb-default) instead, --colour
channels the grayscale prior on each channel alone. 8-bit images are sRGB-encoded: they are restored as the
intensities they hold unless --linearise srgb decodes them to linear light first (then the
output is linear). A Bayer mosaic (a camera RAW file: .dng/.nef/.cr2/.arw, its CFA pattern,
black levels and white balance read from it; or a one-channel file with --cfa RGGB|BGGR|GRBG|GBRG
and --wb R,G,B) is restored and demosaicked in one model, y ~ Poisson(s g[c] x[c] + b) +
N(0, r^2) per pixel with c its CFA colour and g = 1 / wb: the output is the white-balanced
linear camera RGB x, [H, W, 3]. Its denoiser takes the luminance from the grayscale prior and
the chrominances from the colour prior (--colour luma; --colour joint: the colour prior alone);
where the mosaic is noisy, its start also denoises the Bayer planes with the grayscale prior,
and where it is not, the one-call estimate is denoised once more at a fifth of its noise level
and its luminance is re-estimated from the measured pixels by the grayscale prior
(pdr_jax.settings.MOSAIC_SAMPLER). With --psf, an astronomy image's start is sharpened by a few
Richardson-Lucy iterations, more the less noise there is (SamplerSettings.deblur_iterations).

OUT: a file for one input, a folder for several; the format follows its extension (.npy, .tif,
.fits, .png as 16 bit): the restored clean intensity x in [0, 1] float32; --save-electrons also
writes s*x+b. A FITS output keeps the input FITS header (WCS, exposure...) and adds HISTORY
cards saying how it was restored; a TIFF output keeps the input TIFF's resolution and ImageJ
metadata and describes the restoration; .npy and 16-bit PNG outputs keep no metadata.

Every image is restored at any size through overlapping tiles fused at every sampler step.
--method prior (default): the diffusion prior with likelihood guidance through
pdr_jax.restore.restore, whose tuned defaults the flags start from (the one-call
variance-stabilised estimate, re-noised and refined by EDM Euler steps where the noise is high
enough, elsewhere the estimate averaged over 8 flips and transposes, --estimate-ensemble;
--steps 0 --estimate-ensemble 1: the one-call estimate alone, the fast setting); --num-samples K averages K
samples and --uncertainty writes their per-pixel std. --method conditional: a model conditioned
on the measurement (pdr_jax/conditional.py, default conditional-gray-default) through the same
call with pdr_jax.restore.CONDITIONAL_SETTINGS (20 EDM Euler steps from noise, no guidance),
the measurement's tiles conditioning each tile (saturated pixels are not masked: the model has
no likelihood term). --checkpoint takes a model directory (pdr-convert of an EDM pickle, a
training workdir's model/) or a shipped model's name.

Exit status 1 if any input failed (it is logged and skipped; the others are still written).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import time
import traceback

import numpy as np
import tqdm

from pdr_jax import io
from pdr_jax.cli import restore_args
from pdr_jax.cli.restore_args import MEASUREMENT_FLAGS
from pdr_jax.presets import (  # the shipped models, by name (pdr_jax.model_io.resolve_model)
    DEFAULT_CHECKPOINT,
    DEFAULT_RGB_CHECKPOINT,
)


def parse_args(argv=None):
    """pdr-restore's flags (pdr_jax.cli.restore_args), this docstring the --help text."""
    return restore_args.parse_args(argv, __doc__)


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


def colour_mode(args, channels: int, operator, model_channels: int | None = None) -> str | None:
    """How --colour restores this input (pdr_jax.restore.COLOUR_MODES), or None for a
    grayscale input. auto: luma for a mosaic, joint with a colour --checkpoint, else opponent."""
    mosaic = operator.channels_in == 3
    if channels != 3 and not mosaic:
        return None
    if args.colour != "auto":
        return args.colour
    if mosaic:
        return "luma"
    return "joint" if model_channels == 3 else "opponent"


def default_checkpoint(args, channels: int, operator) -> str:
    """--checkpoint, else the shipped model for the data: the colour prior for mosaics,
    --colour luma and joint, the grayscale one otherwise."""
    if args.checkpoint is not None:
        return args.checkpoint
    colour = colour_mode(args, channels, operator) in ("luma", "joint")
    return DEFAULT_RGB_CHECKPOINT if colour else DEFAULT_CHECKPOINT


def restore_one(path, out_path, models, args, key, std_path=None, preview_path=None):
    """Restore every frame and channel of one file (pdr_jax.io) and write its outputs; returns
    its report. models(checkpoint): the loaded model of a --checkpoint value (cached by the
    caller)."""
    from pdr_jax.restore import (
        DECONVOLUTION_GUIDANCE,
        GuidanceSettings,
        SamplerSettings,
        TilingSettings,
        colour_denoiser,
    )

    m = io.read_measurement(path, **{name: getattr(args, name) for name in MEASUREMENT_FLAGS})
    channels = m.electrons.shape[-1]
    checkpoint = default_checkpoint(args, channels, m.operator)
    model = models(checkpoint)
    mode, sampler = None, SamplerSettings()  # a conditional model restores what it learnt
    if args.method == "prior":
        mode = colour_mode(args, channels, m.operator, model.img_channels)
        gray = models(DEFAULT_CHECKPOINT) if mode == "luma" else None
        model, sampler = colour_denoiser(model, mode, gray=gray, self_ensemble=args.self_ensemble)
    if m.estimate is not None or args.scale == "auto":
        estimate = m.estimate or {}
        print(
            f"  {path.name}: scale {m.scale:.4g} e-, read noise {m.read_noise:.3g} "
            f"+- {estimate.get('read_noise_std', 0.0):.2g} e-, gain {m.gain} "
            f"+- {estimate.get('gain_std', 0.0):.2g} (estimated where 'auto')",
            file=sys.stderr,
        )
    if m.psf_fit is not None:
        fit = m.psf_fit
        print(
            f"  {path.name}: --psf auto: {fit['spec']} (FWHM {fit['fwhm']:.3g} px, "
            f"beta {fit['beta']:.3g}; interquartile ranges {fit['fwhm_iqr']:.2g} px, "
            f"{fit['beta_iqr']:.2g}) from {fit['num_stars']} stars",
            file=sys.stderr,
        )
    physics = m.physics(args.domain)
    sampler = dataclasses.replace(
        sampler,
        num_steps=args.steps,
        start=args.start,
        solver=args.solver,
        estimate_ensemble=args.estimate_ensemble or sampler.estimate_ensemble,
        conserve_flux=args.conserve_flux,
    )
    physics_warnings = io.check_measurement(m, physics, args.force)
    restoration = io.restore_measurement(
        model,
        m,
        physics,
        key=key,
        guidance=GuidanceSettings(
            mode=args.guidance or (DECONVOLUTION_GUIDANCE if args.psf else GuidanceSettings()).mode,
            likelihood=args.likelihood,
            kappa=args.kappa,
        ),
        sampler=sampler,
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
    mosaic = getattr(operator, "outer", operator)  # a blurred RAW frame's Chain: its mosaic
    flags = (
        f" --cfa {mosaic.pattern} --wb {','.join(f'{1 / g:.4g}' for g in mosaic.gains)}"
        if mosaic.channels_out
        else ""
    ) + (f" --psf {m.psf_fit['spec'] if m.psf_fit else args.psf}" if args.psf else "")
    history = [
        f"pdr_jax restore of {path.name}: --method {args.method} --checkpoint {checkpoint}{flags}"
        + (f" --colour {mode}" if mode else "")
        + (f" --self-ensemble {getattr(model, 'size', 1)}" if mode else ""),
        f"--domain {args.domain} --scale {m.scale:g} --read-noise {m.read_noise:g} "
        f"--background {args.background:g} --steps {args.steps} --solver {args.solver} --num-samples {args.num_samples} "
        f"--estimate-ensemble {sampler.estimate_ensemble}"
        + (f" --conserve-flux {args.conserve_flux}" if args.conserve_flux else ""),
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
