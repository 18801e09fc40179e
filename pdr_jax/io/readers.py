"""Image file readers: PNG/JPEG, TIFF (pdr_jax.io.tiff), FITS, camera RAW, .npy and the bundled
scikit-image files.

Every reader returns ``(array, meta)``:

    array: [N, H, W, C] array-like of the *stored* values (N frames, C channels), indexable with
           ``array[n, y0:y1, x0:x1, :]``. Large uncompressed files are memory-mapped, so indexing
           materialises only the requested patch; compressed multi-page TIFFs decode one page at
           a time. Nothing is normalised here: that needs the calibration (see ``ImageMeta``).
    meta:  ImageMeta with bit depth, white/black level, gain and read noise when the file says so,
           the FITS BSCALE/BZERO as ``scale``/``offset``, and a header dict.

A file that cannot be read, is truncated or has no 2-D image raises ``UnreadableImageError``;
``sources.py`` turns that into one skipped file with one log line.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from pdr_jax.io.meta import (
    RAW_EXTENSIONS,
    ImageMeta,
    UnreadableImageError,
    check_image_array,
    integer_white,
    is_file_backed,
    unreadable,
)
from pdr_jax.io.tiff import read_tiff

SKIMAGE_SCHEME = "skimage://"

# Luminance weights for linear RGB -> gray; the ones skimage.color.rgb2gray uses (Rec. 709).
LUMINANCE_WEIGHTS = (0.2125, 0.7154, 0.0721)


# PNG / JPEG (Pillow). Decoded in full: these formats cannot be memory-mapped.


def read_pillow(path) -> tuple[np.ndarray, ImageMeta]:
    """PNG/JPEG (and anything else Pillow opens): [1, H, W, C] uint8/uint16/int32/float32."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()  # raises on truncated data
            fmt = (img.format or "pillow").lower()
            if img.mode in ("P", "PA"):
                img = img.convert(
                    "RGBA" if "transparency" in img.info or img.mode == "PA" else "RGB"
                )
            elif img.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("L" if img.mode == "1" else "RGB")
            mode = img.mode
            array = np.asarray(img)
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ...)
        raise unreadable(path, e) from e
    if mode.startswith("I;16"):
        array, bit_depth = array.astype(np.uint16), 16
    elif mode == "I":  # 32-bit integer mode: Pillow's mode for some 16-bit PNGs
        bit_depth = 16 if fmt == "png" else None
    elif mode == "F":
        bit_depth = None
    else:
        bit_depth = 8
    if array.ndim == 2:
        array = array[:, :, None]
    array = array[None]
    check_image_array(array.shape, array.dtype, path)
    names = {"RGB": ("R", "G", "B"), "RGBA": ("R", "G", "B", "A"), "LA": ("L", "A")}.get(mode)
    meta = ImageMeta(
        format="jpeg" if fmt in ("jpeg", "mpo") else fmt,
        dtype=str(array.dtype),
        bit_depth=bit_depth,
        white_level=integer_white(array.dtype, bit_depth),
        black_level=0.0,
        channel_names=names,
        header={"mode": mode},
    )
    return array, meta


# FITS (astropy): memory-mapped, BSCALE/BZERO applied per patch so the mapping survives.

_FITS_GAIN_KEYS = ("GAIN", "EGAIN", "CCDGAIN")
_FITS_READ_NOISE_KEYS = ("RDNOISE", "READNOIS", "RON", "READNOISE")
_FITS_SATURATION_KEYS = ("SATURATE", "SATLEVEL", "MAXLIN")


