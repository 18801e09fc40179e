"""TIFF files (tifffile): 8/12/16-bit integer and float, multi-page included, as [N, H, W, C].

Memory-mapped when uncompressed and contiguous, decoded page by page (PagedTiff) when
compressed, unpacked with numpy when the samples are 10/12/14-bit packed.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from pdr_jax.io.meta import ImageMeta, UnreadableImageError, check_image_array, unreadable


def _nhwc_view(array, axes: str):
    """View an array with tifffile axes (e.g. 'YX', 'YXS', 'ZCYX', 'SYX') as [N, H, W, C].

    Y, X are the image axes and S (samples: RGB) the channels; every other axis (pages, Z, T,
    C-planes, ...) becomes frames, because the network is grayscale and sees each as one image.
    """
    if "Y" not in axes or "X" not in axes:
        raise UnreadableImageError(f"no Y/X axes in {axes!r}")
    if "S" not in axes:
        array, axes = array[..., None], axes + "S"
    order = [i for i, a in enumerate(axes) if a not in "YXS"] + [axes.index(a) for a in "YXS"]
    array = np.transpose(array, order) if order != list(range(len(axes))) else array
    return array.reshape((-1, *array.shape[-3:]))


class PagedTiff:
    """[N, H, W, C] view of a TIFF whose frames are pages, decoding only the page indexed.

    Used for compressed or non-contiguous files that tifffile cannot memory-map. The last
    decoded page is kept, so consecutive crops of one page decode it once.
    """

    def __init__(self, path, page_indices: tuple[int, ...], frame_axes: str, frame_shape, dtype):
        self.path = str(path)
        self.page_indices = page_indices
        self.frame_axes = frame_axes  # axes of one page, e.g. "YX", "YXS", "SYX"
        self.shape = (len(page_indices), *frame_shape)
        self.dtype = np.dtype(dtype)
        self._cached: tuple[int, np.ndarray] | None = None

    @property
    def nbytes(self) -> int:  # what stays decoded: one page
        return int(np.prod(self.shape[1:])) * self.dtype.itemsize

    def _page(self, n: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != n:
            import tifffile

            try:
                page = tifffile.imread(self.path, key=self.page_indices[n])
                self._cached = (n, _nhwc_view(page, self.frame_axes)[0])
            except UnreadableImageError:
                raise
            except Exception as e:
                raise unreadable(self.path, e, f"page {n}") from e
        return self._cached[1]

    def __getitem__(self, index):
        if not isinstance(index, tuple):
            index = (index,)
        n, rest = index[0], index[1:]
        if isinstance(n, (int, np.integer)):
            return self._page(int(n))[rest]
        return np.stack([self._page(i)[rest] for i in range(self.shape[0])[n]])

    def __array__(self, dtype=None, copy=None):
        array = self[:]
        return array if dtype is None else array.astype(dtype)


def _unpack_uint_be(data: bytes, bits: int, height: int, width: int) -> np.ndarray:
    """Unpack big-endian packed unsigned integers (TIFF BitsPerSample 10/12/14), rows byte-padded.

    tifffile needs the optional imagecodecs package for this; uncompressed files are simple
    enough to unpack with numpy.
    """
    row_bytes = (width * bits + 7) // 8
    raw = np.frombuffer(data, np.uint8)[: row_bytes * height].reshape(height, row_bytes)
    bit_array = np.unpackbits(raw, axis=1)[:, : width * bits].reshape(height, width, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.uint16)
    return (bit_array.astype(np.uint16) * weights).sum(-1).astype(np.uint16)


def _read_packed_tiff_page(path, page) -> np.ndarray:
    """Decode one uncompressed, single-sample page with 10/12/14-bit packed integers."""
    if page.compression != 1 or page.samplesperpixel != 1 or page.fillorder != 1:
        raise UnreadableImageError(
            f"{path}: {page.bitspersample}-bit TIFF with compression/samples needs imagecodecs"
        )
    rows = []
    with open(path, "rb") as f:
        rows_per_strip = page.rowsperstrip or page.imagelength
        for i, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts)):
            f.seek(offset)
            strip_rows = min(rows_per_strip, page.imagelength - i * rows_per_strip)
            rows.append(
                _unpack_uint_be(f.read(count), page.bitspersample, strip_rows, page.imagewidth)
            )
    return np.concatenate(rows)


def _tiff_header(page, tif) -> dict[str, Any]:
    """Small scalar/string tags of the first page, plus ImageJ metadata when present."""
    header = {}
    for tag in page.tags:
        value = tag.value
        if (
            tag.name in ("XResolution", "YResolution")
            and isinstance(value, tuple)
            and len(value) == 2
        ):
            header[tag.name] = (
                value[0] / value[1] if value[1] else 0.0
            )  # a rational: pixels per unit
            continue
        if isinstance(value, (int, float, str)) and not (
            isinstance(value, str) and len(value) > 2000
        ):
            header[tag.name] = value
    if tif.imagej_metadata:
        header["imagej"] = {k: v for k, v in tif.imagej_metadata.items() if np.isscalar(v)}
    return header


def read_tiff(path) -> tuple[Any, ImageMeta]:
    """8/12/16-bit integer and float TIFF, multi-page included: [N, H, W, C].

    Uncompressed contiguous files are memory-mapped (tifffile.memmap); compressed multi-page
    files decode page by page (PagedTiff). Truncated files are detected from the strip/tile
    offsets, because tifffile reads missing bytes as zeros without complaint.
    """
    import tifffile

    path = str(path)
    try:
        tif = tifffile.TiffFile(path)
    except Exception as e:
        raise unreadable(path, e) from e
    with tif:
        try:
            series = tif.series[0]
            pages = [p for p in series.pages if p is not None]
            page0 = pages[0]
            size = os.path.getsize(path)
            for page in pages:
                end = max((o + c for o, c in zip(page.dataoffsets, page.databytecounts)), default=0)
                if end > size or 0 in page.databytecounts:
                    raise UnreadableImageError(f"{path}: truncated ({size} bytes, data to {end})")
            axes, shape, dtype = series.axes, series.shape, np.dtype(series.dtype)
            bits = page0.bitspersample
            header = _tiff_header(page0, tif)
            max_sample = page0.tags.valueof(281)  # MaxSampleValue: e.g. 4095 for 12-bit in 16
            names = ("R", "G", "B") if page0.photometric == 2 else None
            frame_axes = "".join(a for a in axes if a in "YXS")
            packed = bits not in (8, 16, 32, 64) and np.issubdtype(dtype, np.integer)
            if packed:  # 10/12/14-bit packed samples
                array = np.stack([_read_packed_tiff_page(path, p) for p in pages])
                array = _nhwc_view(array.reshape(len(pages), *page0.shape), "I" + frame_axes)
                memmapped = False
            elif series.dataoffset is not None:  # uncompressed and contiguous
                array = _nhwc_view(tifffile.memmap(path, series=0, mode="r"), axes)
                memmapped = True
            elif len(pages) > 1 and len(pages) == int(np.prod(shape)) // int(np.prod(page0.shape)):
                frame = _nhwc_view(np.empty(page0.shape, np.uint8), frame_axes).shape[1:]
                array = PagedTiff(path, tuple(p.index for p in pages), frame_axes, frame, dtype)
                memmapped = False
            else:
                array = _nhwc_view(series.asarray(), axes)
                memmapped = False
        except UnreadableImageError:
            raise
        except Exception as e:
            raise unreadable(path, e) from e
    check_image_array(array.shape, dtype, path)
    if np.issubdtype(dtype, np.integer):
        white = float(max_sample) if max_sample and max_sample < 2**bits - 1 else 2.0**bits - 1
        bit_depth = int(np.ceil(np.log2(white + 1)))
    else:
        white, bit_depth = None, None
    meta = ImageMeta(
        format="tiff",
        dtype=str(dtype),
        bit_depth=bit_depth,
        white_level=white,
        black_level=0.0,
        channel_names=names,
        memmapped=memmapped,
        header=header,
    )
    return array, meta
