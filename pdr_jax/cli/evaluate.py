"""Benchmark restoration methods on simulated Poisson-Gaussian measurements of clean images.

    pdr-evaluate --out eval/default
    pdr-evaluate --clean embedded --scales 1,10,100 --read-noise 2 \\
        --methods pdr,conditional,gat-bm3d,nlm,noisy --checkpoint pdr-gray-default \\
        --ablation likelihood=wls,exact --ablation guidance=dps --out eval/ablations
    pdr-evaluate --methods pdr --resolutions 32,64,96,128 --max-memory-mb 2000 \\
        --min-psnr 25 --out eval/resolutions
    pdr-evaluate --out eval/today --compare-to eval/yesterday/summary.csv
    pdr-evaluate --clean corpus:val --methods pdr,gat-bm3d --out eval/val   # tuning
    pdr-evaluate --clean corpus:test --gaussian-denoising --out eval/test  # report once
    pdr-evaluate --clean corpus:val --methods pdr --sweep steps --out eval/steps
    pdr-evaluate --clean corpus:test --mode rgb --scales 10,50,250 \
        --methods pdr,gat-cbm3d,gat-bm3d,pdr-gray --out eval/rgb          # colour photographs
    pdr-evaluate --clean corpus:test --mode raw --scales 10,50,250 \
        --methods pdr,gat-bm3d-menon,noisy-raw --out eval/raw             # RGGB mosaics

Clean images: the embedded scikit-image set's held-out columns (the right-most 25% of every
picture, which training never sees), --clean corpus:val or corpus:test (that split of
tools/prepare_corpus.py's corpus, all three domains; val adds the embedded held-out columns), or
--clean PATH (files/folder/glob of --domain images, used whole). Each crop is measured at every
--scales value s (electrons at intensity 1) and every --read-noise value r, with background
--background plus --sky-fraction x s for astronomy, y = Poisson(s x + b) + N(0, r^2), from
--seed: the benchmark is the same on every run. The corpus protocol's defaults: s = 2, 10, 50,
250; r = 0.5, 3; astronomy sky 0.05 s; 128 px crops (else s = 1, 10, 100; r = 2; no sky).
Tune on corpus:val only; corpus:test is for reporting, once. --gaussian-denoising adds the
prior diagnostic (pdr_jax.evaluation.diagnostic): the prior's one-call denoiser against BM3D
at Gaussian sigma 0.02-0.2 on the same crops. Methods: pdr_jax.evaluation.methods.METHODS;
one that cannot run (no model, or "conditional" before issue 10) is skipped with a message.
--ablation FIELD=V1,V2 adds "NAME[FIELD=V]" variants, one field varied at a time, of each
diffusion method named (pdr, pdr-lc, pdr-opp, pdr-gray; of pdr where none is).

--mode rgb: the photographs in colour (their stored sRGB-encoded values as intensities), restored
by the colour prior (pdr-rgb-default) against colour BM3D (gat-cbm3d), BM3D per channel and the
grayscale prior per channel (pdr-gray). --mode raw: the colour crops decoded to linear light and
measured through an RGGB mosaic (unit gains), restored and demosaicked by pdr against GAT+BM3D
per Bayer plane + Menon 2007 demosaicking (gat-bm3d-menon); chi-square is of the mosaic.

Writes OUT/results.csv (per image), summary.csv (per method/domain/scale), table.md,
psnr_vs_photons.png, examples_s{s}.png, settings.json, with --resolutions
resolutions.csv, resolution_rows.csv and a resolution section in table.md, and with --sweep
steps steps_sweep.csv, steps_sweep_rows.csv, steps_sweep.png and a section in table.md. With
--compare-to it writes regression.md and exits 1 when a method/domain/scale cell's mean PSNR
dropped by more than --regression-margin (default 0.05, i.e. 5% of the earlier PSNR).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import warnings

import numpy as np

from pdr_jax import baselines
from pdr_jax.cli import finish_parser
from pdr_jax.evaluation import benchmark, methods, report, resolution
from pdr_jax.restore import (
    DECONVOLUTION_GUIDANCE,
    GuidanceSettings,
    SamplerSettings,
    parse_kappa,
)
from pdr_jax.settings import ENSEMBLE_SIZES


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    data = parser.add_argument_group("benchmark")
    data.add_argument("--clean", default=benchmark.EMBEDDED, help="'embedded' or a path")
    data.add_argument("--domain", default="photography", help="domain of --clean PATH images")
    data.add_argument("--crop", type=int, default=128, help="crop size (default 128)")
    data.add_argument("--num-images", type=int, default=6, help="crops per domain (default 6)")
    data.add_argument(
        "--scales", type=_floats, help="photon levels (default 1,10,100; corpus: 2,10,50,250)"
    )
    data.add_argument(
        "--read-noise", type=_floats, help="read noise(s), electrons (default 2; corpus: 0.5,3)"
    )
    data.add_argument("--background", type=float, default=0.0, help="electrons (default 0)")
    data.add_argument(
        "--sky-fraction", type=float, help="astronomy sky b += f * s (default 0; corpus: 0.05)"
    )
    data.add_argument(
        "--gaussian-denoising",
        action="store_true",
        help="also the prior's one-call denoiser vs BM3D at Gaussian sigma 0.02-0.2",
    )
    data.add_argument(
        "--mode",
        choices=benchmark.MODES,
        default="gray",
        help="gray (default); rgb: colour photographs; raw: their RGGB mosaics",
    )
    data.add_argument(
        "--psf",
        default=None,
        metavar="SPEC",
        help="blur the clean crops before the noise (mode gray): a PSF file or gaussian:FWHM_PX, "
        "moffat:FWHM_PX,BETA, airy:WAVELENGTH_NM,NA,PIXEL_NM; pdr then deconvolves, and the "
        "methods rl, rl-oracle, rl-tv, gat-bm3d-rl run",
    )
    data.add_argument(
        "--domains",
        default=None,
        help="comma-separated: only these domains' crops (e.g. microscopy,astronomy)",
    )
    data.add_argument("--seed", type=int, default=0)
    run = parser.add_argument_group("methods")
    run.add_argument(
        "--methods",
        default="pdr,conditional,gat-bm3d,nlm,noisy",
        help=f"comma-separated, from {sorted(methods.METHODS)}",
    )
    run.add_argument(
        "--checkpoint", help=f"the prior for pdr (default {methods.DEFAULT_CHECKPOINT})"
    )
    run.add_argument(
        "--conditional-checkpoint",
        help=f"the model for conditional (default {methods.DEFAULT_CONDITIONAL})",
    )
    sampler, guidance = SamplerSettings(), GuidanceSettings()
    run.add_argument(
        "--steps",
        type=int,
        help=f"pdr sampler steps after the start (default: the method's, {sampler.num_steps}; 0: "
        "the one-call estimate)",
    )
    run.add_argument(
        "--start",
        choices=("vst", "noise"),
        help=f"pdr start (default: the method's, {sampler.start}; pdr_jax.restore.SamplerSettings)",
    )
    run.add_argument(
        "--guidance",
        default=None,
        help=f"x0, dps or prox (pdr_jax.physics.guidance); default {guidance.mode}, with --psf "
        "prox (pdr_jax.restore.DECONVOLUTION_GUIDANCE)",
    )
    run.add_argument("--likelihood", default=guidance.likelihood, help="wls, gaussian or exact")
    run.add_argument(
        "--kappa",
        type=parse_kappa,
        default=guidance.kappa,
        help=f"guidance strength, or auto (from the mean photon count); default {guidance.kappa}",
    )
    run.add_argument("--no-conditioning", action="store_true", help="zero conditioning vector")
    run.add_argument(
        "--self-ensemble",
        type=int,
        choices=ENSEMBLE_SIZES,
        default=None,
        help="average the pdr methods' denoiser over this many flips and transposes (default: "
        "8 for pdr-opp, else 1)",
    )
    run.add_argument(
        "--ablation",
        action="append",
        default=[],
        metavar="FIELD=V1,V2",
        help="variants of each diffusion method named (of pdr where none is); FIELD in "
        f"{sorted(methods.ABLATION_FIELDS)}",
    )
    run.add_argument("--batch", type=int, default=8, help="crops per pdr call (default 8)")
    res = parser.add_argument_group("processing resolution")
    res.add_argument("--resolutions", type=_floats, default=[], help="e.g. 32,64,96,128")
    res.add_argument("--tile-overlap", type=int, default=16)
    res.add_argument("--tile-batch", type=int, default=8, help="tiles per network call")
    res.add_argument("--max-memory-mb", type=float)
    res.add_argument("--max-seconds", type=float, help="per image")
    res.add_argument("--min-psnr", type=float)
    res.add_argument(
        "--sweep",
        choices=("steps",),
        action="append",
        default=[],
        help="steps: PSNR and chi-square against network calls over solvers and step "
        "counts (pdr_jax.evaluation.steps) where the sampler runs",
    )
    reg = parser.add_argument_group("regression")
    reg.add_argument("--compare-to", help="an earlier results.csv or summary.csv")
    reg.add_argument("--regression-margin", type=float, default=report.DEFAULT_MARGIN)
    parser.add_argument("--out", required=True, help="output directory")
    finish_parser(
        parser,
        "pdr-evaluate --out eval/default",
        "pdr-evaluate --clean corpus:val --methods pdr,gat-bm3d --out eval/val",
    )
    args = parser.parse_args(argv)
    corpus_run = args.clean.startswith(benchmark.CORPUS + ":")
    if args.scales is None:
        args.scales = list(benchmark.CORPUS_SCALES) if corpus_run else [1.0, 10.0, 100.0]
    if args.read_noise is None:
        args.read_noise = list(benchmark.CORPUS_READ_NOISES) if corpus_run else [2.0]
    if args.sky_fraction is None:
        args.sky_fraction = benchmark.CORPUS_SKY_FRACTION["astronomy"] if corpus_run else 0.0
    return args


def _operator(args):
    """The cases' forward operator: the RGGB mosaic (mode raw), the --psf blur, or none."""
    if args.psf is not None:
        if args.mode != "gray":
            raise SystemExit("--psf blurs gray cases: use --mode gray")
        from pdr_jax.io import read_psf

        return read_psf(args.psf)
    return benchmark.RAW_MOSAIC if args.mode == "raw" else methods.IDENTITY


