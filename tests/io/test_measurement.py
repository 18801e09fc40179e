"""pdr_jax.io from Python: a file read with its calibration, restored, written with its metadata,
as pdr-restore does it (and with the same result), on the exact one-colour prior of
tests/colour_prior.py."""

import jax
import numpy as np
import pytest
import tifffile
from astropy.io import fits
from colour_prior import ColourPrior

from pdr_jax import io
from pdr_jax.cli import restore as restore_tool
from pdr_jax.physics import operators
from pdr_jax.restore import SamplerSettings

RED = np.array([0.85, 0.08, 0.1], np.float32)
WB = (2.0, 1.0, 1.6)  # white balance of the mosaic: gains 1 / WB relative to green
S, R, GAIN, BLACK, WHITE = 60.0, 2.0, 2.0, 100.0, 4095.0


def _red_mosaic_adu(height=24, width=32, seed=0):
    """[H, W] ADU of a red scene through an RGGB mosaic: Poisson-Gaussian electrons / gain +
    black, clipped at the white level; one pixel saturated."""
    operator = operators.Mosaic("RGGB", gains=tuple(WB[1] / w for w in WB))
    x = np.broadcast_to(RED, (1, height, width, 3))
    mean = S * np.asarray(operator.forward(x))[0, ..., 0]
    rng = np.random.default_rng(seed)
    electrons = rng.poisson(mean) + rng.normal(0, R, mean.shape)
    adu = np.clip(np.round(electrons / GAIN + BLACK), 0, WHITE)
    adu[3, 5] = WHITE
    return adu.astype(np.uint16)


def test_a_fits_mosaic_read_restored_and_written_with_its_header(tmp_path):
    """FITS in ADU with GAIN/PEDESTAL/SATURATE and WCS cards: read_measurement calibrates it
    (the saturated pixel masked), restore_measurement restores it red, write_restoration keeps
    the header and adds HISTORY; pdr-restore's restore_one on the same file writes the same."""
    header = fits.Header({"GAIN": GAIN, "PEDESTAL": BLACK, "SATURATE": WHITE})
    header.update({"CTYPE1": "RA---TAN", "CRVAL1": 150.1, "EXPTIME": 30.0})
    fits.PrimaryHDU(_red_mosaic_adu(), header=header).writeto(tmp_path / "y.fits")

    measurement = io.read_measurement(
        tmp_path / "y.fits", units="adu", scale=S, read_noise=R, cfa="RGGB", wb=WB
    )
    assert measurement.electrons.shape == (1, 24, 32, 1) and measurement.gain == GAIN
    assert measurement.mask[0, 3, 5, 0] == 0 and measurement.mask.sum() == 24 * 32 - 1
    physics = measurement.physics("astronomy")
    assert (physics.s, physics.r, physics.operator.pattern) == (S, R, "RGGB")
    assert io.check_measurement(measurement, physics) == []
    restored = io.restore_measurement(ColourPrior(), measurement, physics, key=jax.random.key(0))
    assert restored.image.shape == (1, 24, 32, 3)
    np.testing.assert_allclose(restored.image[0].mean(axis=(0, 1)), RED, atol=0.05)
    # The flux correction is per Bayer colour. Astronomy's default adds a constant per colour
    # (flux_offset); the scale, asked for, scales each colour to its own measured total
    # (measured 1.00, 0.95, 0.90: the dark colours lifted by positivity come down, red keeps
    # its flux; one scale for all three took red 6 % low), and the scene stays red.
    run = lambda mode: io.restore_measurement(
        ColourPrior(),
        measurement,
        physics,
        key=jax.random.key(0),
        sampler=SamplerSettings(conserve_flux=mode),
    )
    free, scaled = run("off"), run("scale")
    offsets = np.asarray(restored.reports[0]["flux_offset"][0])
    assert offsets.shape == (3,) and np.ptp(offsets) > 0.005
    np.testing.assert_allclose(restored.image, np.clip(free.image + offsets, 0, 1), atol=1e-6)
    scales = np.asarray(scaled.reports[0]["flux_scale"][0])
    assert scales.shape == (3,) and np.ptp(scales) > 0.05 and abs(scales[0] - 1) < 0.02
    np.testing.assert_allclose(scaled.image, np.clip(free.image * scales, 0, 1), atol=1e-6)
    np.testing.assert_allclose(scaled.image[0].mean(axis=(0, 1)), RED, atol=0.05)
    history = ["restored from Python", "values: clean intensity in [0, 1]"]
    io.write_restoration(tmp_path / "x.fits", restored, measurement, physics, history=history)
    with fits.open(tmp_path / "x.fits") as hdul:
        written, out = hdul[0].data, hdul[0].header
    np.testing.assert_array_equal(written, restored.image[0])
    assert (out["CTYPE1"], out["CRVAL1"], out["EXPTIME"]) == ("RA---TAN", 150.1, 30.0)
    assert "restored from Python" in "\n".join(str(line) for line in out["HISTORY"])
    report = io.restoration_report(measurement, restored, checkpoint="colour", output="x.fits")
    assert report["noise"]["gain"] == GAIN and report["shape"] == [1, 24, 32, 1]

    # The command on the same file: the same settings (the colour prior alone, --colour
    # joint), the same image.
    args = restore_tool.parse_args(
        [str(tmp_path / "y.fits"), "--output", str(tmp_path / "cli.fits"), "--units", "adu"]
        + ["--domain", "astronomy", "--scale", str(S), "--read-noise", str(R)]
        + ["--cfa", "RGGB", "--wb", ",".join(map(str, WB)), "--colour", "joint"]
    )
    cli_report = restore_tool.restore_one(
        tmp_path / "y.fits",
        tmp_path / "cli.fits",
        lambda checkpoint: ColourPrior(),
        args,
        jax.random.key(0),
    )
    np.testing.assert_array_equal(fits.getdata(tmp_path / "cli.fits"), written)
    assert cli_report["chi_square"] == pytest.approx(report["chi_square"])


