"""The speed/quality sweep of the guided sampler: PSNR and chi-square against network calls.

    python tools/evaluate.py --clean corpus:val --methods pdr --sweep steps --out eval/steps

Every (solver, steps) of `SWEEP` runs "pdr" with the other settings unchanged, on the cases
where the default refines (noise_level >= refine_min_noise: elsewhere the one-call estimate is
the result and the sampler never runs). Network calls per tile count the one-call estimate the
sampler starts from (pdr_jax.restore.restoration.network_calls). `recommend` picks the
cheapest setting whose mean PSNR is within `margin_db` of the best: the rule that chose the
default of SamplerSettings. Every setting is also compared with the best one image by image
(`paired_to_best`: the mean difference and its standard error over the same cases), and the
recommendation says whether the images resolve it: a gap to the best within two standard
errors of the margin could fall on either side of it with other crops (a sweep on 2 crops per
domain chose 4 Euler steps that 174 images later put 0.14 +- 0.04 dB below 6).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from pdr_jax.evaluation import benchmark, methods, report
from pdr_jax.restore.restoration import Physics, network_calls, noise_level
from pdr_jax.settings import SamplerSettings

# (solver, steps): Heun at 2 steps - 1 calls, Euler and DPM-Solver++(2M) at comparable counts.
SWEEP = (
    ("heun", 3),
    ("heun", 6),
    ("heun", 10),
    ("heun", 18),
    ("euler", 4),
    ("euler", 6),
    ("euler", 11),
    ("dpmpp2m", 4),
    ("dpmpp2m", 6),
    ("dpmpp2m", 11),
)
FIELDS = (
    "solver",
    "steps",
    "network_calls",
    "images",
    "psnr",
    "chi_square",
    "seconds",
    "psnr_vs_best",
    "psnr_vs_best_se",
)
DEFAULT_MARGIN_DB = 0.1


def refined_cases(cases: Sequence[benchmark.Case], settings: methods.PdrSettings):
    """The cases on which the sampler runs with these settings."""
    threshold = settings.sampler_over(SamplerSettings()).refine_min_noise
    return [c for c in cases if noise_level(c.y, Physics(c.s, c.r, c.b)) >= threshold]


def evaluate_steps(
    cases,
    prior,
    settings: methods.PdrSettings,
    sweep=SWEEP,
    *,
    seed: int = 0,
    batch: int = 8,
    log: Callable[[str], None] = print,
):
    """(one summary row per (solver, steps), per-image rows with method "pdr[solver,steps]")."""
    cases = refined_cases(cases, settings)
    if not cases:
        raise ValueError("no case reaches refine_min_noise: the sampler never runs")
    summary, rows = [], []
    for solver, steps in sweep:
        sampler = {**dict(settings.sampler), "solver": solver, "num_steps": steps}
        variant = dataclasses.replace(settings, sampler=tuple(sampler.items()))

        def restore(y, *, variant=variant, **args):
            return methods.restore_pdr(prior, y, settings=variant, **args)

        name = method_name(solver, steps)
        run = benchmark.run_methods(
            cases, {name: benchmark.Method(restore, jitted=True)}, seed=seed, batch=batch, log=log
        )
        rows += run.rows
        summary.append(
            {
                "solver": solver,
                "steps": steps,
                "network_calls": network_calls(variant.sampler_over(SamplerSettings())),
                "images": len(run.rows),
                **{
                    f: report.finite_mean(r[f] for r in run.rows)
                    for f in ("psnr", "chi_square", "seconds")
                },
            }
        )
    return paired_to_best(summary, rows), rows


def method_name(solver: str, steps: int) -> str:
    """The method name of one sweep setting in the per-image rows."""
    return f"pdr[{solver},{steps}]"


def paired_to_best(summary: Sequence[dict], rows: Sequence[dict]) -> list[dict]:
    """summary rows with psnr_vs_best and psnr_vs_best_se: the mean over the cases both ran of
    (this setting's PSNR - the best setting's), and its standard error (nan with < 2 cases)."""
    best = max(summary, key=lambda row: row["psnr"])
    by_method = {}
    for row in rows:
        by_method.setdefault(row["method"], {})[tuple(row[f] for f in report.CASE)] = row["psnr"]
    reference = by_method[method_name(best["solver"], best["steps"])]
    out = []
    for row in summary:
        mine = by_method[method_name(row["solver"], row["steps"])]
        diffs = np.array([mine[c] - reference[c] for c in mine if c in reference], np.float64)
        diffs = diffs[np.isfinite(diffs)]
        se = diffs.std(ddof=1) / np.sqrt(diffs.size) if diffs.size > 1 else float("nan")
        mean = float(diffs.mean()) if diffs.size else float("nan")
        out.append({**row, "psnr_vs_best": mean, "psnr_vs_best_se": float(se)})
    return out


def resolved(choice: dict, margin_db: float = DEFAULT_MARGIN_DB) -> bool:
    """Whether the choice's paired gap to the best lies more than two standard errors from the
    margin (False when they are nan: fewer than 2 images)."""
    gap, se = -choice["psnr_vs_best"], choice["psnr_vs_best_se"]
    return bool(np.isfinite(gap) and np.isfinite(se) and abs(gap - margin_db) > 2 * se)


def recommend(summary: Sequence[dict], margin_db: float = DEFAULT_MARGIN_DB) -> dict:
    """The row with the fewest network calls whose PSNR is within margin_db of the best (ties:
    the higher PSNR)."""
    best = max(row["psnr"] for row in summary)
    within = [row for row in summary if row["psnr"] >= best - margin_db]
    return min(within, key=lambda row: (row["network_calls"], -row["psnr"]))


def plot(summary: Sequence[dict], path) -> None:
    """PSNR and chi-square against network calls per tile, a line per solver."""
    plt = report.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for solver in dict.fromkeys(row["solver"] for row in summary):
        part = sorted(
            (r for r in summary if r["solver"] == solver), key=lambda r: r["network_calls"]
        )
        calls = [r["network_calls"] for r in part]
        axes[0].plot(calls, [r["psnr"] for r in part], "o-", label=solver)
        axes[1].plot(calls, [r["chi_square"] for r in part], "o-", label=solver)
    axes[0].set_ylabel("mean PSNR (dB)")
    axes[1].set_ylabel("mean chi-square")
    axes[1].axhspan(0.9, 1.1, color="0.9", zorder=0)
    ticks = sorted({row["network_calls"] for row in summary})
    for ax in axes:
        ax.set_xlabel("network calls per tile")
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(tick) for tick in ticks])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Guided sampler from the one-call estimate: quality against calls")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(summary: Sequence[dict], choice: dict, margin_db: float = DEFAULT_MARGIN_DB) -> str:
    """The sweep's table and the recommendation."""
    lines = [
        "### Steps sweep (cases where the sampler runs)",
        "",
        "| solver | steps | network calls | PSNR (dB) | vs best, paired (dB) | chi-square "
        "| s/image |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary:
        paired = f"{row['psnr_vs_best']:+.2f} ± {row['psnr_vs_best_se']:.2f}"
        lines.append(
            f"| {row['solver']} | {row['steps']} | {row['network_calls']} | {row['psnr']:.2f} | "
            f"{paired} | {row['chi_square']:.3f} | {row['seconds']:.3f} |"
        )
    lines += [
        "",
        (
            f"Cheapest within {margin_db:g} dB of the best: {choice['solver']}, "
            f"{choice['steps']} steps ({choice['network_calls']} calls, {choice['psnr']:.2f} dB)."
        ),
    ]
    if not resolved(choice, margin_db):
        lines.append(
            f"Not resolved by these images: its paired gap to the best is within two standard "
            f"errors of the {margin_db:g} dB margin; measure on more crops before changing a default."
        )
    return "\n".join(lines) + "\n"
