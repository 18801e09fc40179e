"""A whole Measurement through `pdr_jax.restore.restore`, and the report of the file.

A file is [F, H, W, C]: each frame is restored on its own, and its channels in groups of what
the model restores at a time (a colour prior: 3 together; a grayscale prior: each channel on
its own; a mosaic: its one measured channel becomes the colour prior's three). Each group's key
is `key` folded with f * C + group.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pdr_jax.io.measurement import Measurement

CHI_SQUARE_RANGE = (0.3, 3.0)  # outside it the noise model does not describe the data
# --psf auto: warn when the fitted stars' FWHMs spread more than this fraction (interquartile
# range over the median): on synthetic fields of one Moffat the spread was 2-8 %.
PSF_FWHM_SPREAD = 0.25


@dataclasses.dataclass(frozen=True)
class MeasurementRestoration:
    """restore_measurement's result."""

    image: np.ndarray  # [F, H, W, C'] float32, clean intensity in [0, 1]
    std: np.ndarray | None  # like image: per-pixel posterior std (keep_std and num_samples > 1)
    first_std: np.ndarray | None  # [H, W, width]: the first group's std, if restore gave one
    reports: list[dict]  # restore()'s, per frame and channel group
    width: int  # channels the model restores at a time
    measured: int  # measured channels per restoration (1 for a mosaic)


