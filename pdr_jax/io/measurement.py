"""A measurement file as electrons with its noise parameters: `read_measurement(path, ...)`.

    file (stored values) --(BSCALE/BZERO; NaN/Inf masked; RAW: black level per CFA cell;
        optional sRGB decoding)--> data --(units "adu": gain, black and white level,
        saturation masked; pdr_jax.physics.calibration)--> electrons [F, H, W, C], mask

Noise parameters given as "auto" are estimated from the first frame and channel (of a mosaic:
its green pixels; pdr_jax.physics.noise_estimation): the gain and read noise from its local
mean-variance relation, the scale s as the bright end of its photon level. A camera RAW file
(rawpy) is read as its Bayer mosaic, and the forward operator of a mosaic (a RAW file, or a
one-channel file with `cfa`) is a pdr_jax.physics.operators.Mosaic with its white balance.

`Measurement.physics(domain)` is the `pdr_jax.restore.Physics` to restore it with, and
`check_measurement` refuses one that contradicts it before anything is restored. pdr-restore
is this module, `pdr_jax.restore.restore` per frame (pdr_jax.io.restoration) and
pdr_jax.io.writers; the Python API calls the same functions.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import TYPE_CHECKING

import numpy as np

from pdr_jax.io.readers import ImageMeta, read_image

if TYPE_CHECKING:  # imported where used: importing pdr_jax.io does not import jax
    from pdr_jax.physics.operators import Blur, Chain, Identity, Mosaic
    from pdr_jax.restore import Physics

UNITS = ("electrons", "adu")
NONFINITE = ("mask", "refuse")  # NaN/Inf pixels: out of the likelihood, or the file refused
LINEARISE = ("none", "srgb")


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One file in electrons, with the noise parameters that describe it (module docstring)."""

    path: pathlib.Path
    electrons: np.ndarray  # [F, H, W, C] float32
    mask: np.ndarray  # [F, H, W, C] float32: 1 valid, 0 saturated or NaN/Inf
    meta: ImageMeta  # what the file says (format, dtype, FITS cards, TIFF tags, RAW CFA)
    operator: Identity | Mosaic | Blur | Chain  # IDENTITY, a mosaic's, a PSF's, or both
    units: str  # what the file held: "electrons" or "adu"
    scale: float  # s: electrons at clean intensity 1 ("auto" estimated)
    read_noise: float  # r: electrons rms ("auto" estimated)
    background: float  # b: electrons
    gain: float | str | None  # electrons per ADU (units "adu"; as given for electrons)
    estimate: dict | None  # NoiseEstimate fields (stds, warnings) where anything was estimated
    num_nonfinite: int  # NaN/Inf pixels masked
    # "srgb": 8-bit values restored as the (sRGB-encoded) intensities they hold, so the restored
    # image is display-encoded already; "linear": linear light (electrons, RAW, --linearise srgb)
    encoding: str = "linear"
    psf_fit: dict | None = None  # --psf auto: pdr_jax.physics.psf.MoffatFit's fields

    def physics(self, domain: str) -> Physics:
        """The pdr_jax.restore.Physics of this measurement in `domain`."""
        from pdr_jax.restore import Physics

        return Physics(self.scale, self.read_noise, self.background, domain, self.operator)


class PhysicsMismatch(ValueError):
    """The measurement contradicts the stated physics (--units, --scale, --read-noise)."""


def check_measurement(measurement: Measurement, physics, force: bool = False) -> list[str]:
    """Before restoring: the first frame against `physics`
    (pdr_jax.physics.noise_estimation.check_physics). Raises PhysicsMismatch naming the fix, or
    with force=True returns the problems as warnings."""
    from pdr_jax.physics import noise_estimation

    check = noise_estimation.check_physics(
        measurement.electrons[0, :, :, 0],
        physics.s,
        physics.r,
        physics.b,
        measurement.mask[0, :, :, 0],
    )
    if check.problems and not force:
        raise PhysicsMismatch(
            f"{measurement.path}: not restored, the data contradict the stated physics: "
            + "; ".join(check.problems)
            + " (--force restores anyway)"
        )
    return list(check.problems)


