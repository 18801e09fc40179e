"""Readers on small real files that the tests write with Pillow, tifffile, astropy and numpy.

The camera RAW case is a DNG written by `write_tiny_dng` below: a baseline TIFF with the DNG
CFA tags (tifffile can write those), which LibRaw reads like a camera's file. .arw/.nef/.cr2
go through the same rawpy code path; no test can create those proprietary formats.
"""

import socket
import struct

import numpy as np
import pytest
import tifffile
from astropy.io import fits
from PIL import Image
from raw_files import write_tiny_dng

from pdr_jax.io import meta as image_meta
from pdr_jax.io import readers, tiff

RNG = np.random.default_rng(0)


def write_packed_tiff(path, values: np.ndarray, bits: int) -> None:
    """A big-endian baseline TIFF with `bits`-bit packed samples (tifffile needs imagecodecs to
    write these, so the test writes the few header bytes itself)."""
    height, width = values.shape
    rows = []
    for row in values:
        bitstring = "".join(format(int(v), f"0{bits}b") for v in row)
        bitstring += "0" * (-len(bitstring) % 8)
        rows.append(int(bitstring, 2).to_bytes(len(bitstring) // 8, "big"))
    data = b"".join(rows)
    entries = [  # (tag, type (3 SHORT, 4 LONG), value)
        (256, 3, width),
        (257, 3, height),
        (258, 3, bits),
        (259, 3, 1),  # no compression
        (262, 3, 1),  # min-is-black
        (273, 4, 0),  # strip offset, set below
        (277, 3, 1),
        (278, 3, height),
        (279, 4, len(data)),
    ]
    data_offset = 8 + 2 + 12 * len(entries) + 4
    out = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", len(entries))
    for tag, kind, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack(">HH", value, 0) if kind == 3 else struct.pack(">I", value)
        out += struct.pack(">HHI", tag, kind, 1) + packed
    out += struct.pack(">I", 0) + data
    path.write_bytes(out)


# PNG / JPEG.


def test_png_8bit_gray_and_rgb(tmp_path):
    gray = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    array, meta = readers.read_image(tmp_path / "g.png")
    assert array.shape == (1, 20, 30, 1) and array.dtype == np.uint8
    np.testing.assert_array_equal(array[0, :, :, 0], gray)
    assert (meta.format, meta.bit_depth, meta.white_level, meta.black_level) == ("png", 8, 255, 0)

    rgb = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    array, meta = readers.read_image(tmp_path / "c.png")
    np.testing.assert_array_equal(array[0], rgb)
    assert meta.channel_names == ("R", "G", "B")


def test_png_16bit(tmp_path):
    values = RNG.integers(0, 65536, (10, 14), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "a16.png")
    array, meta = readers.read_image(tmp_path / "a16.png")
    assert array.dtype == np.uint16
    np.testing.assert_array_equal(array[0, :, :, 0], values)
    assert (meta.bit_depth, meta.white_level) == (16, 65535)


def test_jpeg(tmp_path):
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (24, 1))
    Image.fromarray(np.stack([smooth] * 3, -1)).save(tmp_path / "a.jpg", quality=95)
    array, meta = readers.read_image(tmp_path / "a.JPG".lower())
    assert array.shape == (1, 24, 32, 3) and array.dtype == np.uint8
    assert np.abs(array[0, :, :, 1].astype(int) - smooth).max() <= 4  # lossy
    assert (meta.format, meta.white_level) == ("jpeg", 255)


# TIFF.


@pytest.mark.parametrize("dtype, white", [(np.uint8, 255), (np.uint16, 65535)])
def test_tiff_integer_is_memmapped(tmp_path, dtype, white):
    values = RNG.integers(0, white + 1, (16, 20)).astype(dtype)
    tifffile.imwrite(tmp_path / "a.tif", values)
    array, meta = readers.read_image(tmp_path / "a.tif")
    assert isinstance(array, np.memmap) or isinstance(array.base, np.memmap)
    assert meta.memmapped and meta.white_level == white and array.dtype == dtype
    np.testing.assert_array_equal(array[0, 3:7, 5:9, 0], values[3:7, 5:9])


def test_tiff_12bit_packed(tmp_path):
    values = RNG.integers(0, 4096, (6, 9)).astype(np.uint16)
    write_packed_tiff(tmp_path / "p12.tif", values, 12)
    array, meta = readers.read_image(tmp_path / "p12.tif")
    np.testing.assert_array_equal(array[0, :, :, 0], values)
    assert (meta.bit_depth, meta.white_level) == (12, 4095)


def test_tiff_12bit_in_16bit_container(tmp_path):
    values = RNG.integers(0, 4096, (8, 8)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "c12.tif", values, extratags=[(281, "H", 1, 4095, False)])
    array, meta = readers.read_image(tmp_path / "c12.tif")
    np.testing.assert_array_equal(array[0, :, :, 0], values)
    assert (meta.bit_depth, meta.white_level) == (12, 4095)  # from MaxSampleValue


def test_tiff_float(tmp_path):
    values = RNG.random((9, 11)).astype(np.float32) * 7
    tifffile.imwrite(tmp_path / "f.tiff", values)
    array, meta = readers.read_image(tmp_path / "f.tiff")
    assert array.dtype == np.float32 and meta.white_level is None and meta.bit_depth is None
    np.testing.assert_array_equal(array[0, :, :, 0], values)


def test_tiff_multipage_memmapped_and_compressed_paged(tmp_path):
    stack = RNG.integers(0, 65536, (4, 12, 10)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "m.tif", stack, photometric="minisblack")
    array, meta = readers.read_image(tmp_path / "m.tif")
    assert array.shape == (4, 12, 10, 1) and meta.memmapped
    np.testing.assert_array_equal(array[2, :, :, 0], stack[2])

    tifffile.imwrite(tmp_path / "z.tif", stack, photometric="minisblack", compression="zlib")
    array, meta = readers.read_image(tmp_path / "z.tif")
    assert isinstance(array, tiff.PagedTiff) and not meta.memmapped
    assert array.shape == (4, 12, 10, 1)
    np.testing.assert_array_equal(array[3, 2:5, 1:4, 0], stack[3, 2:5, 1:4])
    np.testing.assert_array_equal(array[1][..., 0], stack[1])


def test_tiff_rgb(tmp_path):
    rgb = RNG.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    array, meta = readers.read_image(tmp_path / "rgb.tif")
    assert array.shape == (1, 8, 9, 3) and meta.channel_names == ("R", "G", "B")
    np.testing.assert_array_equal(array[0], rgb)


def test_truncated_tiff_is_unreadable(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.ones((64, 80), np.uint16))
    data = (tmp_path / "a.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(readers.UnreadableImageError, match="truncated"):
        readers.read_image(tmp_path / "cut.tif")


@pytest.mark.parametrize(
    "name, kind", [("h.tif", "TIFF"), ("h.npy", r"NumPy \.npy"), ("h.dng", r"camera RAW \(DNG\)")]
)
def test_a_file_that_is_not_its_format_says_what_it_was_taken_for(tmp_path, name, kind):
    """A header that its reader cannot parse: the error names the file and the format that its
    extension promised, then the reader's own words."""
    assert set(readers.READERS) <= set(image_meta.FORMAT_NAMES)  # every readable extension is named
    (tmp_path / name).write_bytes(b"II*\x00 not an image at all")
    with pytest.raises(
        readers.UnreadableImageError, match=rf"{name}: not a readable {kind} file \("
    ):
        readers.read_image(tmp_path / name)


# FITS.


def test_fits_float_with_header(tmp_path):
    values = RNG.random((10, 12)).astype(np.float32) * 1000
    hdu = fits.PrimaryHDU(values)
    hdu.header["GAIN"] = 1.5
    hdu.header["RDNOISE"] = 4.0
    hdu.header["SATURATE"] = 900.0
    hdu.header["OBJECT"] = "test field"
    hdu.writeto(tmp_path / "a.fits")
    array, meta = readers.read_image(tmp_path / "a.fits")
    assert array.shape == (1, 10, 12, 1) and meta.memmapped
    np.testing.assert_array_equal(np.asarray(array[0, :, :, 0]), values)
    assert (meta.gain, meta.read_noise, meta.white_level) == (1.5, 4.0, 900.0)
    assert meta.header["OBJECT"] == "test field"


def test_fits_uint16_keeps_memmap_and_reports_bzero(tmp_path):
    values = RNG.integers(0, 65536, (3, 8, 9)).astype(np.uint16)  # a cube: 3 frames
    fits.PrimaryHDU(values).writeto(tmp_path / "u.fits")
    array, meta = readers.read_image(tmp_path / "u.fits")
    assert array.shape == (3, 8, 9, 1) and meta.memmapped
    physical = meta.scale * np.asarray(array[..., 0], np.float64) + meta.offset
    np.testing.assert_array_equal(physical, values)
    assert (meta.bit_depth, meta.white_level) == (16, 65535.0)


def test_fits_image_extension(tmp_path):
    values = np.arange(30, dtype=np.float32).reshape(5, 6)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(values)]).writeto(tmp_path / "e.fit")
    array, _ = readers.read_image(tmp_path / "e.fit")
    np.testing.assert_array_equal(np.asarray(array[0, :, :, 0]), values)


