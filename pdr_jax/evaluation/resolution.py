"""Multi-resolution evaluation: the same benchmark restored at several processing resolutions.

Each resolution T runs "pdr" with the network on overlapping T x T tiles of the (reflection
padded) crops, fused at every denoiser call (pdr_jax.restore.tiling); T equal to the crop is a
single tile. Reported per T: mean PSNR/SSIM, seconds per image (compilation excluded),
tiles per crop and memory, XLA's compiled size (arguments + outputs + temporaries) of one
denoiser evaluation at T (`methods.network_memory_bytes`), which is what grows with T; the
sampler adds a few image-sized buffers. `recommend_resolution` picks one under constraints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from pdr_jax.evaluation import benchmark, methods, report


def evaluate_resolutions(
    cases: Sequence[benchmark.Case],
    prior,
    settings: methods.PdrSettings,
    resolutions: Sequence[int],
    *,
    seed: int = 0,
    batch: int = 8,
    log: Callable[[str], None] = print,
) -> tuple[list[dict], list[dict]]:
    """(one summary row per resolution, per-image rows with method "pdr@T").

    A resolution the crops cannot be tiled at (not a multiple of the network's downsampling,
    or larger than reflection padding allows) gets a row with its error and no metrics.
    """
    summary, rows = [], []
    height, width = cases[0].image.clean.shape[:2]
    for tile in resolutions:
        base = settings.tiling or methods.TilingSettings()
        tiled = dataclasses.replace(settings, tiling=dataclasses.replace(base, tile=int(tile)))
        entry = {"resolution": int(tile)}
        try:
            plan = methods.tile_plan(prior, height, width, tiled.tiling)
        except ValueError as e:
            log(f"resolution {tile}: skipped ({e})")
            summary.append({**entry, "error": str(e)})
            continue

        def restore(y, *, tiled=tiled, **args):
            return methods.restore_pdr(prior, y, settings=tiled, **args)

        name = f"pdr@{tile}"
        run = benchmark.run_methods(
            cases, {name: benchmark.Method(restore, jitted=True)}, seed=seed, batch=batch, log=log
        )
        rows += run.rows
        shape = (min(batch, len(cases)), height, width, 1)
        cells = report.summarise(run.rows)
        entry.update(
            tiles=plan.num_tiles,
            psnr=report.finite_mean(row["psnr"] for row in run.rows),
            ssim=report.finite_mean(row["ssim"] for row in run.rows),
            min_cell_psnr=min(c["psnr"] for c in cells),
            seconds=report.finite_mean(row["seconds"] for row in run.rows),
            compile_seconds=run.compile_seconds.get(name, 0.0),
            memory_mb=methods.network_memory_bytes(prior, shape, tiled) / 2**20,
        )
        log(
            f"resolution {tile}: PSNR {entry['psnr']:.2f} dB, {entry['seconds']:.3g} s/image, "
            f"{entry['memory_mb']:.1f} MB, {plan.num_tiles} tiles"
        )
        summary.append(entry)
    return summary, rows


def recommend_resolution(
    summary: Sequence[dict],
    *,
    max_memory_mb: float | None = None,
    max_seconds: float | None = None,
    min_psnr: float | None = None,
) -> tuple[int | None, str]:
    """(resolution, reason): the highest mean PSNR among resolutions meeting every constraint
    (memory_mb <= max_memory_mb, seconds per image <= max_seconds, mean PSNR >= min_psnr),
    the faster one on a tie; (None, why not) when none does."""
    feasible, rejected = [], []
    for entry in summary:
        if "error" in entry:
            rejected.append(f"{entry['resolution']}: {entry['error']}")
            continue
        failed = []
        if max_memory_mb is not None and entry["memory_mb"] > max_memory_mb:
            failed.append(f"memory {entry['memory_mb']:.0f} MB > {max_memory_mb:g}")
        if max_seconds is not None and entry["seconds"] > max_seconds:
            failed.append(f"{entry['seconds']:.3g} s/image > {max_seconds:g}")
        if min_psnr is not None and entry["psnr"] < min_psnr:
            failed.append(f"PSNR {entry['psnr']:.2f} < {min_psnr:g} dB")
        if failed:
            rejected.append(f"{entry['resolution']}: " + ", ".join(failed))
        else:
            feasible.append(entry)
    constraints = (
        ", ".join(
            text
            for value, text in (
                (max_memory_mb, f"memory <= {max_memory_mb} MB"),
                (max_seconds, f"<= {max_seconds} s/image"),
                (min_psnr, f"PSNR >= {min_psnr} dB"),
            )
            if value is not None
        )
        or "no constraints"
    )
    if not feasible:
        return None, f"no resolution meets {constraints} ({'; '.join(rejected)})"
    best = max(feasible, key=lambda e: (e["psnr"], -e["seconds"]))
    return best["resolution"], (
        f"{best['resolution']}: highest PSNR ({best['psnr']:.2f} dB) of those meeting "
        f"{constraints}" + (f"; rejected {'; '.join(rejected)}" if rejected else "")
    )


def markdown(summary: Sequence[dict], recommendation: tuple[int | None, str]) -> str:
    """The resolution table and the recommendation, as markdown."""
    lines = [
        "### Processing resolution (pdr)",
        "",
        (
            "| resolution | tiles/crop | PSNR (dB) | worst cell PSNR | SSIM | s/image "
            "| compile (s) | memory (MB) |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in summary:
        if "error" in e:
            lines.append(f"| {e['resolution']} | n/a: {e['error']} | | | | | | |")
            continue
        lines.append(
            f"| {e['resolution']} | {e['tiles']} | {e['psnr']:.2f} | {e['min_cell_psnr']:.2f} "
            f"| {e['ssim']:.3f} | {e['seconds']:.3g} | {e['compile_seconds']:.1f} "
            f"| {e['memory_mb']:.1f} |"
        )
    lines += [
        "",
        (
            "Memory: XLA's compiled size of one denoiser evaluation (the network on one chunk "
            "of tiles + image buffers)."
        ),
        "",
        f"Recommendation: {recommendation[1]}",
    ]
    return "\n".join(lines) + "\n"


RESOLUTION_FIELDS = (
    "resolution",
    "tiles",
    "psnr",
    "min_cell_psnr",
    "ssim",
    "seconds",
    "compile_seconds",
    "memory_mb",
    "error",
)