def _first_header_value(header, keys) -> float | None:
    """The first of keys whose card holds a number; unparsable cards (astropy's VerifyError)
    count as absent."""
    for key in keys:
        try:
            value = header.get(key)
        except Exception:  # noqa: BLE001 - astropy raises VerifyError for a malformed card
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def read_fits(path) -> tuple[np.ndarray, ImageMeta]:
    """The first image HDU with >= 2 axes: [N, H, W, 1] in stored units (memory-mapped).

    Opened with ``do_not_scale_image_data`` so that integer data stays mapped (astropy would
    otherwise scale the whole array into memory); ``meta.scale``/``meta.offset`` carry
    BSCALE/BZERO. Gain, read noise and saturation come from the usual header keywords.
    """
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyUserWarning

    path = str(path)
    try:
        with warnings.catch_warnings():  # a truncation warning would duplicate our skip line
            warnings.simplefilter("ignore", AstropyUserWarning)
            hdul = fits.open(path, memmap=True, do_not_scale_image_data=True)
            hdu = next((h for h in hdul if h.is_image and h.header.get("NAXIS", 0) >= 2), None)
            data = None if hdu is None else hdu.data  # raises on a truncated file
        if hdu is None:
            raise UnreadableImageError(f"{path}: no image HDU with 2 or more axes")
        header = hdu.header
        scale, offset = float(header.get("BSCALE", 1.0)), float(header.get("BZERO", 0.0))
        if data is None:
            raise UnreadableImageError(f"{path}: image HDU without data")
        array = data.reshape((-1, *data.shape[-2:]))[..., None]
    except UnreadableImageError:
        raise
    except Exception as e:
        raise unreadable(path, e) from e
    check_image_array(array.shape, array.dtype, path)
    white = _first_header_value(header, _FITS_SATURATION_KEYS)
    bit_depth = None
    if np.issubdtype(array.dtype, np.integer):
        bit_depth = abs(int(header["BITPIX"]))
        if white is None:
            white = float(np.iinfo(array.dtype).max) * scale + offset
    cards = {}
    for card in header.cards:
        if card.keyword and card.keyword not in ("COMMENT", "HISTORY"):
            try:
                cards[card.keyword] = card.value
            except Exception:  # noqa: BLE001 - an unparsable card (astropy's VerifyError): leave it out
                continue
    meta = ImageMeta(
        format="fits",
        dtype=str(array.dtype),
        bit_depth=bit_depth,
        white_level=white,
        black_level=_first_header_value(header, ("PEDESTAL", "BIASLEV")),
        gain=_first_header_value(header, _FITS_GAIN_KEYS),
        read_noise=_first_header_value(header, _FITS_READ_NOISE_KEYS),
        scale=scale,
        offset=offset,
        memmapped=is_file_backed(data),
        header=cards,
    )
    return array, meta


# Camera RAW (rawpy / LibRaw): Bayer planes packed, or demosaiced to linear RGB.


def read_raw(path, mode: str = "packed") -> tuple[np.ndarray, ImageMeta]:
    """.arw/.dng/.nef/.cr2 via rawpy.

    mode="packed": the 2x2 Bayer mosaic as 4 planes [1, H/2, W/2, 4] uint16 (raster order of the
        CFA cell; ``meta.channel_names`` says which colour each is), with the camera's per-plane
        black level and its white level in ``meta``.
    mode="demosaic": LibRaw's linear (gamma 1, no auto-brightening) 16-bit RGB with the camera
        white balance, [1, H, W, 3] uint16; black is already subtracted and white is 65535.
    mode="mosaic": the Bayer mosaic itself, [1, H, W, 1] uint16 (cropped to even sides), for
        pdr-restore's RAW path: ``meta.header`` adds "cfa_pattern" (the 2x2 cell from the top-left
        pixel, e.g. "RGGB"), "cfa_black" (the black level of each cell position, [[.., ..],
        [.., ..]]) and "white_balance" (the camera's R, G, B multipliers, green 1); the black
        level in ``meta`` is their mean.
    LibRaw does not report the sensor gain; give it in the source calibration when it matters.
    """
    import rawpy

    path = str(path)
    if mode not in ("packed", "demosaic", "mosaic"):
        raise ValueError(f"raw mode must be 'packed', 'demosaic' or 'mosaic', got {mode!r}")
    try:
        with rawpy.imread(path) as raw:
            pattern = np.asarray(raw.raw_pattern) if raw.raw_pattern is not None else None
            color_desc = raw.color_desc.decode(errors="replace")
            black_per_color = [float(v) for v in raw.black_level_per_channel]
            white_per_color = raw.camera_white_level_per_channel
            white = float(max(white_per_color) if white_per_color else raw.white_level)
            header = {
                "color_desc": color_desc,
                "raw_pattern": None if pattern is None else pattern.tolist(),
                "black_level_per_channel": black_per_color,
                "white_level": float(raw.white_level),
                "camera_whitebalance": [float(v) for v in raw.camera_whitebalance],
                "sizes": raw.sizes._asdict(),
            }
            if mode == "demosaic":
                rgb = raw.postprocess(
                    gamma=(1, 1),
                    no_auto_bright=True,
                    output_bps=16,
                    use_camera_wb=True,
                    user_flip=0,
                )
                array, black, white, names = rgb[None], 0.0, 65535.0, ("R", "G", "B")
            else:
                if pattern is None or pattern.shape != (2, 2):
                    raise UnreadableImageError(
                        f"{path}: not a 2x2 Bayer sensor (pattern {header['raw_pattern']}); "
                        "use raw_mode='demosaic'"
                    )
                mosaic = raw.raw_image_visible
                h, w = mosaic.shape[0] // 2 * 2, mosaic.shape[1] // 2 * 2
            if mode == "mosaic":
                cell = [[color_desc[int(c)] for c in row] for row in pattern]
                if sorted("".join(map("".join, cell))) != sorted("RGGB"):
                    raise UnreadableImageError(
                        f"{path}: CFA colours {cell} are not a Bayer R, G, G, B cell"
                    )
                wb = [float(v) for v in raw.camera_whitebalance[:3]]
                header.update(
                    cfa_pattern="".join(map("".join, cell)),
                    cfa_black=[[black_per_color[int(c)] for c in row] for row in pattern],
                    white_balance=[v / wb[1] for v in wb] if all(v > 0 for v in wb) else None,
                )
                array = np.asarray(mosaic[:h, :w])[None, :, :, None].copy()
                names = ("CFA",)
                black = float(np.mean(header["cfa_black"]))
            elif mode == "packed":
                cells = [(0, 0), (0, 1), (1, 0), (1, 1)]
                planes = [mosaic[dy:h:2, dx:w:2] for dy, dx in cells]
                array = np.stack(planes, axis=-1)[None].copy()
                colors = [int(pattern[dy, dx]) for dy, dx in cells]
                names = tuple(
                    "G2" if c == 3 and color_desc[3] == "G" else color_desc[c] for c in colors
                )
                black = tuple(black_per_color[c] for c in colors)
    except UnreadableImageError:
        raise
    except Exception as e:
        raise unreadable(path, e) from e
    check_image_array(array.shape, array.dtype, path)
    meta = ImageMeta(
        format="raw",
        dtype=str(array.dtype),
        bit_depth=int(np.ceil(np.log2(white + 1))),
        white_level=white,
        black_level=black,
        channel_names=names,
        header=header,
    )
    return array, meta