def _examples(cases, run) -> dict:
    """{scale: {domain: {"clean", "noisy", method...: image}}} from each group's first case."""
    panels = {}
    for case in cases:
        row = panels.setdefault(case.s, {}).setdefault(case.image.domain, {})
        if row:
            continue
        row["clean"] = case.image.clean
        noisy = baselines.noisy_estimate(case.y, case.s, case.r, case.b)
        row["noisy"] = np.clip(case.operator.fill(noisy) / case.operator.channel_gains, 0, 1)
        for (method, domain, scale), image in run.examples.items():
            if domain == case.image.domain and scale == case.s:
                row[method] = image
    return panels


def _load_prior(options: methods.MethodOptions, what: str):
    """The pdr prior (pdr_jax.restore.Prior), or None after a SKIPPED line naming `what` and why."""
    try:
        return methods.load_prior(options)
    except methods.MethodUnavailable as e:
        print(f"SKIPPED {what}: {e}")
        return None


def _run_resolutions(args, cases, options: methods.MethodOptions, out: pathlib.Path) -> None:
    """The pdr sweep over --resolutions: resolutions.csv, resolution_rows.csv, table.md."""
    prior = _load_prior(options, "resolutions")
    if prior is None:
        return
    summary, rows = resolution.evaluate_resolutions(
        cases,
        prior,
        options.pdr,
        [int(t) for t in args.resolutions],
        seed=args.seed,
        batch=args.batch,
    )
    choice = resolution.recommend_resolution(
        summary,
        max_memory_mb=args.max_memory_mb,
        max_seconds=args.max_seconds,
        min_psnr=args.min_psnr,
    )
    report.write_csv(summary, out / "resolutions.csv", resolution.RESOLUTION_FIELDS)
    report.write_csv(rows, out / "resolution_rows.csv", report.ROW_FIELDS)
    with open(out / "table.md", "a") as f:
        f.write("\n" + resolution.markdown(summary, choice))
    print(f"recommended resolution: {choice[1]}")


