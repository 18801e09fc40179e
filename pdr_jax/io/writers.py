"""Restorations to files, with the input's metadata, atomically; the preview and the report.

The format follows the extension (OUTPUT_FORMATS): the restored clean intensity x in [0, 1]
float32 (.png: 16 bit, grayscale). A FITS output keeps the input FITS header (WCS, exposure...)
and adds HISTORY cards; a TIFF output keeps the input TIFF's resolution and ImageJ metadata and
describes the restoration; .npy and 16-bit PNG outputs keep no metadata. `write_restoration`
writes a file's outputs together (`write_together`): all of them or none.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import tempfile

import numpy as np

OUTPUT_FORMATS = (".npy", ".tif", ".tiff", ".fits", ".fit", ".png")
# FITS cards that describe the stored array, not the image: written afresh for the output.
_FITS_STRUCTURAL = {
    "SIMPLE",
    "BITPIX",
    "EXTEND",
    "BSCALE",
    "BZERO",
    "BLANK",
    "XTENSION",
    "PCOUNT",
    "GCOUNT",
    "CHECKSUM",
    "DATASUM",
    "BUNIT",
    "DATAMIN",
    "DATAMAX",
}


def check_output_format(path, channels: int | None) -> None:
    """ValueError before restoring when the output format is unknown or cannot hold the image's
    channels (None: not known yet, only the format is checked)."""
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(
            f"{path}: unknown output format {suffix!r}; expected one of {OUTPUT_FORMATS}"
        )
    if suffix == ".png" and channels not in (1, None):
        raise ValueError(
            f"{path}: 16-bit PNG output is grayscale only; use .tif for {channels} channels"
        )


def check_not_input(path, outputs) -> None:
    """ValueError before any work when an output is the input file itself (the same path, or
    a link to it): restoring must never destroy the measurement."""
    path = pathlib.Path(path)
    for output in outputs:
        output = pathlib.Path(output)
        same = output.resolve() == path.resolve() or (
            output.exists() and os.path.samefile(output, path)
        )
        if same:
            raise ValueError(
                f"{output} is the input file {path}: refusing to overwrite the measurement; "
                "choose another --output"
            )


def check_outputs(path, outputs, figures=()) -> None:
    """ValueError before any work when an output (or a figure: only this check) is the input
    file `path`, or an output's format is unknown or cannot hold the input's channels (a PNG
    output decodes the input to count them)."""
    from pdr_jax.io.readers import read_image

    outputs = [pathlib.Path(output) for output in outputs]
    check_not_input(path, [*outputs, *figures])
    png = any(output.suffix.lower() == ".png" for output in outputs)
    channels = read_image(path)[0].shape[-1] if png else None
    for output in outputs:
        check_output_format(output, channels)


def check_writable(path) -> None:
    """OSError unless a file can be created in path's folder (made if missing). A probe file,
    not permission bits, so a read-only mount or a file in the folder's place is caught for
    root too."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path.parent):
        pass


def electrons_path(out_path) -> pathlib.Path:
    """Where s*x+b of an output is written (pdr-restore --save-electrons): its name with the
    suffix _electrons."""
    out_path = pathlib.Path(out_path)
    return out_path.with_name(out_path.stem + "_electrons" + out_path.suffix)


def _fits_header(meta, history: list[str]):
    """The input's FITS cards (WCS, exposure, ...) minus the structural ones, plus HISTORY."""
    from astropy.io import fits

    header = fits.Header()
    if meta is not None and meta.format == "fits":
        for key, value in meta.header.items():
            if key not in _FITS_STRUCTURAL and not key.startswith("NAXIS"):
                try:
                    header[key] = value
                except (ValueError, TypeError):  # a value astropy cannot write back: leave it out
                    continue
    header["BUNIT"] = ("", "clean intensity x in [0, 1] (pdr_jax)")
    for line in history:
        header.add_history(line)
    return header


def _tiff_metadata(meta) -> dict:
    """tifffile.imwrite arguments that keep the input TIFF's resolution and ImageJ metadata."""
    if meta is None or meta.format != "tiff":
        return {}
    kwargs = {}
    header = meta.header
    if "XResolution" in header and "YResolution" in header:
        kwargs["resolution"] = (header["XResolution"], header["YResolution"])
        if "ResolutionUnit" in header:
            kwargs["resolutionunit"] = header["ResolutionUnit"]
    if header.get("imagej"):  # its own layout keys are written afresh by tifffile
        layout = {"ImageJ", "images", "channels", "slices", "frames", "hyperstack", "mode", "loop"}
        kwargs.update(
            imagej=True, metadata={k: v for k, v in header["imagej"].items() if k not in layout}
        )
    return kwargs


def write_together(writes) -> None:
    """Write each (path, write) pair's file as write(temporary path): a temporary file in the
    path's folder, all of them renamed into place once every one is complete. A failure (a
    full disk, say) removes the temporary files and leaves no partial output and no half of a
    file's outputs; a symlink at a path is replaced, never written through."""
    umask = os.umask(0)
    os.umask(umask)
    temporary = []
    try:
        for path, write in writes:
            path = pathlib.Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(
                prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent
            )
            os.close(handle)
            temporary.append((pathlib.Path(name), path))
            write(pathlib.Path(name))
            os.chmod(name, 0o666 & ~umask)  # mkstemp's 0600 -> what a plain open would give
    except BaseException:
        for name, _ in temporary:
            name.unlink(missing_ok=True)
        raise
    for name, path in temporary:
        os.replace(name, path)