def _operator(path, meta: ImageMeta, channels: int, cfa, wb):
    """The forward operator of the file: a Mosaic for a camera RAW file (its pattern and white
    balance, cfa/wb override) or a one-channel file with cfa, else the identity."""
    from pdr_jax.physics import operators

    raw = meta.format == "raw"
    if not raw and cfa is None:
        if wb is not None:
            raise ValueError(f"{path}: --wb applies to a mosaic (--cfa, or a camera RAW file)")
        return operators.IDENTITY
    if channels != 1:
        raise ValueError(f"{path}: --cfa needs a one-channel mosaic, the file has {channels}")
    pattern = cfa or meta.header["cfa_pattern"]
    wb = wb or (meta.header.get("white_balance") if raw else None) or (1.0, 1.0, 1.0)
    return operators.Mosaic(pattern, gains=tuple(wb[1] / float(v) for v in wb))


def read_psf(spec: str):
    """--psf: a point-spread function as a pdr_jax.physics.operators.Blur. spec: a parametric
    form of pdr_jax.physics.psf.parse ("gaussian:FWHM_PX", "moffat:FWHM_PX,BETA",
    "airy:WAVELENGTH_NM,NA,PIXEL_NM") or an image file (FITS, TIFF, .npy...: one 2-D frame at
    the measurement's pixel scale, odd sides, centred; normalised to sum 1). Raises ValueError
    or UnreadableImageError naming the file."""
    from pdr_jax.physics import operators
    from pdr_jax.physics import psf as psfs

    if psfs.is_parametric(spec):
        return operators.Blur.of(psfs.parse(spec), source=spec)
    array, meta = read_image(pathlib.Path(spec))
    array = np.asarray(array, np.float64) * meta.scale + meta.offset
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(
                f"{spec}: a PSF is one 2-D image, the file has {array.shape[0]} frames"
            )
        array = array[0]
    return operators.Blur.of(psfs.check(array, source=str(spec)), source=str(spec))


def _green_planes(frame: np.ndarray, mosaic) -> np.ndarray:
    """[H, W] mosaic -> its two green planes side by side [H/2, W]: one colour, for the noise
    estimate (its local windows must not mix colours of different levels)."""
    colours = mosaic.colours(2, 2)
    greens = [frame[i::2, j::2] for i in range(2) for j in range(2) if colours[i, j] == 1]
    height = min(g.shape[0] for g in greens)
    width = min(g.shape[1] for g in greens)
    return np.concatenate([g[:height, :width] for g in greens], axis=1)


