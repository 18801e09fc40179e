"""Restoration at scale: `pdr-restore` on synthetic whole images of growing size, one process
per size, its time and peak RSS fitted against the image size (`pdr-bench --restore-scaling`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

from pdr_jax.presets import DEFAULT_CHECKPOINT


def _synthetic_measurement(size: int, scale: float, read_noise: float, seed: int = 0):
    """A smooth [size, size] clean image in [0.1, 0.9] and its Poisson-Gaussian measurement."""
    rng = np.random.default_rng(seed)
    i = np.arange(size, dtype=np.float32)
    clean = 0.5 + 0.4 * np.sin(i / 13.0)[:, None] * np.cos(i / 29.0)[None, :]
    y = rng.poisson(scale * clean).astype(np.float32)
    y += rng.normal(0.0, read_noise, y.shape).astype(np.float32)
    return clean, y


def restore_scaling(
    sizes,
    *,
    steps: int | None,
    checkpoint: str | None,
    batch: int,
    tile: int | None,
    log: Callable[[str], None] = print,
) -> dict:
    """Peak RSS and time of `tools/restore.py` on one [size, size] measurement per size.

    Each size runs in a fresh process (one call of the CLI). Its time includes compilation,
    which does not depend on the size (the tiles go through one lax.scan), so fitting
    seconds = a + b * megapixels separates that fixed cost a from the cost per pixel b; the
    residuals of the fit show whether time is linear in pixels. Peak RSS is the child's
    ru_maxrss; fitting peak RSS = c + k * (image bytes) gives the size-independent part c
    (Python, JAX, the model, compiled programs, one chunk of tiles) and k, the number of
    full-image float32 arrays alive at the peak.
    """
    scale, read_noise = 10.0, 2.0
    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            _, y = _synthetic_measurement(size, scale, read_noise)
            measurement = os.path.join(tmp, "y.npy")
            np.save(measurement, y)
            del y
            report_path = os.path.join(tmp, "report.json")
            cmd = [
                sys.executable,
                "-m",
                "pdr_jax.cli.restore",
                measurement,
                "--output",
                os.path.join(tmp, "x.npy"),
                "--domain",
                "microscopy",
                "--scale",
                str(scale),
                "--read-noise",
                str(read_noise),
                "--batch",
                str(batch),
                "--report",
                report_path,
            ]
            cmd += ["--steps", str(steps)] if steps is not None else []
            cmd += ["--checkpoint", checkpoint] if checkpoint else []
            cmd += ["--tile", str(tile)] if tile else []
            log(f"restore {size}x{size}: {' '.join(cmd[2:])}")
            start = time.perf_counter()
            proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            stderr = proc.stderr.read()
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
            if status != 0:
                raise RuntimeError(f"tools/restore.py failed on {size}x{size}:\n{stderr[-2000:]}")
            with open(report_path) as f:
                image = json.load(f)["images"][0]
        rows.append(
            {
                "size": size,
                "megapixels": size * size / 1e6,
                "tiles": image["num_tiles"],
                "tile": image["tile"],
                "process_s": wall,
                "restore_s": image["seconds"],
                "restore_s_per_megapixel": image["seconds"] / (size * size / 1e6),
                "peak_rss_mib": usage.ru_maxrss / 1024,
                "image_mib": size * size * 4 / 2**20,
                "chi_square": image["chi_square"],
            }
        )
        log(f"  {rows[-1]['restore_s']:.1f} s, peak RSS {rows[-1]['peak_rss_mib']:.0f} MiB")
    image_mib = np.array([r["image_mib"] for r in rows])
    rss = np.array([r["peak_rss_mib"] for r in rows])
    seconds = np.array([r["restore_s"] for r in rows])
    megapixels = np.array([r["megapixels"] for r in rows])
    fit = {}
    if len(rows) >= 2:
        k, a = np.polyfit(image_mib, rss, 1)
        fit["rss_fixed_mib"], fit["rss_image_arrays"] = float(a), float(k)
        fit["rss_max_residual_mib"] = float(np.max(np.abs(rss - (a + k * image_mib))))
        slope, intercept = np.polyfit(megapixels, seconds, 1)
        fit["seconds_per_megapixel"], fit["seconds_fixed"] = float(slope), float(intercept)
        fit["time_max_relative_residual"] = float(
            np.max(np.abs(seconds - (intercept + slope * megapixels)) / seconds)
        )
    settings = image["settings"]["sampler"]
    return {
        "steps": settings["num_steps"],
        "solver": settings["solver"],
        "network_calls": image["network_calls"],
        "batch": batch,
        "checkpoint": checkpoint or DEFAULT_CHECKPOINT,
        "sizes": rows,
        "fit": fit,
        "load_average": os.getloadavg(),
    }


def format_scaling(report: dict) -> str:
    lines = [
        f"tools/restore.py, {report['solver']} {report['steps']} steps ({report['network_calls']} network calls "
        f"per tile), batch {report['batch']}, {report['checkpoint']}"
    ]
    lines.append("  size    tiles  restore s  s/Mpx   peak RSS MiB  image MiB  chi2")
    for r in report["sizes"]:
        lines.append(
            f"  {r['size']:5d}  {r['tiles']:6d}  {r['restore_s']:9.1f}  {r['restore_s_per_megapixel']:5.1f}  "
            f"{r['peak_rss_mib']:12.0f}  {r['image_mib']:9.0f}  {r['chi_square']:.2f}"
        )
    fit = report["fit"]
    if fit:
        lines.append(
            f"peak RSS = {fit['rss_fixed_mib']:.0f} MiB + {fit['rss_image_arrays']:.1f} x image "
            f"(max residual {fit['rss_max_residual_mib']:.0f} MiB); time = {fit['seconds_fixed']:.1f} s + "
            f"{fit['seconds_per_megapixel']:.2f} s/Mpx (max relative residual {fit['time_max_relative_residual']:.1%})"
        )
    return "\n".join(lines)