def write_image(path, x: np.ndarray, meta=None, history=()) -> None:
    """x [H, W] / [H, W, C] / [F, H, W, C] float32 to path by its extension. A FITS output keeps
    the input FITS header (WCS included) with `history` as HISTORY cards; a TIFF output keeps the
    input TIFF's resolution and ImageJ metadata; .npy and 16-bit PNG keep nothing. meta: the
    input's pdr_jax.io.readers.ImageMeta, or None."""
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(path, x.astype(np.float32))
    elif suffix in (".tif", ".tiff"):
        import tifffile

        kwargs = _tiff_metadata(meta)
        if kwargs.get("imagej"):
            kwargs["metadata"] = {**kwargs["metadata"], "Info": "\n".join(history)}
        else:
            kwargs["description"] = "\n".join(history) or None
            # Colour as RGB samples, anything else as gray pages (tifffile asks to say which).
            kwargs["photometric"] = "rgb" if x.ndim >= 3 and x.shape[-1] == 3 else "minisblack"
        tifffile.imwrite(path, x.astype(np.float32), **kwargs)
    elif suffix in (".fits", ".fit"):
        from astropy.io import fits

        fits.PrimaryHDU(x.astype(np.float32), header=_fits_header(meta, list(history))).writeto(
            path, overwrite=True
        )
    elif suffix == ".png":
        from PIL import Image

        if x.ndim == 3 and x.shape[-1] != 1:
            raise ValueError(
                f"{path}: 16-bit PNG output is grayscale only; use .tif for {x.shape[-1]} channels"
            )
        Image.fromarray(
            np.round(np.clip(x.reshape(x.shape[:2]), 0, 1) * 65535).astype(np.uint16)
        ).save(path)
    else:
        raise ValueError(
            f"{path}: unknown output format {suffix!r}; expected one of {OUTPUT_FORMATS}"
        )


def write_preview(
    preview_path, path, y, x, std, mask, physics, chi_square: float, encoding: str = "linear"
) -> None:
    """The preview figure of one restored frame (pdr_jax.evaluation.report): y, mask
    [H, W, C'] (the measurement of physics.operator), x [H, W, C] (3 channels shown as sRGB:
    encoded from linear light, or as they are for encoding "srgb"), std like x or None; path:
    the input, named in the title. A mosaic is shown demosaicked (operator.fill), its residual
    per pixel."""
    from pdr_jax.evaluation.report import plot_restoration_preview

    s, r, b = physics.s, physics.r, physics.b
    operator = physics.operator
    mean = s * np.asarray(operator.forward(x[None]))[0] + b
    residual = np.where(mask, (y - mean) / np.sqrt(np.maximum(mean, 0.0) + r**2), np.nan)
    noisy = operator.fill((y - b) / s) / operator.channel_gains
    squeeze = lambda a: a[..., 0] if a.shape[-1] == 1 else a
    residual, noisy, x = squeeze(residual), squeeze(noisy), squeeze(x)
    if residual.ndim == 3:  # colour: the channels' residuals summed / sqrt(C), still ~N(0, 1)
        residual = residual.sum(-1) / np.sqrt(residual.shape[-1])
    std = None if std is None else (std.mean(-1) if std.shape[-1] > 1 else std[..., 0])
    title = (
        f"{pathlib.Path(path).name}: chi-square {chi_square:.3f}  ({physics.domain}, "
        f"s = {s:g} e-, r = {r:g} e-, b = {b:g} e-)"
    )
    plot_restoration_preview(
        preview_path,
        noisy=noisy,
        restored=x,
        residual=residual,
        std=std,
        title=title,
        encoded=encoding == "srgb",
    )


def file_layout(a: np.ndarray) -> np.ndarray:
    """[F, H, W, C] -> the layout written: the frame axis dropped for one frame, the channel
    axis for one channel ([H, W], [H, W, C], [F, H, W] or [F, H, W, C])."""
    a = a[0] if a.shape[0] == 1 else a
    return a[..., 0] if a.shape[-1] == 1 else a


def write_restoration(
    out_path,
    restoration,
    measurement,
    physics,
    *,
    history=(),
    std_path=None,
    electrons_path=None,
    preview_path=None,
) -> None:
    """Write a pdr_jax.io.restoration.MeasurementRestoration of `measurement` (restored with
    `physics`) to out_path with the input's metadata and `history` (lines saying how it was
    restored); std_path: its posterior std (restoration.std); electrons_path: s*x+b, no
    metadata; preview_path: the preview PNG of the first frame. All the files or none
    (write_together)."""
    image, meta = file_layout(restoration.image), measurement.meta
    writes = [(out_path, lambda tmp: write_image(tmp, image, meta, history))]
    if std_path is not None:
        std_history = [*history, "values: per-pixel posterior std"]
        std = file_layout(restoration.std)
        writes.append((std_path, lambda tmp: write_image(tmp, std, meta, std_history)))
    if electrons_path is not None:
        electrons = physics.s * image + physics.b
        writes.append((electrons_path, lambda tmp: write_image(tmp, electrons)))
    if preview_path is not None:
        measured, width = restoration.measured, restoration.width
        preview = functools.partial(
            write_preview,
            path=measurement.path,
            y=measurement.electrons[0, :, :, :measured],
            x=restoration.image[0, :, :, :width],
            std=restoration.first_std,
            mask=measurement.mask[0, :, :, :measured],
            physics=physics,
            chi_square=restoration.reports[0]["chi_square"],
            encoding=measurement.encoding,
        )
        writes.append((preview_path, preview))
    write_together(writes)


def write_report(path, content: dict) -> None:
    """content as indented JSON at path, atomically (write_together)."""
    write_together(
        [(path, lambda tmp: pathlib.Path(tmp).write_text(json.dumps(content, indent=2)))]
    )
