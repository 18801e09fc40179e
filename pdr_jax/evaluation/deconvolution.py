"""Choosing the deconvolution baselines' settings on validation crops.

    python -m pdr_jax.evaluation.deconvolution --clean corpus:val --num-images 4 \\
        --psf gaussian:2.5 moffat:3,2.5 airy:520,1.4,65 --scales 10 50 250 --read-noise 2

For every blurred, noisy validation crop (microscopy and astronomy) it measures the PSNR of
Richardson-Lucy at each count of methods.ORACLE_COUNTS (one run each, `richardson_lucy_trace`),
of RL-TV over a grid of (iterations, weight), and of GAT+BM3D followed by RL at each count; it
prints, per photon level, the mean PSNR of each setting over crops, domains and PSFs and the
best one: the tables RL_ITERATIONS, RL_TV and GAT_BM3D_RL_ITERATIONS of
pdr_jax.evaluation.methods (one setting per level, as a user who knows the photon level but
not the truth would choose). The per-case PSNRs go to --out as CSV.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys

import numpy as np

from pdr_jax import baselines, metrics
from pdr_jax.evaluation import benchmark, methods
from pdr_jax.io import read_psf

# A first grid, (10, 20, 50) x (0.002, 0.005, 0.01, 0.02), peaked at its corner (10, 0.02).
TV_GRID = tuple(itertools.product((2, 5, 10), (0.01, 0.02, 0.05, 0.1)))
METHODS = ("rl", "rl-tv", "gat-bm3d-rl")
DOMAINS = ("microscopy", "astronomy")


def settings_psnr(case, kernel, methods_=METHODS) -> dict[str, float]:
    """{setting name: PSNR} of every setting of the baselines `methods_` on one blurred case
    [H, W, 1]."""
    y, clean = case.y[..., 0], case.image.clean[..., 0]
    psnr = lambda x: float(metrics.psnr(np.clip(x, 0, 1)[..., None], clean[..., None]))
    intensity = np.clip((y - case.b) / case.s, 0, None)
    rows = {}
    if "rl" in methods_:
        trace = baselines.richardson_lucy_trace(intensity, kernel, methods.ORACLE_COUNTS)
        rows.update({f"rl:{n}": psnr(x) for n, x in trace.items()})
    for iterations, weight in TV_GRID if "rl-tv" in methods_ else ():
        x = baselines.richardson_lucy_tv(
            case.y, kernel, case.s, case.r, case.b, iterations=iterations, weight=weight
        )[..., 0]
        rows[f"rl-tv:{iterations},{weight}"] = psnr(x)
    if "gat-bm3d-rl" in methods_:
        denoised = baselines.gat_bm3d(y, case.s, case.r, case.b).astype(np.float64)
        trace = baselines.richardson_lucy_trace(denoised, kernel, methods.ORACLE_COUNTS)
        rows.update({f"gat-bm3d-rl:{n}": psnr(x) for n, x in trace.items()})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clean", default="corpus:val")
    parser.add_argument("--num-images", type=int, default=4, help="crops per domain")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--psf", nargs="+", required=True)
    parser.add_argument("--scales", type=float, nargs="+", default=[10.0, 50.0, 250.0])
    parser.add_argument("--read-noise", type=float, default=2.0)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--out", default="deconvolution_tuning.csv")
    args = parser.parse_args(argv)

    images = benchmark.load_clean_images(args.clean, crop=args.crop, per_domain=args.num_images)
    images = [image for image in images if image.domain in DOMAINS]
    rows = []
    for spec in args.psf:
        operator = read_psf(spec)
        cases = benchmark.make_cases(
            images,
            args.scales,
            read_noise=args.read_noise,
            sky_fraction=benchmark.CORPUS_SKY_FRACTION,
            operator=operator,
        )
        for case in cases:
            for setting, value in settings_psnr(case, operator.array, args.methods).items():
                method, _, parameters = setting.partition(":")
                rows.append(
                    dict(
                        psf=spec,
                        domain=case.image.domain,
                        image=case.image.name,
                        scale=case.s,
                        method=method,
                        setting=parameters,
                        psnr=value,
                    )
                )
            print(f"{spec} {case.name}", file=sys.stderr)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for scale in args.scales:
        for method in args.methods:
            means: dict[str, list[float]] = {}
            for row in rows:
                if row["scale"] == scale and row["method"] == method:
                    means.setdefault(row["setting"], []).append(row["psnr"])
            table = {setting: float(np.mean(v)) for setting, v in means.items()}
            best = max(table, key=table.get)
            listing = ", ".join(f"{k} {v:.2f}" for k, v in table.items())
            print(f"s={scale:g} {method}: best {best} ({table[best]:.2f} dB) | {listing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