# NumPy .npy: memory-mapped.


def read_npy(path) -> tuple[np.ndarray, ImageMeta]:
    """[H, W], [H, W, C] (C <= 4), [N, H, W] (N > 4) or [N, H, W, C] arrays, memory-mapped.

    A 3-D array is read as channels-last when its last axis has at most 4 entries, else as a
    stack of frames; 3 channels are R, G, B. Integer data has the dtype's full range as white
    level.
    """
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:
        raise unreadable(path, e) from e
    if array.ndim == 2:
        array = array[None, :, :, None]
    elif array.ndim == 3:
        array = array[None] if array.shape[-1] <= 4 else array[..., None]
    check_image_array(array.shape, array.dtype, path)
    meta = ImageMeta(
        format="npy",
        dtype=str(array.dtype),
        bit_depth=8 * array.dtype.itemsize if np.issubdtype(array.dtype, np.integer) else None,
        white_level=integer_white(array.dtype),
        black_level=0.0,
        channel_names=("R", "G", "B") if array.shape[-1] == 3 else None,
        memmapped=True,
    )
    return array, meta


# The scikit-image files bundled in its wheel (the embedded default data set).

# name -> (skimage.data function, index into its result or None). Only files that ship inside the
# skimage wheel; moon, cell and retina are reserved for evaluation and must not appear here.
SKIMAGE_IMAGES: dict[str, tuple[str, int | None]] = {
    "astronaut": ("astronaut", None),
    "camera": ("camera", None),
    "chelsea": ("chelsea", None),
    "coffee": ("coffee", None),
    "rocket": ("rocket", None),
    "motorcycle_left": ("stereo_motorcycle", 0),
    "coins": ("coins", None),
    "brick": ("brick", None),
    "grass": ("grass", None),
    "gravel": ("gravel", None),
    "immunohistochemistry": ("immunohistochemistry", None),
    "hubble_deep_field": ("hubble_deep_field", None),
}
_SKIMAGE_FILES = {  # the file each loader reads from skimage.data.data_dir
    "astronaut": "astronaut.png",
    "camera": "camera.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "motorcycle_left": "motorcycle_left.png",
    "coins": "coins.png",
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "immunohistochemistry": "ihc.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
}


