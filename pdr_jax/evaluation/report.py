"""Results out: per-image CSV, per-cell summary, markdown tables, PNG figures, regression check.

A row is a dict with method, domain, image, scale, read_noise, background, the metrics of
`benchmark.METRICS` and seconds. A cell is one (method, domain, scale): `summarise` averages
its rows (FRC resolution: the median, since a curve that starts below 1/7 gives inf; the total
fluxes are summed, giving the cell's flux-weighted flux_error, and flux_z is the root mean
square; a restoration equal to its truth, PSNR inf, is counted in `exact` and left out of the
mean PSNR).
"""

from __future__ import annotations

import csv
import math
import pathlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from pdr_jax.evaluation.benchmark import METRICS

CELL = ("method", "domain", "scale")
CASE = ("domain", "image", "scale", "read_noise", "background")  # what one simulated case is
ROW_FIELDS = ("method", *CASE, *METRICS, "seconds")
SUMMARY_FIELDS = (
    *CELL,
    "images",
    "exact",
    "read_noise",
    "background",
    *METRICS,
    "flux_error",
    "seconds",
)
DEFAULT_MARGIN = 0.05  # regression: a cell's mean PSNR may drop by 5% of its earlier value


def _format(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_csv(rows: Iterable[Mapping], path, fields: Sequence[str]) -> None:
    """rows -> CSV with the given columns (missing values and NaN as empty cells)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _format(row.get(k)) for k in fields})


def read_csv(path) -> list[dict]:
    """CSV -> rows; numbers become floats, empty cells None."""

    def parse(value: str):
        if value == "":
            return None
        try:
            return float(value)
        except ValueError:
            return value

    with open(path, newline="") as f:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def finite_mean(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else None


def _median(values) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.median(values)) if values else None


def _cells(rows: Iterable[Mapping]) -> dict[tuple, list[Mapping]]:
    cells: dict[tuple, list[Mapping]] = {}
    for row in rows:
        cells.setdefault((row["method"], row["domain"], float(row["scale"])), []).append(row)
    return cells


def _flux(rows: Sequence[Mapping]) -> dict:
    """The total fluxes of rows summed, flux_error = sum(flux_hat) / sum(flux_true) - 1, and the
    root mean square of flux_z (None where the rows have none)."""
    pairs = [(row.get("flux_true"), row.get("flux_hat")) for row in rows]
    pairs = [(t, h) for t, h in pairs if t is not None and h is not None]
    zs = [row["flux_z"] for row in rows if row.get("flux_z") is not None]
    true, hat = (float(sum(v)) for v in zip(*pairs)) if pairs else (None, None)
    return {
        "flux_true": true,
        "flux_hat": hat,
        "flux_error": hat / true - 1 if pairs and true > 0 else None,
        "flux_z": float(np.sqrt(np.mean(np.square(zs)))) if zs else None,
    }


def summarise(rows: Sequence[Mapping]) -> list[dict]:
    """Per-image rows -> one row per (method, domain, scale) with the mean metrics, in order."""
    summary = []
    for (method, domain, scale), cell in _cells(rows).items():
        entry = {"method": method, "domain": domain, "scale": scale, "images": len(cell)}
        # Restorations equal to the truth (a black crop restored to 0): their PSNR is
        # infinite, so the mean is over the others, and the tables say how many there were.
        entry["exact"] = sum(row.get("psnr") == math.inf for row in cell)
        for field in ("read_noise", "background", *METRICS, "seconds"):
            values = [row.get(field) for row in cell]
            entry[field] = _median(values) if field == "frc_px" else finite_mean(values)
        entry.update(_flux(cell))
        summary.append(entry)
    return summary


def _ordered(values) -> list:
    return list(dict.fromkeys(values))


def _number(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _domain_table(title: str, rows, methods, scales, by_cell, text_of) -> list[str]:
    """Markdown lines of a (domain, s) x method table of text_of(cell), for the domains of
    `rows` (none: no lines)."""
    if not rows:
        return []
    lines = ["", title, "", "| domain | s (e-) | " + " | ".join(methods) + " |"]
    lines.append("|---|---:|" + "---:|" * len(methods))
    for domain in _ordered(row["domain"] for row in rows):
        for scale in scales:
            texts = []
            for method in methods:
                cell = by_cell.get((method, domain, scale))
                texts.append("n/a" if cell is None else text_of(cell))
            lines.append(f"| {domain} | {scale:g} | " + " | ".join(texts) + " |")
    return lines


def markdown_table(summary: Sequence[Mapping], *, title: str = "Benchmark") -> str:
    """Markdown: mean PSNR / SSIM / chi-square per domain x scale (rows) and method (columns),
    the best PSNR of a row in bold; then the other metrics averaged over domains, and seconds
    per image per method."""
    methods = _ordered(row["method"] for row in summary)
    domains = _ordered(row["domain"] for row in summary)
    scales = sorted({row["scale"] for row in summary})
    by_cell = {(row["method"], row["domain"], row["scale"]): row for row in summary}
    lines = [f"### {title}: mean PSNR (dB) / SSIM / chi-square", ""]
    lines.append("| domain | s (e-) | " + " | ".join(methods) + " |")
    lines.append("|---|---:|" + "---:|" * len(methods))
    for domain in domains:
        for scale in scales:
            cells = [by_cell.get((method, domain, scale)) for method in methods]
            psnrs = [c["psnr"] for c in cells if c and c["psnr"] is not None]
            best = max(psnrs) if psnrs else None
            texts = []
            for cell in cells:
                if cell is None:
                    texts.append("n/a")
                    continue
                psnr = _number(cell["psnr"], 2)
                if cell["psnr"] is not None and cell["psnr"] == best and len(psnrs) > 1:
                    psnr = f"**{psnr}**"
                if cell.get("exact"):
                    psnr += f" (+{cell['exact']} exact)"
                texts.append(
                    f"{psnr} / {_number(cell['ssim'], 3)} / {_number(cell['chi_square'], 2)}"
                )
            lines.append(f"| {domain} | {scale:g} | " + " | ".join(texts) + " |")
    images = sorted({row["images"] for row in summary})
    counts = ", ".join(str(int(n)) for n in images)
    note = f"Images per cell: {counts}. chi-square ~1: the restoration explains the data."
    if any(row.get("exact") for row in summary):
        note += (
            " (+N exact): N crops restored to the truth itself (PSNR infinite), left out of"
            " the mean PSNR."
        )
    lines += ["", note, ""]

    lines += ["### Other metrics, mean over domains", ""]
    lines.append(
        "| method | s (e-) | MS-SSIM | Poisson deviance | whiteness | relative bias | "
        "total flux error | flux z (rms) | FRC res. (px) |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for method in methods:
        for scale in scales:
            cells = [by_cell[key] for key in by_cell if key[0] == method and key[2] == scale]
            if not cells:
                continue
            fields = ("ms_ssim", "poisson_deviance", "whiteness", "relative_bias", "frc_px")
            ms_ssim, deviance, whiteness, bias, frc = (
                finite_mean(c[field] for c in cells) for field in fields
            )
            flux = _flux(cells)  # over the domains' cells
            lines.append(
                f"| {method} | {scale:g} | {_number(ms_ssim, 3)} | {_number(deviance, 2)} | "
                f"{_number(whiteness, 3)} | {_number(bias, 3)} | {_number(flux['flux_error'], 4)} "
                f"| {_number(flux['flux_z'], 2)} | {_number(frc, 1)} |"
            )
    sources_text = lambda cell: " / ".join(
        _number(cell[f"sources_{k}"], 1) for k in ("true", "false", "missed")
    )
    lines += _domain_table(
        "### Point sources per crop (pdr_jax.evaluation.sources): true / false / missed",
        [row for row in summary if row.get("sources_true") is not None],
        methods,
        scales,
        by_cell,
        sources_text,
    )
    photometry_text = lambda cell: " / ".join(
        _number(cell[f"photometry_{k}"], 3) for k in ("bias", "scatter")
    )
    lines += _domain_table(
        "### Aperture photometry of the true stars: relative flux error, median bias / robust "
        "scatter",
        [row for row in summary if row.get("photometry_bias") is not None],
        methods,
        scales,
        by_cell,
        photometry_text,
    )
    sampled = [row for row in summary if row.get("coverage_1sd") is not None]
    if sampled:
        title = (
            "### Posterior std: mean / pixels with error within 1 std / within 2 std "
            "(calibrated: 0.683 / 0.954)"
        )
        lines += [
            "",
            title,
            "",
            "| method | domain | s (e-) | std | 1 std | 2 std |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for row in sampled:
            lines.append(
                f"| {row['method']} | {row['domain']} | {row['scale']:g} | {_number(row['std_mean'], 4)} | "
                f"{_number(row['coverage_1sd'], 3)} | {_number(row['coverage_2sd'], 3)} |"
            )
    lines += ["", "### Seconds per image", "", "| method | s/image |", "|---|---:|"]
    for method in methods:
        seconds = finite_mean(row["seconds"] for row in summary if row["method"] == method)
        lines.append(f"| {method} | {_number(seconds, 3)} |")
    return "\n".join(lines) + "\n"


def compare_to(
    summary: Sequence[Mapping], previous: Sequence[Mapping], margin: float = DEFAULT_MARGIN
) -> tuple[list[str], list[str]]:
    """Cells whose mean PSNR dropped by more than margin * `|previous PSNR|`.

    summary: this run's summarise() rows; previous: rows of an earlier results.csv or
    summary.csv (per-image rows are averaged per cell). Returns (failures, notes): a failure
    names the cell and both values; notes list cells of one run missing from the other,
    which are not compared.
    """
    now = {key: finite_mean(row["psnr"] for row in rows) for key, rows in _cells(summary).items()}
    before = {
        key: finite_mean(row["psnr"] for row in rows) for key, rows in _cells(previous).items()
    }
    failures, notes = [], []
    for key in sorted(set(before) | set(now), key=str):
        name = f"{key[0]}/{key[1]}/s={key[2]:g}"
        if key not in now or key not in before:
            notes.append(f"{name}: only in the {'earlier' if key in before else 'new'} run")
        elif None not in (before[key], now[key]) and now[key] < before[key] - margin * abs(
            before[key]
        ):
            failures.append(f"{name}: PSNR {now[key]:.2f} dB < {before[key]:.2f} dB - {margin:.0%}")
    return failures, notes


# Figures.


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_psnr_vs_photons(summary: Sequence[Mapping], path) -> None:
    """One panel per domain: mean PSNR against the photon scale s (log axis), a line per method."""
    plt = pyplot()
    domains = _ordered(row["domain"] for row in summary)
    methods = _ordered(row["method"] for row in summary)
    fig, axes = plt.subplots(1, len(domains), figsize=(4 * len(domains), 3.4), squeeze=False)
    for ax, domain in zip(axes[0], domains, strict=True):
        for method in methods:
            cells = sorted(
                (row["scale"], row["psnr"])
                for row in summary
                if row["method"] == method and row["domain"] == domain and row["psnr"] is not None
            )
            if cells:
                ax.plot(*zip(*cells, strict=True), marker="o", label=method)
        ax.set_xscale("log")
        ax.set_title(domain)
        ax.set_xlabel("photons at full scale, s (e-)")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("PSNR (dB)")
    axes[0, -1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_examples(panels: Mapping[str, Mapping[str, np.ndarray]], path, *, title: str) -> None:
    """A grid of images in [0, 1]: a row per key of panels (a domain), a column per inner key
    (clean, noisy, each method)."""
    plt = pyplot()
    columns = _ordered(name for row in panels.values() for name in row)
    fig, axes = plt.subplots(
        len(panels),
        len(columns),
        figsize=(2 * len(columns), 2 * len(panels) + 0.4),
        squeeze=False,
    )
    for i, (row_name, row) in enumerate(panels.items()):
        ax_row = axes[i]
        for ax, column in zip(ax_row, columns, strict=True):
            ax.set_axis_off()
            if column in row:
                ax.imshow(np.squeeze(row[column]), cmap="gray", vmin=0.0, vmax=1.0)
            if i == 0:
                ax.set_title(column, fontsize=9)
        ax_row[0].text(
            -0.08,
            0.5,
            row_name,
            transform=ax_row[0].transAxes,
            rotation=90,
            ha="right",
            va="center",
            fontsize=9,
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(out_dir, rows, *, title: str, examples=None) -> list[dict]:
    """results.csv, summary.csv, table.md, psnr_vs_photons.png and examples_s{scale}.png.

    examples: {scale: {domain: {column: image}}} or None. Returns the summary rows.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    write_csv(rows, out / "results.csv", ROW_FIELDS)
    write_csv(summary, out / "summary.csv", SUMMARY_FIELDS)
    (out / "table.md").write_text(markdown_table(summary, title=title))
    plot_psnr_vs_photons(summary, out / "psnr_vs_photons.png")
    for scale, panels in (examples or {}).items():
        plot_examples(
            panels,
            out / f"examples_s{scale:g}.png",
            title=f"{title}: s = {scale:g} photons at full scale",
        )
    return summary


def display_rgb(values, lo: float, hi: float, encoded: bool = False) -> np.ndarray:
    """Colour values as shown: rescaled from [lo, hi] to [0, 1], then sRGB-encoded if they are
    linear light (encoded=False); values that are display-encoded already (8-bit sRGB restored
    as the intensities they hold) are only rescaled, not encoded a second time."""
    from pdr_jax.physics.calibration import linear_to_srgb

    unit = np.clip((np.asarray(values, np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return unit if encoded else linear_to_srgb(unit)


def plot_restoration_preview(
    path,
    *,
    noisy: np.ndarray,
    restored: np.ndarray,
    residual: np.ndarray,
    std: np.ndarray | None,
    title: str,
    encoded: bool = False,
) -> None:
    """One restoration at a glance, four labelled panels with colour bars: the noisy measurement
    in clean units ((y - b) / s), the restoration, the residual normalised by the noise model
    ((y - s x - b) / sqrt(s x + b + r^2), about N(0, 1) where the restoration explains the data;
    NaN = masked) and the posterior std (a note when no samples were drawn). Arrays [H, W]; noisy
    and restored may be colour [H, W, 3], shown as sRGB on one scale (display_rgb)."""
    plt = pyplot()
    lo, hi = np.nanpercentile(restored, [0.5, 99.5])
    hi = hi if hi > lo else lo + 1.0
    if np.ndim(restored) == 3:  # colour: sRGB of both on the restoration's range, no colour bar
        noisy, restored = (display_rgb(v, lo, hi, encoded) for v in (noisy, restored))
        lo, hi = 0.0, 1.0
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.6), constrained_layout=True)
    panels = [
        ("noisy, (y - b) / s", noisy, "gray", (lo, hi)),
        ("restored x", restored, "gray", (lo, hi)),
        ("residual (y - s x - b) / sigma", residual, "RdBu_r", (-3.0, 3.0)),
        ("posterior std", std, "magma", (0.0, float(np.nanmax(std)) if std is not None else 1.0)),
    ]
    for ax, (label, image, cmap, (vmin, vmax)) in zip(axes, panels):
        ax.set_axis_off()
        ax.set_title(label)
        if image is None:
            ax.text(
                0.5,
                0.5,
                "not sampled\n(--num-samples K > 1)",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
            continue
        shown = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        if np.ndim(image) == 2:
            fig.colorbar(shown, ax=ax, shrink=0.85)
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)