def read_measurement(
    path,
    *,
    scale: float | str,
    read_noise: float | str,
    background: float = 0.0,
    units: str = "electrons",
    gain: float | str | None = None,
    black_level: float | None = None,
    white_level: float | None = None,
    cfa: str | None = None,
    wb: tuple[float, float, float] | None = None,
    nonfinite: str = "mask",
    linearise: str = "none",
    psf: str | None = None,
) -> Measurement:
    """Read a file (pdr_jax.io.readers: .npy, TIFF, FITS, PNG/JPEG, camera RAW) as electrons.

    scale, read_noise: s and r in electrons, or "auto" (estimated, module docstring);
    background: b in electrons. units "adu": the file holds camera counts, converted with gain
    (electrons per ADU, or "auto"), black_level and white_level (each defaults to what the file
    records; pixels at the white level are masked). cfa: the 2x2 pattern of a one-channel
    mosaic ("RGGB", ...; a RAW file gives its own), wb: its R, G, B white-balance multipliers.
    nonfinite "mask": NaN/Inf pixels leave the likelihood (the prior fills them), "refuse":
    ValueError. linearise "srgb": decode sRGB-encoded integer data to linear light first.
    psf: the point-spread function to deconvolve (`read_psf`: a file or "gaussian:2.5"...),
    composed after the mosaic's blur for a RAW frame; "auto": a Moffat fitted to the stars of
    the first frame (pdr_jax.physics.psf.fit_moffat; the fit is in `psf_fit`). Raises pdr_jax.io.readers.UnreadableImageError or ValueError naming the file.
    """
    from pdr_jax.physics import calibration, noise_estimation, operators
    from pdr_jax.physics import psf as psfs

    path = pathlib.Path(path)
    for name, value in (("s", scale), ("r", read_noise), ("b", background), ("gain", gain)):
        if value not in (None, "auto"):
            noise_estimation.check_parameter(name, value)
    for name, value, allowed in (
        ("units", units, UNITS),
        ("nonfinite", nonfinite, NONFINITE),
        ("linearise", linearise, LINEARISE),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    array, meta = read_image(path, raw_mode="mosaic")
    data = np.asarray(array, np.float32) * meta.scale + meta.offset
    # NaN/Inf pixels (FITS BLANK, masked detector regions) carry no data: out of the likelihood,
    # filled by the prior (nonfinite="refuse": the file fails instead).
    finite = np.isfinite(data)
    num_nonfinite = int(finite.size - np.count_nonzero(finite))
    if num_nonfinite and (nonfinite == "refuse" or not finite.any()):
        calibration.check_finite(data, f"{path}")
    if num_nonfinite:
        data = np.where(finite, data, np.float32(np.median(data[finite])))
    operator = _operator(path, meta, data.shape[-1], cfa, wb)
    mosaic = operator
    planes = (lambda a: a) if mosaic.channels_out is None else (lambda a: _green_planes(a, mosaic))
    if psf == psfs.AUTO and mosaic.channels_out is not None:
        raise ValueError(
            f"{path}: --psf auto fits the stars of a gray or colour image, not of a mosaic: "
            "give the PSF (moffat:FWHM_PX,BETA or a file)"
        )
    if psf not in (None, psfs.AUTO):
        blur = read_psf(psf)
        operator = blur if operator.channels_out is None else operators.Chain(operator, blur)
    if meta.format == "raw":
        if units != "adu":
            raise ValueError(
                f"{path}: a camera RAW file holds ADU: use --units adu with --gain G or auto"
            )
        if black_level is None:  # each CFA position's own black level, their mean below
            cell = np.asarray(meta.header["cfa_black"], np.float32)
            height, width = data.shape[1:3]
            black_map = np.tile(cell, (height // 2, width // 2))[None, :, :, None]
            data = data - (black_map - float(np.mean(cell)))
    if linearise == "srgb":
        if meta.white_level is None or meta.format == "raw":
            raise ValueError(
                f"{path}: --linearise srgb needs integer data with a white level (8-bit images)"
            )
        white = meta.white_level
        data = calibration.srgb_to_linear(np.clip(data / white, 0, 1)) * white
    estimate = None
    if units == "electrons":
        electrons, mask = data, np.ones_like(data)
        if read_noise == "auto":
            fit = noise_estimation.estimate_noise(planes(data[0, :, :, 0]), gain=1.0)
            read_noise, estimate = fit.read_noise, dataclasses.asdict(fit)
    else:
        gain = gain if gain is not None else meta.gain
        black = black_level if black_level is not None else (meta.black_level or 0.0)
        white = white_level if white_level is not None else meta.white_level
        missing = [name for name, v in (("--gain", gain), ("--white-level", white)) if v is None]
        if missing:
            raise ValueError(
                f"{path}: --units adu needs {', '.join(missing)} (the file does not record it)"
            )
        if "auto" in (gain, read_noise):
            fit = noise_estimation.estimate_noise(
                planes(data[0, :, :, 0]),
                black_level=float(np.mean(black)),
                white_level=float(white),
                gain=None if gain == "auto" else float(gain),
            )
            gain, estimate = fit.gain, dataclasses.asdict(fit)
            if read_noise == "auto":
                read_noise = fit.read_noise
        gain = float(gain)
        cal = calibration.Calibration(
            gain=gain, black_level=float(np.mean(black)), white_level=float(white)
        )
        electrons, mask = (np.asarray(v) for v in calibration.calibrate(data, cal))
    mask = mask * finite
    if scale == "auto":
        scale = noise_estimation.auto_scale(electrons[0, :, :, 0], background)
    psf_fit = None
    if psf == psfs.AUTO:  # a Moffat fitted to the first frame's stars (all channels summed)
        try:
            fit = psfs.fit_moffat(
                electrons[0].sum(axis=-1),
                read_noise=float(read_noise) * math.sqrt(electrons.shape[-1]),
                valid=mask[0].min(axis=-1),
            )
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        operator = operators.Blur.of(
            psfs.parse(fit.spec), source=f"{fit.spec} (auto, {fit.num_stars} stars)"
        )
        psf_fit = dataclasses.asdict(fit) | {"spec": fit.spec}
    return Measurement(
        path=path,
        electrons=electrons,
        mask=mask,
        meta=meta,
        operator=operator,
        units=units,
        scale=scale,
        read_noise=read_noise,
        background=background,
        gain=gain,
        estimate=estimate,
        num_nonfinite=num_nonfinite,
        psf_fit=psf_fit,
        encoding=(
            "srgb"
            if np.dtype(meta.dtype) == np.uint8 and linearise == "none" and meta.format != "raw"
            else "linear"
        ),
    )