def read_skimage(name: str) -> tuple[np.ndarray, ImageMeta]:
    """A bundled scikit-image picture by name (see SKIMAGE_IMAGES): [1, H, W, C] uint8.

    These files ship inside the scikit-image wheel; nothing is downloaded. If an install lacks
    one (a trimmed wheel would make skimage try a pooch download), this raises instead of
    touching the network.
    """
    import skimage.data

    if name not in SKIMAGE_IMAGES:
        raise UnreadableImageError(f"{SKIMAGE_SCHEME}{name}: not one of {sorted(SKIMAGE_IMAGES)}")
    bundled = os.path.join(skimage.data.data_dir, _SKIMAGE_FILES[name])
    if not os.path.exists(bundled):
        raise RuntimeError(
            f"scikit-image file {bundled} is missing from this install: the embedded default "
            "data set needs the files bundled in the scikit-image wheel (no download is tried). "
            "Reinstall scikit-image or configure data sources."
        )
    function, index = SKIMAGE_IMAGES[name]
    array = getattr(skimage.data, function)()
    array = np.asarray(array if index is None else array[index])
    array = (array[:, :, None] if array.ndim == 2 else array)[None]
    names = ("R", "G", "B") if array.shape[-1] == 3 else None
    meta = ImageMeta(
        format="skimage",
        dtype=str(array.dtype),
        bit_depth=8,
        white_level=255.0,
        black_level=0.0,
        channel_names=names,
        header={"name": name, "file": _SKIMAGE_FILES[name]},
    )
    return array, meta


# Dispatch on the file name.

READERS: dict[str, Callable] = {
    ".png": read_pillow,
    ".jpg": read_pillow,
    ".jpeg": read_pillow,
    ".tif": read_tiff,
    ".tiff": read_tiff,
    ".fits": read_fits,
    ".fit": read_fits,
    ".fts": read_fits,
    ".npy": read_npy,
    **{ext: read_raw for ext in RAW_EXTENSIONS},
}


def is_supported(path) -> bool:
    """Whether read_image knows the file's extension (or it is a skimage:// name)."""
    path = str(path)
    return path.startswith(SKIMAGE_SCHEME) or pathlib.Path(path).suffix.lower() in READERS


def expand_inputs(inputs) -> list[pathlib.Path]:
    """The files of `inputs` (paths of files or folders): a file as given, a folder's files
    that read_image supports, sorted by name."""
    files = []
    for item in inputs:
        path = pathlib.Path(item)
        if path.is_dir():
            files += sorted(f for f in path.iterdir() if f.is_file() and is_supported(f))
        else:
            files.append(path)
    return files


def read_image(path, *, raw_mode: str = "packed") -> tuple[Any, ImageMeta]:
    """Read any supported file (or ``skimage://name``): ([N, H, W, C] array-like, ImageMeta).

    Every failure is an UnreadableImageError naming the file: the readers' own checks, and any
    exception the underlying libraries (astropy, tifffile, Pillow, rawpy, numpy) raise.
    """
    path = str(path)
    if path.startswith(SKIMAGE_SCHEME):
        return read_skimage(path[len(SKIMAGE_SCHEME) :])
    suffix = pathlib.Path(path).suffix.lower()
    if suffix not in READERS:
        raise UnreadableImageError(f"{path}: unsupported extension {suffix!r}")
    if not os.path.isfile(path):
        raise UnreadableImageError(f"{path}: no such file")
    try:
        if suffix in RAW_EXTENSIONS:
            return read_raw(path, raw_mode)
        return READERS[suffix](path)
    except UnreadableImageError:
        raise
    except Exception as e:
        raise unreadable(path, e) from e


def to_gray(x: np.ndarray, channel_names: tuple[str, ...] | None) -> np.ndarray:
    """[..., C] normalised values -> [..., 1] gray.

    RGB(A) uses the Rec. 709 luminance weights (alpha dropped); gray+alpha drops alpha; RAW CFA
    planes and any other channel set are averaged (2x2 binning for packed Bayer planes).
    """
    c = x.shape[-1]
    if c == 1:
        return x
    if channel_names and tuple(channel_names[:3]) == ("R", "G", "B"):
        return (x[..., :3] @ np.asarray(LUMINANCE_WEIGHTS, x.dtype))[..., None]
    if channel_names == ("L", "A"):
        return x[..., :1]
    return x.mean(axis=-1, keepdims=True)
