"""Sources and transforms: calibration to [0, 1], frames per file, held-out columns, conditioning."""

import json

import numpy as np
import pytest
import tifffile
from astropy.io import fits
from raw_files import write_tiny_dng

from pdr_jax.data import sources, transforms
from pdr_jax.physics.conditioning import DEFAULT_SPEC

RANGES = transforms.ConditioningRanges(s=(10.0, 100.0), r=(1.0, 2.0), b=(0.0, 1.0))
DOMAIN_RANGES = {d: RANGES for d in DEFAULT_SPEC.domains}


def _build(entry, **kwargs):
    summary = sources.DataSummary()
    source = sources.build_source(entry, domain_ranges=DOMAIN_RANGES, summary=summary, **kwargs)
    return source, summary


def _whole(frame):
    return frame.read(slice(0, frame.height), slice(0, frame.width))


def test_calibration_from_yaml_and_json_normalises(tmp_path):
    values = np.full((20, 24), 100, np.uint16)
    values[:, 12:] = 4095  # 12-bit camera data in a 16-bit container, offset 100
    values[5, 5] = 50  # below black: clipped to 0
    tifffile.imwrite(tmp_path / "cam.tif", values)
    (tmp_path / "cal.yaml").write_text("black_level: 100\nwhite_level: 4095\ngain: 0.5\n")
    (tmp_path / "cal.json").write_text(json.dumps({"black_level": 100, "white_level": 4095}))
    for cal in ("cal.yaml", "cal.json"):
        entry = {"domain": "microscopy", "paths": [str(tmp_path / "cam.tif")]}
        source, _ = _build({**entry, "calibration": str(tmp_path / cal)})
        x = _whole(source[0])
        assert x.dtype == np.float32 and x.shape == (20, 24, 1)
        np.testing.assert_array_equal(x[:, :12][x[:, :12] != 0], [])  # black -> 0
        np.testing.assert_allclose(x[:, 12:], 1.0)  # white -> 1
    mid = np.full((20, 24), 100 + 3995 // 5, np.uint16)
    tifffile.imwrite(tmp_path / "mid.tif", mid)
    source, _ = _build(
        {
            "domain": "microscopy",
            "paths": [str(tmp_path / "mid.tif")],
            "calibration": {"black_level": 100, "white_level": 4095},
        }
    )
    np.testing.assert_allclose(_whole(source[0]), (3995 // 5) / 3995, rtol=1e-6)


def test_metadata_calibration_and_auto_white(tmp_path):
    # 8-bit PNG-like data: white 255 from the bit depth.
    np.save(tmp_path / "u8.npy", np.full((16, 16), 51, np.uint8))
    # float data outside [0, 1] with no white level: the 99.9th percentile is white.
    ramp = np.linspace(0, 1000, 16 * 16, dtype=np.float32).reshape(16, 16)
    np.save(tmp_path / "f.npy", ramp)
    # float data inside [0, 1]: used as it is.
    np.save(tmp_path / "unit.npy", np.full((16, 16), 0.25, np.float32))
    source, _ = _build({"domain": "astronomy", "paths": [str(tmp_path)]})
    by_name = {f.path.rsplit("/", 1)[-1]: f for f in source.frames}
    np.testing.assert_allclose(_whole(by_name["u8.npy"]), 0.2)
    assert by_name["f.npy"].white == pytest.approx(np.percentile(ramp, 99.9))
    np.testing.assert_allclose(_whole(by_name["unit.npy"]), 0.25)


def test_fits_bzero_and_conditioning_from_calibration(tmp_path):
    values = np.full((16, 20), 30000, np.uint16)
    hdu = fits.PrimaryHDU(values)
    hdu.header["GAIN"] = 2.0
    hdu.header["RDNOISE"] = 5.0
    hdu.writeto(tmp_path / "a.fits")
    source, _ = _build(
        {
            "domain": "astronomy",
            "paths": [str(tmp_path / "a.fits")],
            "calibration": {"black_level": 1000, "background": 3.0},
            "conditioning": "calibration",
        }
    )
    frame = source[0]
    np.testing.assert_allclose(_whole(frame), 29000 / (65535 - 1000), rtol=1e-6)
    s = 2.0 * (65535 - 1000)  # electrons at clean intensity 1
    assert frame.ranges == transforms.ConditioningRanges(s=(s, s), r=(5.0, 5.0), b=(3.0, 3.0))


def test_frames_multipage_channels_and_raw(tmp_path):
    stack = np.random.default_rng(0).integers(0, 255, (3, 20, 20)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    source, _ = _build({"domain": "microscopy", "paths": [str(tmp_path / "stack.tif")]})
    assert [f.index for f in source.frames] == [0, 1, 2]
    np.testing.assert_allclose(_whole(source[1])[..., 0], stack[1] / 255, rtol=1e-6)

    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[..., 1] = 255
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    gray, _ = _build({"domain": "photography", "paths": [str(tmp_path / "rgb.tif")]})
    np.testing.assert_allclose(_whole(gray[0]), 0.7154, rtol=1e-5)
    split, _ = _build(
        {"domain": "photography", "paths": [str(tmp_path / "rgb.tif")], "channels": "split"}
    )
    assert [float(_whole(f).mean()) for f in split.frames] == [0.0, 1.0, 0.0]

    cfa = np.full((32, 48), 256 + 1000, np.uint16)
    write_tiny_dng(tmp_path / "a.dng", cfa, black=256, white=256 + 4000)
    raw, _ = _build({"domain": "photography", "paths": [str(tmp_path / "a.dng")]})
    assert (raw[0].height, raw[0].width) == (16, 24)
    np.testing.assert_allclose(_whole(raw[0]), 0.25, rtol=1e-6)


def test_bad_files_skipped_and_empty_source_named(tmp_path, caplog):
    tifffile.imwrite(tmp_path / "good.tif", np.ones((20, 20), np.uint8))
    (tmp_path / "bad.png").write_text("hello")
    np.save(tmp_path / "tiny.npy", np.ones((4, 4)))  # smaller than min_size
    (tmp_path / "notes.txt").write_text("ignored: not an image type")
    with caplog.at_level("WARNING"):
        source, summary = _build({"domain": "photography", "paths": [str(tmp_path)]})
    assert len(source) == 1 and summary.num_skipped == 2
    assert [p.rsplit("/", 1)[-1] for p, _ in summary.skipped] == ["bad.png", "tiny.npy"]
    assert summary.ignored == [str(tmp_path / "notes.txt")]
    assert sum("Skipping unreadable file" in r.message for r in caplog.records) == 2

    (tmp_path / "good.tif").unlink()
    with pytest.raises(ValueError, match="'broken-set' has no readable image files"):
        _build({"name": "broken-set", "domain": "photography", "paths": [str(tmp_path)]})


def test_held_out_columns_are_disjoint_and_cover_the_image():
    train = transforms.split_columns(1000, "columns", 0.25, "train")
    val = transforms.split_columns(1000, "columns", 0.25, "val")
    assert train == (0, 750) and val == (750, 1000)
    assert transforms.split_columns(100, "val", 0.25, "train") == (0, 0)
    assert transforms.split_columns(100, "train", 0.25, "train") == (0, 100)


def test_dihedral_covers_the_8_symmetries():
    x = {"clean": np.arange(9, dtype=np.float32).reshape(3, 3, 1)}
    seen = {
        transforms.RandomDihedral().random_map(x, np.random.default_rng(i))["clean"].tobytes()
        for i in range(200)
    }
    assert len(seen) == 8


def test_crops_of_a_narrow_strip_are_mirror_padded_inside_it(tmp_path):
    image = np.tile(np.arange(40, dtype=np.float32) / 40, (40, 1))  # value = column / 40
    np.save(tmp_path / "ramp.npy", image)
    source, _ = _build({"domain": "astronomy", "paths": [str(tmp_path / "ramp.npy")]})
    crops = transforms.val_crops(source[0], 16, 0.25, max_crops=8)  # strip: columns 30..39
    assert len(crops) == 2 and {c.x_range for c in crops} == {(30, 40)}
    patch = transforms.FixedCrop(16).map(crops[0])["clean"]
    assert patch.shape == (16, 16, 1)
    np.testing.assert_allclose(np.unique(patch), np.arange(30, 40) / 40, rtol=1e-6)


def test_embedded_images_are_skimage_gray_in_unit_range():
    import skimage.color
    import skimage.data

    photos, _ = _build(sources.EMBEDDED_SOURCES[0])
    astronaut = next(f for f in photos.frames if f.path.endswith("astronaut"))
    expected = skimage.color.rgb2gray(skimage.data.astronaut())
    np.testing.assert_allclose(_whole(astronaut)[..., 0], expected, atol=1e-6)
    ihc, _ = _build(sources.EMBEDDED_SOURCES[1])
    assert [f.channel for f in ihc.frames] == [0, 1, 2]
    np.testing.assert_allclose(
        _whole(ihc[2])[..., 0], skimage.data.immunohistochemistry()[..., 2] / 255, atol=1e-6
    )


def test_nan_pixels_read_as_zero(tmp_path):
    values = np.full((16, 16), 500.0, np.float32)
    values[:4] = np.nan  # masked rows, as in many reduced FITS images
    fits.PrimaryHDU(values).writeto(tmp_path / "masked.fits")
    source, _ = _build({"domain": "astronomy", "paths": [str(tmp_path / "masked.fits")]})
    x = _whole(source[0])
    assert np.isfinite(x).all() and (x[:4] == 0).all()
    np.testing.assert_allclose(x[4:], 1.0)  # the 99.9th percentile of the finite values


def test_values_beyond_float32_read_without_warnings(tmp_path):
    """Issue 35: a float64 file with values past float32's range (1e300, -1e300, NaN) reads as
    clipped [0, 1] patches with no overflow RuntimeWarning."""
    import warnings

    x = np.full((32, 32), 0.5)
    x[0, 0], x[1, 1], x[2, 2] = 1e300, -1e300, np.nan
    np.save(tmp_path / "big.npy", x)
    source, _ = _build({"domain": "photography", "paths": [str(tmp_path / "big.npy")]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        patch = source[0].read(slice(0, 4), slice(0, 4))
    assert patch[0, 0, 0] == 1.0 and patch[1, 1, 0] == 0.0 and patch[2, 2, 0] == 0.0