def test_an_rgb_tiff_in_electrons_with_auto_scale_keeps_its_resolution(tmp_path):
    """An [H, W, 3] TIFF of electrons with scale="auto": restored with its channels together,
    written as [H, W, 3] float32 with the input's resolution tags; s*x+b beside it."""
    rng = np.random.default_rng(1)
    y = rng.poisson(40 * np.broadcast_to(RED, (20, 24, 3))) + rng.normal(0, 2, (20, 24, 3))
    tifffile.imwrite(tmp_path / "y.tif", y.astype(np.float32), photometric="rgb", resolution=(4, 4))
    measurement = io.read_measurement(tmp_path / "y.tif", scale="auto", read_noise=2.0)
    assert 30 < measurement.scale < 60 and measurement.operator is operators.IDENTITY
    physics = measurement.physics("photography")
    restored = io.restore_measurement(ColourPrior(), measurement, physics, key=jax.random.key(1))
    electrons = io.writers.electrons_path(tmp_path / "x.tif")
    io.write_restoration(
        tmp_path / "x.tif", restored, measurement, physics, electrons_path=electrons
    )
    with tifffile.TiffFile(tmp_path / "x.tif") as tif:
        assert tif.pages[0].tags["XResolution"].value == (4, 1)
        image = tif.asarray()
    assert image.shape == (20, 24, 3) and image.dtype == np.float32
    np.testing.assert_allclose(tifffile.imread(electrons), physics.s * image, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": 0.0}, r"--scale \(s\) must be a finite number > 0, got 0.0"),
        ({"read_noise": -1.0}, r"--read-noise \(r\) must be a finite number >= 0"),
        ({"gain": -2.0, "units": "adu"}, r"--gain \(gain\) must be a finite number > 0"),
        ({"units": "photons"}, "units must be one of"),
        ({"wb": (2.0, 1.0, 1.5)}, "--wb applies to a mosaic"),
        ({"cfa": "RGGB", "psf": "auto"}, "--psf auto fits the stars of a gray or colour image"),
    ],
)
def test_bad_arguments_are_refused_by_name(tmp_path, kwargs, message):
    np.save(tmp_path / "y.npy", np.ones((16, 16), np.float32))
    arguments = {"scale": 10.0, "read_noise": 2.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        io.read_measurement(tmp_path / "y.npy", **arguments)


def test_8_bit_values_are_display_encoded_and_shown_without_a_second_encoding(tmp_path):
    """An 8-bit RGB PNG restored as the intensities it holds is sRGB-encoded already
    (encoding "srgb"): the preview only rescales it; decoded with linearise="srgb", or stored as
    float electrons, it is linear light and the preview encodes it."""
    from PIL import Image

    from pdr_jax.evaluation.report import display_rgb
    from pdr_jax.physics.calibration import linear_to_srgb

    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "y.png")
    np.save(tmp_path / "y.npy", rng.uniform(0, 50, (16, 16, 3)).astype(np.float32))
    read = lambda name, **kw: io.read_measurement(tmp_path / name, scale=10.0, read_noise=2.0, **kw)
    assert read("y.png").encoding == "srgb"
    assert read("y.png", linearise="srgb").encoding == "linear"
    assert read("y.npy").encoding == "linear"
    values = np.linspace(0.0, 2.0, 12).reshape(2, 2, 3)
    np.testing.assert_allclose(display_rgb(values, 0.0, 2.0, encoded=True), values / 2)
    np.testing.assert_allclose(display_rgb(values, 0.0, 2.0), linear_to_srgb(values / 2))


def test_psf_auto_fits_the_stars_of_the_file_in_electrons(tmp_path):
    """A FITS star field in ADU (gain 2, black 100) blurred by a Moffat of FWHM 3.5 px: the
    PSF is fitted after the calibration, as the Blur the restoration deconvolves, and recorded."""
    from scipy import signal

    from pdr_jax.physics import psf

    rng = np.random.default_rng(5)
    scene = np.zeros((160, 160))
    for _ in range(30):
        scene[rng.integers(8, 152), rng.integers(8, 152)] += rng.uniform(10, 60)
    blurred = signal.fftconvolve(scene, psf.moffat(3.5, 3.0), mode="same")
    electrons = rng.poisson(50 * np.clip(blurred, 0, None) + 3) + rng.normal(0, R, blurred.shape)
    fits.PrimaryHDU((electrons / GAIN + BLACK).astype(np.float32)).writeto(tmp_path / "y.fits")
    adu = dict(
        scale=50.0,
        read_noise=R,
        units="adu",
        gain=GAIN,
        black_level=BLACK,
        white_level=1e6,
        psf="auto",
    )
    m = io.read_measurement(tmp_path / "y.fits", **adu)
    fit = m.psf_fit
    assert fit["num_stars"] >= 3 and abs(fit["fwhm"] / 3.5 - 1) < 0.08
    assert isinstance(m.operator, operators.Blur) and m.operator.source.startswith(fit["spec"])
    np.testing.assert_allclose(m.operator.array, psf.parse(fit["spec"]))
    # A starless frame: the error names the file and asks for the PSF.
    fits.PrimaryHDU(np.full((64, 64), BLACK + 10, np.float32)).writeto(tmp_path / "flat.fits")
    with pytest.raises(ValueError, match=r"flat\.fits: --psf auto found 0 isolated star"):
        io.read_measurement(tmp_path / "flat.fits", **adu)