def _run_steps_sweep(args, cases, options: methods.MethodOptions, out: pathlib.Path) -> None:
    """steps_sweep.csv, steps_sweep_rows.csv, steps_sweep.png and a section of table.md."""
    from pdr_jax.evaluation import steps

    prior = _load_prior(options, "steps sweep")
    if prior is None:
        return
    summary, rows = steps.evaluate_steps(
        cases, prior, options.pdr, seed=args.seed, batch=args.batch
    )
    choice = steps.recommend(summary)
    report.write_csv(summary, out / "steps_sweep.csv", steps.FIELDS)
    report.write_csv(rows, out / "steps_sweep_rows.csv", report.ROW_FIELDS)
    steps.plot(summary, out / "steps_sweep.png")
    with open(out / "table.md", "a") as f:
        f.write("\n" + steps.markdown(summary, choice))
    print(
        f"steps sweep: cheapest within {steps.DEFAULT_MARGIN_DB:g} dB of the best: "
        f"{choice['solver']} {choice['steps']} ({choice['network_calls']} calls; paired gap "
        f"{choice['psnr_vs_best']:+.2f} +- {choice['psnr_vs_best_se']:.2f} dB"
        f"{'' if steps.resolved(choice) else ', not resolved by these images'})"
    )


def _run_gaussian_denoising(
    args, images, options: methods.MethodOptions, out: pathlib.Path
) -> None:
    """gaussian_denoising.csv and a section of table.md: the prior's D vs BM3D at sigma."""
    from pdr_jax.evaluation import diagnostic

    prior = _load_prior(options, "gaussian denoising")
    if prior is None:
        return
    rows = diagnostic.gaussian_denoising(images, prior.net, prior.variables, seed=args.seed)
    report.write_csv(rows, out / "gaussian_denoising.csv", diagnostic.FIELDS)
    title = f"Prior diagnostic on {args.clean} crops of {args.crop} px: PSNR (dB) at Gaussian sigma"
    with open(out / "table.md", "a") as f:
        f.write("\n" + diagnostic.markdown(rows, title=title))