def restore_measurement(
    model,
    measurement: Measurement,
    physics,
    *,
    key,
    guidance=None,
    sampler=None,
    tiling_settings=None,
    num_samples: int = 1,
    keep_std: bool = False,
) -> MeasurementRestoration:
    """Every frame and channel group of `measurement` through pdr_jax.restore.restore with
    `model` (a Prior or a pdr_jax.conditional.ConditionalModel) and `physics`
    (measurement.physics(domain)); the settings records default to restore's. keep_std: also
    keep the posterior std of every group (num_samples > 1). Raises ValueError when the file's
    channels are not a multiple of what the model restores at a time."""
    import jax

    import pdr_jax.restore  # looked up at call time: tests replace pdr_jax.restore.restore
    from pdr_jax.conditional import ConditionalModel

    settings = {"guidance": guidance, "sampler": sampler, "tiling_settings": tiling_settings}
    settings = {name: value for name, value in settings.items() if value is not None}
    electrons, mask = measurement.electrons, measurement.mask
    frames, height, width_px, channels = electrons.shape
    width = model.img_channels
    measured = measurement.operator.channels_out or width  # input channels per restoration
    if channels % measured:
        raise ValueError(
            f"{measurement.path}: {channels} channel(s), but the model restores {width} at a "
            "time (--checkpoint: a grayscale model restores any channels one by one)"
        )
    x = np.zeros((frames, height, width_px, channels // measured * width), np.float32)
    std = np.zeros_like(x) if keep_std else None
    reports, first_std = [], None
    for f in range(frames):
        for group, c in enumerate(range(0, channels, measured)):
            part, out = slice(c, c + measured), slice(group * width, (group + 1) * width)
            result = pdr_jax.restore.restore(
                model,
                electrons[f, :, :, part],
                physics=physics,
                mask=mask[f, :, :, part],
                num_samples=num_samples,
                key=jax.random.fold_in(key, f * channels + group),
                **settings,
            )
            x[f, :, :, out] = result.image.reshape(height, width_px, width)
            if f == c == 0 and result.std is not None:
                first_std = result.std.reshape(height, width_px, width)
            if std is not None:  # num_samples > 1: restore() always returns their std
                std[f, :, :, out] = result.std.reshape(height, width_px, width)
            if isinstance(model, ConditionalModel) and not mask[f, :, :, part].all():
                result.report["warnings"].append(
                    "saturated pixels are not masked by --method conditional"
                )
            reports.append(result.report)
    return MeasurementRestoration(x, std, first_std, reports, width, measured)


def restoration_report(
    measurement: Measurement,
    restoration: MeasurementRestoration,
    *,
    checkpoint: str,
    output,
    uncertainty=None,
    physics_warnings=(),
) -> dict:
    """The report of one restored file (pdr-restore --report's "images" entries): the
    restorations' diagnostics averaged, the noise parameters, the warnings (the restorations',
    physics_warnings from check_measurement, and what the reading and the fit say)."""
    from pdr_jax.physics.conditioning import DEFAULT_SPEC

    reports, m = restoration.reports, measurement
    mean = lambda key: float(np.mean([r[key] for r in reports]))
    warnings = sorted({w for r in reports for w in r["warnings"]}) + list(physics_warnings)
    if m.units == "electrons" and np.issubdtype(np.dtype(m.meta.dtype), np.integer):
        warnings.append(
            f"the file holds {m.meta.dtype} integers, read as electrons (--units electrons): raw "
            "camera counts need --units adu with --gain/--black-level/--white-level"
        )
    chi_square = mean("chi_square")
    if not CHI_SQUARE_RANGE[0] <= chi_square <= CHI_SQUARE_RANGE[1]:
        warnings.append(
            f"chi-square {chi_square:.4g} is far from 1: the noise model (--units, --scale, "
            "--read-noise, --background, --gain) does not describe these data"
        )
    s_lo, s_hi = 10 ** np.array(DEFAULT_SPEC.log10_scale_range)  # the conditioning's s range
    if not s_lo <= m.scale <= s_hi:
        warnings.append(
            f"scale {m.scale:g} outside the conditioning range [{s_lo:g}, {s_hi:g}]: clipped"
        )
    if m.estimate is not None:
        warnings += [f"noise estimate: {w}" for w in m.estimate["warnings"]]
    if m.num_nonfinite:
        warnings.append(
            f"{m.num_nonfinite} NaN/Inf pixel(s) masked: no likelihood there, filled by the "
            "prior (--nonfinite refuse fails such files)"
        )
    fit = m.psf_fit
    if fit is not None and fit["fwhm_iqr"] > PSF_FWHM_SPREAD * fit["fwhm"]:
        warnings.append(
            f"--psf auto: the {fit['num_stars']} stars' FWHMs spread by {fit['fwhm_iqr']:.2g} px "
            f"(interquartile) around {fit['fwhm']:.3g} px: the PSF varies over the field, or "
            "some sources are resolved or blended; check it, or give the PSF"
        )
    first, std = reports[0], restoration.std
    return {
        "input": str(m.path),
        "output": str(output),
        "checkpoint": checkpoint,
        "operator": first["physics"]["operator"],
        "psf_fit": m.psf_fit,
        "shape": [int(v) for v in m.electrons.shape],
        "chi_square": chi_square,
        # Per channel of the file (a grayscale model's per-channel restorations in order), or
        # per Bayer colour R, G, B of a mosaic.
        "chi_square_per_channel": [c for r in reports for c in r["chi_square_per_channel"]],
        "whiteness": mean("whiteness"),
        "spectral_flatness": mean("spectral_flatness"),
        "mean_photons": mean("mean_photons"),
        "saturated_fraction": mean("saturated_fraction"),
        "posterior_std": mean("posterior_std") if std is not None else None,
        "uncertainty": str(uncertainty) if std is not None else None,
        "tile": first["tile"],
        "num_tiles": first["num_tiles"],
        "plan": first["plan"],
        "kappa": first.get("kappa"),
        "settings": first.get("settings"),
        "network_calls": first.get("network_calls"),
        "refined": first.get("refined"),
        "noise_level": first.get("noise_level"),
        # A noisy mosaic's start denoised its Bayer planes too; through a PSF, the start's
        # Richardson-Lucy iterations (SamplerSettings.planes_min_noise, deblur_iterations).
        "planes_start": first.get("planes_start"),
        "deblur_iterations": first.get("deblur_iterations"),
        # Each channel's (a mosaic's Bayer colour's) flux scale and offset, over the frames
        # (SamplerSettings.conserve_flux: what brought the restoration to the measured total).
        "flux_scale": [list(c) for r in reports for c in zip(*r.get("flux_scale", []))],
        "flux_offset": [list(c) for r in reports for c in zip(*r.get("flux_offset", []))],
        "std_from": first.get("std_from"),
        "noise": {
            "scale": m.scale,
            "read_noise": m.read_noise,
            "gain": m.gain,
            "estimate": m.estimate,
        },
        "nonfinite_pixels": m.num_nonfinite,
        "seconds": float(sum(r["timings"]["total_s"] for r in reports)),
        "warnings": warnings,
    }