def test_truncated_fits_is_unreadable(tmp_path):
    fits.PrimaryHDU(np.ones((64, 80), np.float32)).writeto(tmp_path / "a.fits")
    data = (tmp_path / "a.fits").read_bytes()
    (tmp_path / "cut.fits").write_bytes(data[: len(data) // 2])
    with pytest.raises(readers.UnreadableImageError):
        readers.read_image(tmp_path / "cut.fits")


def test_an_unparsable_header_card_is_left_out_not_fatal(tmp_path):
    """A malformed GAIN card (astropy: VerifyError on access) reads as no gain; the others stay."""
    hdu = fits.PrimaryHDU(np.arange(64, dtype=np.uint16).reshape(8, 8))
    hdu.header["GAIN"], hdu.header["RDNOISE"] = 1.5, 2.0
    hdu.writeto(tmp_path / "a.fits")
    data = bytearray((tmp_path / "a.fits").read_bytes())
    at = data.find(b"GAIN    =")
    data[at : at + 80] = b"GAIN    = 1.5.3.x / broken".ljust(80)
    (tmp_path / "bad.fits").write_bytes(bytes(data))
    array, meta = readers.read_image(tmp_path / "bad.fits")
    assert array.shape == (1, 8, 8, 1) and meta.gain is None and meta.read_noise == 2.0
    assert "GAIN" not in meta.header and meta.header["RDNOISE"] == 2.0


def test_a_library_exception_becomes_the_named_error(tmp_path, monkeypatch):
    """Whatever a reader's library raises reaches the caller as UnreadableImageError with the
    file's name and the original type."""

    def broken(path):
        raise KeyError("BITPIX")

    monkeypatch.setitem(readers.READERS, ".fits", broken)
    fits.PrimaryHDU(np.ones((4, 4), np.float32)).writeto(tmp_path / "a.fits")
    with pytest.raises(
        readers.UnreadableImageError,
        match=r"a\.fits: not a readable FITS file \(KeyError: 'BITPIX'\)",
    ):
        readers.read_image(tmp_path / "a.fits")


# Camera RAW (DNG).


def _rggb_mosaic(h=32, w=48, black=256):  # LibRaw rejects sides under 22 px
    cfa = np.zeros((h, w), np.uint16)
    cfa[0::2, 0::2] = black + 1000  # R
    cfa[0::2, 1::2] = black + 2000  # G
    cfa[1::2, 0::2] = black + 2100  # G2
    cfa[1::2, 1::2] = black + 3000  # B
    return cfa + RNG.integers(0, 4, (h, w)).astype(np.uint16)


def test_dng_packed_planes_with_black_and_white(tmp_path):
    cfa = _rggb_mosaic()
    write_tiny_dng(tmp_path / "a.dng", cfa, black=256, white=4095 + 256)
    array, meta = readers.read_image(tmp_path / "a.dng")
    assert array.shape == (1, 16, 24, 4) and array.dtype == np.uint16
    assert meta.channel_names == ("R", "G", "G2", "B")
    assert meta.black_level == (256.0,) * 4 and meta.white_level == 4351
    np.testing.assert_array_equal(array[0, :, :, 0], cfa[0::2, 0::2])
    np.testing.assert_array_equal(array[0, :, :, 3], cfa[1::2, 1::2])
    assert meta.header["color_desc"] == "RGBG"


def test_dng_mosaic_with_its_pattern_black_per_cell_and_white_balance(tmp_path):
    """raw_mode="mosaic": the whole mosaic [1, H, W, 1], the CFA cell from the top-left pixel as
    letters, each cell position's black level and the camera's multipliers (green 1)."""
    cfa = _rggb_mosaic()
    write_tiny_dng(
        tmp_path / "a.dng",
        cfa,
        black=(250, 256, 258, 262),
        white=4095,
        pattern="GRBG",
        white_balance=(2.0, 1.0, 1.5),
    )
    array, meta = readers.read_image(tmp_path / "a.dng", raw_mode="mosaic")
    assert array.shape == (1, 32, 48, 1) and array.dtype == np.uint16
    np.testing.assert_array_equal(array[0, :, :, 0], cfa)
    assert meta.header["cfa_pattern"] == "GRBG"
    assert meta.header["cfa_black"] == [[250.0, 256.0], [258.0, 262.0]]
    assert meta.black_level == pytest.approx(256.5)
    np.testing.assert_allclose(meta.header["white_balance"], (2.0, 1.0, 1.5), rtol=1e-3)


def test_dng_demosaic(tmp_path):
    cfa = _rggb_mosaic()
    write_tiny_dng(tmp_path / "a.dng", cfa, black=256, white=4095 + 256)
    array, meta = readers.read_image(tmp_path / "a.dng", raw_mode="demosaic")
    assert array.shape == (1, 32, 48, 3) and array.dtype == np.uint16
    assert (meta.black_level, meta.white_level) == (0.0, 65535.0)
    center = array[0, 4:-4, 4:-4].reshape(-1, 3).mean(0)
    assert center[0] < center[1] < center[2]  # R < G < B as in the mosaic


# .npy


def test_npy_memmapped_layouts(tmp_path):
    np.save(tmp_path / "hw.npy", np.ones((8, 9), np.float32))
    np.save(tmp_path / "hwc.npy", np.ones((8, 9, 3), np.uint8))
    np.save(tmp_path / "nhw.npy", np.ones((5, 8, 9), np.uint16))
    shapes = {}
    for name in ("hw", "hwc", "nhw"):
        array, meta = readers.read_image(tmp_path / f"{name}.npy")
        assert image_meta.is_file_backed(array) and meta.memmapped
        shapes[name] = (array.shape, meta.white_level)
    assert shapes == {
        "hw": ((1, 8, 9, 1), None),
        "hwc": ((1, 8, 9, 3), 255.0),
        "nhw": ((5, 8, 9, 1), 65535.0),
    }


def test_bad_files_are_unreadable(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    np.save(tmp_path / "one_d.npy", np.ones(10))
    np.save(tmp_path / "complex.npy", np.ones((8, 8), np.complex64))
    np.save(tmp_path / "full.npy", np.ones((64, 64), np.float32))
    data = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    for name in ("text.png", "one_d.npy", "complex.npy", "cut.npy", "missing.tif", "a.bmpx"):
        with pytest.raises(readers.UnreadableImageError):
            readers.read_image(tmp_path / name)


# The embedded scikit-image pictures.


def test_skimage_pictures_load_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access while loading bundled skimage data")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    shapes = {
        name: readers.read_image("skimage://" + name)[0].shape for name in readers.SKIMAGE_IMAGES
    }
    assert shapes["motorcycle_left"] == (1, 500, 741, 3)
    assert shapes["hubble_deep_field"] == (1, 872, 1000, 3)
    assert shapes["camera"] == (1, 512, 512, 1)
    assert not {"moon", "cell", "retina"} & set(readers.SKIMAGE_IMAGES)


def test_to_gray():
    rgb = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]], np.float32)
    gray = readers.to_gray(rgb, ("R", "G", "B"))
    np.testing.assert_allclose(gray[0, :, 0], [0.2125, 0.7154, 1.0], rtol=1e-6)
    planes = np.array([[[0.1, 0.2, 0.3, 0.4]]], np.float32)
    np.testing.assert_allclose(readers.to_gray(planes, ("R", "G", "G2", "B")), [[[0.25]]])