def _check_regression(args, summary, out: pathlib.Path) -> int:
    """regression.md against --compare-to; 1 when a cell dropped by more than the margin."""
    failures, notes = report.compare_to(
        summary, report.read_csv(args.compare_to), args.regression_margin
    )
    lines = ["# Regression check", "", f"against {args.compare_to}", ""]
    lines += [f"- FAIL {f}" for f in failures] + [f"- note {n}" for n in notes]
    (out / "regression.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if failures:
        print(
            f"REGRESSION: {len(failures)} cell(s) dropped by more than "
            f"{args.regression_margin:.0%} of their PSNR"
        )
        return 1
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    defaults = methods.PdrSettings()
    settings = methods.PdrSettings(
        guidance=dataclasses.replace(
            defaults.guidance,
            mode=args.guidance or (DECONVOLUTION_GUIDANCE if args.psf else defaults.guidance).mode,
            likelihood=args.likelihood,
            kappa=args.kappa,
        ),
        sampler=tuple(
            (name, value)
            for name, value in (("num_steps", args.steps), ("start", args.start))
            if value is not None
        ),
        conditioning=not args.no_conditioning,
        self_ensemble=args.self_ensemble,
        tiling=methods.TilingSettings(overlap=args.tile_overlap, batch=args.tile_batch),
    )
    ablations = [pair for text in args.ablation for pair in methods.parse_ablation(text)]
    options = methods.MethodOptions(
        checkpoint=args.checkpoint,
        conditional_checkpoint=args.conditional_checkpoint,
        pdr=settings,
        mode=args.mode,
        psf=args.psf,
    )
    names = [name.strip() for name in args.methods.split(",") if name.strip()]

    images = benchmark.load_clean_images(
        args.clean, crop=args.crop, per_domain=args.num_images, domain=args.domain, mode=args.mode
    )
    if args.domains:
        wanted = {d.strip() for d in args.domains.split(",")}
        images = [image for image in images if image.domain in wanted]
        if not images:
            raise SystemExit(f"--domains {args.domains}: no crops of these domains")
    cases = benchmark.make_cases(
        images,
        args.scales,
        read_noise=args.read_noise,
        background=args.background,
        sky_fraction={"astronomy": args.sky_fraction},
        seed=args.seed,
        operator=_operator(args),
    )
    print(
        f"benchmark: {len(images)} crops of {args.crop} px x {len(args.scales)} scales "
        f"x {len(args.read_noise)} read noises"
    )
    (out / "settings.json").write_text(
        json.dumps(
            {
                "argv": sys.argv[1:] if argv is None else list(argv),
                **vars(args),
                "pdr": {**dataclasses.asdict(settings), "sampler": dict(settings.sampler)},
                "images": [i.name for i in images],
            },
            indent=1,
        )
    )

    with warnings.catch_warnings():
        # Expected at the lowest scales; the tables list s, so the warning adds nothing here.
        warnings.filterwarnings("ignore", "mean photon count", RuntimeWarning)
        selected = methods.build_methods(names, options, ablations)
        run = benchmark.run_methods(cases, selected, seed=args.seed, batch=args.batch)
        for name, seconds in run.compile_seconds.items():
            print(f"{name}: {seconds:.1f} s of first-call overhead (compilation) not counted")
        source = "embedded held-out" if args.clean == benchmark.EMBEDDED else args.clean
        source += {"gray": "", "rgb": " colour", "raw": " RGGB mosaic (linear colour)"}[args.mode]
        source += f" blurred by {args.psf}" if args.psf else ""
        sky = f" + {args.sky_fraction:g} s (astronomy)" if args.sky_fraction else ""
        title = (
            f"{source} crops of {args.crop} px, r = {', '.join(f'{r:g}' for r in args.read_noise)} e-"
            f"{' (averaged)' if len(args.read_noise) > 1 else ''}, b = {args.background:g} e-{sky}"
        )
        summary = report.write_outputs(out, run.rows, title=title, examples=_examples(cases, run))
        if args.resolutions:
            _run_resolutions(args, cases, options, out)
        if args.gaussian_denoising:
            _run_gaussian_denoising(args, images, options, out)
        if "steps" in args.sweep:
            _run_steps_sweep(args, cases, options, out)
    print((out / "table.md").read_text())
    return _check_regression(args, summary, out) if args.compare_to else 0


if __name__ == "__main__":
    sys.exit(main())
