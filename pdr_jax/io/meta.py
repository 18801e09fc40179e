"""What a file says about its stored values (ImageMeta), and the error of a file that is not an
image (UnreadableImageError): shared by every reader in pdr_jax.io."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np


class UnreadableImageError(ValueError):
    """A file that is not a readable image: corrupt, truncated, or of an unusable shape."""


RAW_EXTENSIONS = (".arw", ".dng", ".nef", ".cr2")  # camera RAW files, read through rawpy
# What a file was taken for, by its extension (the readers' errors).
FORMAT_NAMES = {
    **{ext: "PNG/JPEG" for ext in (".png", ".jpg", ".jpeg")},
    **{ext: "TIFF" for ext in (".tif", ".tiff")},
    **{ext: "FITS" for ext in (".fits", ".fit", ".fts")},
    ".npy": "NumPy .npy",
    **{ext: f"camera RAW ({ext[1:].upper()})" for ext in RAW_EXTENSIONS},
}


def unreadable(path, error: Exception, part: str = "") -> UnreadableImageError:
    """The error for a file (its `part`, e.g. "page 3") that the library behind its extension
    could not read: the file, the format its extension promised, the library's own words."""
    suffix = pathlib.PurePath(str(path)).suffix.lower()
    kind = FORMAT_NAMES.get(suffix, suffix.lstrip(".").upper() or "image")
    where = f"{path}, {part}" if part else f"{path}"
    return UnreadableImageError(
        f"{where}: not a readable {kind} file ({type(error).__name__}: {error})"
    )


@dataclasses.dataclass(frozen=True)
class ImageMeta:
    """What a file says about its values. Physical value = scale * stored + offset."""

    format: str  # "png", "jpeg", "tiff", "fits", "raw", "npy", "skimage"
    dtype: str  # numpy dtype of the stored values
    bit_depth: int | None = None  # bits per sample of integer data
    white_level: float | None = None  # full-scale / saturation value (physical units), if known
    black_level: float | tuple[float, ...] | None = None  # scalar or one per channel
    gain: float | None = None  # electrons per ADU, if known
    read_noise: float | None = None  # electrons, if known
    scale: float = 1.0  # FITS BSCALE
    offset: float = 0.0  # FITS BZERO
    channel_names: tuple[str, ...] | None = None  # e.g. ("R", "G", "B") or RAW CFA planes
    memmapped: bool = False  # True when the array is backed by the file, not decoded
    header: dict[str, Any] = dataclasses.field(default_factory=dict)


def integer_white(dtype: np.dtype, bit_depth: int | None = None) -> float | None:
    """Full scale of integer data: 2**bits - 1 (or the dtype max); None for floats."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.integer):
        return None
    if bit_depth is not None:
        return float(2**bit_depth - 1)
    return float(np.iinfo(dtype).max)


def is_file_backed(array) -> bool:
    """Whether an ndarray (or a view of one) is backed by a memory-mapped file."""
    import mmap

    while array is not None:
        if isinstance(array, (np.memmap, mmap.mmap)):
            return True
        array = getattr(array, "base", None)
    return False


def check_image_array(shape: tuple[int, ...], dtype, path) -> None:
    """Reject what cannot be an image: non-numeric, empty, or fewer than 2 spatial axes."""
    dtype = np.dtype(dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise UnreadableImageError(f"{path}: unsupported dtype {dtype}")
    if len(shape) != 4 or min(shape) == 0:
        raise UnreadableImageError(f"{path}: not an image, shape {shape}")
