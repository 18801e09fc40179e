"""tools/restore.py end to end with a tiny model: odd sizes, formats, ADU input, folder mode."""

import json
import pathlib
import time

import jax
import numpy as np
import PIL.Image
import pytest
import tifffile
from astropy.io import fits
from tiny_models import save_tiny_prior, tiny_prior_kwargs

import pdr_jax.io.writers
from pdr_jax.cli import restore as restore_tool

TINY = tiny_prior_kwargs()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model")
    save_tiny_prior(directory)
    return str(directory)


def _measurement(shape, s=20.0, r=2.0, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]] / max(shape)
    clean = 0.5 + 0.3 * np.sin(9 * xx) * np.cos(7 * yy)
    return (rng.poisson(s * clean) + rng.normal(0, r, shape)).astype(np.float32), clean


def _args(model, *extra):
    return [
        "--checkpoint",
        model,
        "--domain",
        "microscopy",
        "--scale",
        "20",
        "--read-noise",
        "2",
        "--steps",
        "2",
        "--tile",
        "16",
        "--overlap",
        "4",
        "--batch",
        "4",
        *extra,
    ]


def _spy_on_restore(monkeypatch) -> list:
    """The (denoiser type name, y shape, sampler settings) of every pdr_jax.restore.restore
    call pdr-restore makes from now on, in order; the calls still run."""
    import pdr_jax.restore

    calls, real = [], pdr_jax.restore.restore

    def spy(model, y, **kwargs):
        calls.append((type(model).__name__, y.shape, kwargs["sampler"]))
        return real(model, y, **kwargs)

    monkeypatch.setattr(pdr_jax.restore, "restore", spy)
    return calls


def test_odd_sized_measurement_end_to_end(tiny_model, tmp_path):
    y, _ = _measurement((37, 53))
    np.save(tmp_path / "y.npy", y)
    out, report = tmp_path / "x.tif", tmp_path / "report.json"
    code = restore_tool.main(
        [
            str(tmp_path / "y.npy"),
            "--output",
            str(out),
            "--report",
            str(report),
            "--save-electrons",
            *_args(tiny_model),
        ]
    )
    assert code == 0
    x = tifffile.imread(out)
    assert x.shape == (37, 53) and x.dtype == np.float32
    assert np.all(np.isfinite(x)) and x.min() >= 0 and x.max() <= 1
    np.testing.assert_allclose(tifffile.imread(tmp_path / "x_electrons.tif"), 20 * x, rtol=1e-6)
    rep = json.loads(report.read_text())
    image = rep["images"][0]
    for field in (
        "chi_square",
        "whiteness",
        "spectral_flatness",
        "mean_photons",
        "saturated_fraction",
        "tile",
        "num_tiles",
        "plan",
        "seconds",
        "warnings",
    ):
        assert field in image, field
    assert image["tile"] == 16 and image["num_tiles"] > 4 and np.isfinite(image["chi_square"])
    # How the start went: a grayscale image has no Bayer planes and no PSF.
    assert image["planes_start"] is False and image["deblur_iterations"] == 0
    assert image["noise_level"] > 0
    # Electrons in, electrons out (SamplerSettings.conserve_flux; the total is known to 0.9 %
    # here): the scale of the one channel of the one frame.
    assert np.shape(image["flux_scale"]) == (1, 1) and image["flux_scale"][0][0] != 1
    assert rep["summary"] == {**rep["summary"], "restored": 1, "failed": 0}


def test_adu_input_masks_saturated_pixels(tiny_model, tmp_path):
    y, _ = _measurement((37, 53))
    adu = np.clip(np.round(y / 2.0 + 100), 0, 105).astype(
        np.uint16
    )  # gain 2 e-/ADU, black 100, white 105
    tifffile.imwrite(tmp_path / "raw.tif", adu)
    report = tmp_path / "r.json"
    code = restore_tool.main(
        [
            str(tmp_path / "raw.tif"),
            "--output",
            str(tmp_path / "x.npy"),
            "--units",
            "adu",
            "--gain",
            "2",
            "--black-level",
            "100",
            "--white-level",
            "105",
            "--report",
            str(report),
            *_args(tiny_model),
        ]
    )
    assert code == 0
    saturated = float(np.mean(adu >= 105))
    assert saturated > 0
    assert json.loads(report.read_text())["images"][0]["saturated_fraction"] == pytest.approx(
        saturated
    )
    with pytest.raises(SystemExit):
        restore_tool.main(
            [str(tmp_path / "raw.tif"), "--output", str(tmp_path / "x.npy"), "--units", "adu"]
        )


def test_folder_mode_skips_a_corrupt_file(tiny_model, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        np.save(inputs / f"good{i}.npy", _measurement((37, 53), seed=i)[0])
    (inputs / "broken.tif").write_bytes(b"II*\x00 this is not a tiff")
    out, report = tmp_path / "out", tmp_path / "report.json"
    code = restore_tool.main(
        [str(inputs), "--output", str(out), "--report", str(report), *_args(tiny_model)]
    )
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["good0.tif", "good1.tif"]
    rep = json.loads(report.read_text())
    assert rep["summary"]["restored"] == 2 and rep["summary"]["failed"] == 1
    assert "broken.tif" in rep["failures"][0]["input"]


def test_too_small_input_is_rejected_clearly(tiny_model, tmp_path):
    np.save(tmp_path / "tiny.npy", np.ones((1, 1), np.float32))
    code = restore_tool.main(
        [
            str(tmp_path / "tiny.npy"),
            "--output",
            str(tmp_path / "x.npy"),
            "--report",
            str(tmp_path / "r.json"),
            *_args(tiny_model),
        ]
    )
    assert code == 1
    assert "minimum is 8x8" in json.loads((tmp_path / "r.json").read_text())["failures"][0]["error"]


def test_num_samples_write_a_posterior_std_map_and_a_preview(tiny_model, tmp_path, monkeypatch):
    from pdr_jax.evaluation import report as report_lib

    y, _ = _measurement((24, 20), s=5.0)  # few photons: the sampler refines the one-call estimate
    np.save(tmp_path / "y.npy", y)
    out, std, report = tmp_path / "x.tif", tmp_path / "std.tif", tmp_path / "report.json"
    preview, drawn = tmp_path / "preview.png", {}
    plot = report_lib.plot_restoration_preview
    monkeypatch.setattr(
        report_lib,
        "plot_restoration_preview",
        lambda path, **kw: (drawn.update(kw), plot(path, **kw)),
    )
    code = restore_tool.main(
        [
            str(tmp_path / "y.npy"),
            "--output",
            str(out),
            "--num-samples",
            "3",
            "--uncertainty",
            str(std),
            "--report",
            str(report),
            "--preview",
            str(preview),
            *_args(tiny_model),
            "--scale",
            "5",
        ]
    )
    assert code == 0
    sigma = tifffile.imread(std)
    # The preview: noisy, restored, residual (y - s x - b) / sigma, std; 1530 x 414 px at 90 dpi.
    x = tifffile.imread(out)
    np.testing.assert_allclose(drawn["noisy"], y / 5.0, rtol=1e-6)
    np.testing.assert_allclose(drawn["restored"], x, rtol=1e-6)
    np.testing.assert_allclose(
        drawn["residual"],
        (y - 5.0 * x) / np.sqrt(np.maximum(5.0 * x, 0) + 4.0),
        rtol=1e-4,
        atol=1e-5,
    )
    np.testing.assert_allclose(drawn["std"], sigma, rtol=1e-6)
    assert "chi-square" in drawn["title"]
    assert PIL.Image.open(preview).size == (1530, 414)
    assert sigma.shape == (24, 20) and np.all(sigma >= 0) and sigma.mean() > 0
    image = json.loads(report.read_text())["images"][0]
    assert image["posterior_std"] == pytest.approx(float(sigma.mean()), rel=1e-5)
    assert image["settings"]["num_samples"] == 3 and image["uncertainty"] == str(std)
    with pytest.raises(SystemExit):  # --uncertainty needs samples
        restore_tool.main(
            [
                str(tmp_path / "y.npy"),
                "--output",
                str(out),
                "--uncertainty",
                str(std),
                *_args(tiny_model),
            ]
        )


def test_fits_and_tiff_outputs_keep_the_input_metadata(tiny_model, tmp_path):
    from astropy.io import fits

    y, _ = _measurement((20, 24))
    header = fits.Header(
        {
            "CTYPE1": "RA---TAN",
            "CTYPE2": "DEC--TAN",
            "CRVAL1": 150.1,
            "CRVAL2": 2.2,
            "CRPIX1": 12.0,
            "CRPIX2": 10.0,
            "CDELT1": -1e-4,
            "CDELT2": 1e-4,
            "EXPTIME": 30.0,
        }
    )
    fits.PrimaryHDU(y, header=header).writeto(tmp_path / "y.fits")
    assert (
        restore_tool.main(
            [str(tmp_path / "y.fits"), "--output", str(tmp_path / "x.fits"), *_args(tiny_model)]
        )
        == 0
    )
    with fits.open(tmp_path / "x.fits") as hdul:
        out = hdul[0].header
        assert hdul[0].data.shape == (20, 24) and hdul[0].header["BITPIX"] == -32
    for key in ("CTYPE1", "CRVAL1", "CRVAL2", "CRPIX1", "CDELT2", "EXPTIME"):
        assert out[key] == header[key], key
    history = "\n".join(str(line) for line in out["HISTORY"])
    assert (
        "pdr_jax restore of y.fits" in history
        and "--scale 20" in history
        and "chi-square" in history
    )
    tifffile.imwrite(
        tmp_path / "y.tif",
        y,
        imagej=True,
        resolution=(4.0, 4.0),
        metadata={"spacing": 0.5, "unit": "um"},
    )
    assert (
        restore_tool.main(
            [str(tmp_path / "y.tif"), "--output", str(tmp_path / "x.tif"), *_args(tiny_model)]
        )
        == 0
    )
    with tifffile.TiffFile(tmp_path / "x.tif") as tif:
        page = tif.pages[0]
        assert page.tags["XResolution"].value == (4, 1) and page.tags["YResolution"].value == (4, 1)
        assert tif.imagej_metadata["unit"] == "um" and tif.imagej_metadata["spacing"] == 0.5
        assert "pdr_jax restore of y.tif" in tif.imagej_metadata["Info"]


def test_auto_read_noise_and_scale_are_estimated_and_reported(tiny_model, tmp_path):
    y, _ = _measurement((64, 64), s=20.0, r=2.0)
    np.save(tmp_path / "y.npy", y)
    report = tmp_path / "report.json"
    code = restore_tool.main(
        [
            str(tmp_path / "y.npy"),
            "--output",
            str(tmp_path / "x.npy"),
            "--report",
            str(report),
            *_args(tiny_model),
            "--read-noise",
            "auto",
            "--scale",
            "auto",
        ]
    )
    assert code == 0
    noise = json.loads(report.read_text())["images"][0]["noise"]
    assert (
        noise["read_noise"] == pytest.approx(2.0, rel=0.25)
        and noise["estimate"]["read_noise_std"] > 0
    )
    assert noise["scale"] == pytest.approx(
        0.8 * 20.0, rel=0.15
    )  # the clean bright end, 0.8 at s = 20
    with pytest.raises(SystemExit):
        restore_tool.parse_args(
            [
                "y.npy",
                "--output",
                "x.npy",
                "--domain",
                "microscopy",
                "--scale",
                "bright",
                "--read-noise",
                "2",
            ]
        )


def _no_restoration(monkeypatch):
    """Make any call of the restoration fail the test: a refusal must cost nothing."""
    import pdr_jax.restore

    def refuse(*args, **kwargs):
        raise AssertionError("the restoration ran before the refusal")

    monkeypatch.setattr(pdr_jax.restore, "restore", refuse)


def test_unwritable_outputs_are_refused_before_anything_is_computed(
    tiny_model, tmp_path, monkeypatch
):
    """An output, --uncertainty or --report under a path that cannot be a folder (a file stands
    there: caught for root too) stops the run at once, naming the flag."""
    _no_restoration(monkeypatch)
    np.save(tmp_path / "y.npy", _measurement((37, 53))[0])
    (tmp_path / "file").write_text("not a folder")
    blocked = str(tmp_path / "file" / "x.tif")
    cases = (
        (["--output", blocked], "--output"),
        (
            ["--output", str(tmp_path / "x.tif"), "--report", str(tmp_path / "file" / "r.json")],
            "--report",
        ),
        (
            ["--output", str(tmp_path / "x.tif"), "--num-samples", "2", "--uncertainty", blocked],
            "--uncertainty",
        ),
    )
    for extra, flag in cases:
        with pytest.raises(SystemExit, match=f"{flag} .*cannot write there.*nothing was restored"):
            restore_tool.main([str(tmp_path / "y.npy"), *extra, *_args(tiny_model)])
    assert not (tmp_path / "x.tif").exists()


def test_an_rgb_input_for_a_png_output_fails_early_and_is_counted(
    tiny_model, tmp_path, monkeypatch
):
    from PIL import Image

    _no_restoration(monkeypatch)
    Image.fromarray(np.full((24, 24, 3), 40, np.uint8)).save(tmp_path / "rgb.png")
    report = tmp_path / "r.json"
    code = restore_tool.main(
        [
            str(tmp_path / "rgb.png"),
            "--output",
            str(tmp_path / "x.png"),
            "--report",
            str(report),
            *_args(tiny_model),
        ]
    )
    assert code == 1
    (failure,) = json.loads(report.read_text())["failures"]
    assert "grayscale only; use .tif for 3 channels" in failure["error"]


def test_data_that_are_not_electrons_are_refused_before_restoring(
    tiny_model, tmp_path, monkeypatch
):
    """A 16-bit file of camera counts read as electrons (mean 30000 e- at --scale 20) and one of
    ADU at 8 e-/ADU (an eighth of the shot noise's variance) are refused before the restoration
    runs, counted as failed, each naming its fix and --force (a predicted variance ratio of
    (40 + 4) / 64 / (5 + 4) = 0.077; noisy data give 0.87-1.0, noise_estimation.check_physics)."""
    _no_restoration(monkeypatch)
    counts = np.random.default_rng(0).integers(20000, 40000, (24, 24)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "bright.tif", counts)
    yy, xx = np.mgrid[:48, :48]
    clean = 0.5 + 0.3 * np.sin(xx / 6.0) * np.cos(yy / 5.0)
    electrons = np.random.default_rng(1).poisson(80 * clean) + np.random.default_rng(2).normal(
        0, 2, clean.shape
    )
    np.save(tmp_path / "smooth.npy", (electrons / 8).astype(np.float32))
    report = tmp_path / "r.json"
    start = time.perf_counter()
    code = restore_tool.main(
        [
            str(tmp_path / "bright.tif"),
            str(tmp_path / "smooth.npy"),
            "--output",
            str(tmp_path / "out"),
            "--report",
            str(report),
            *_args(tiny_model),
        ]
    )
    seconds = time.perf_counter() - start
    assert code == 1
    failures = {
        pathlib.Path(f["input"]).name: f["error"]
        for f in json.loads(report.read_text())["failures"]
    }
    assert (
        "PhysicsMismatch" in failures["bright.tif"]
        and "1.52e+03x --scale 20" in failures["bright.tif"]
    )
    assert (
        "--units adu --gain auto" in failures["bright.tif"] and "--force" in failures["bright.tif"]
    )
    assert (
        "noise variance is 0.07" in failures["smooth.npy"]
        and "--read-noise auto" in failures["smooth.npy"]
    )
    assert not (tmp_path / "out" / "bright.tif").exists()
    print(f"two refusals in {seconds:.1f} s")  # the model loads; nothing is restored


def test_force_restores_data_that_contradict_the_physics_with_warnings(tiny_model, tmp_path):
    counts = np.random.default_rng(0).integers(20000, 40000, (24, 24)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "raw.tif", counts)
    report = tmp_path / "r.json"
    argv = [str(tmp_path / "raw.tif"), "--output", str(tmp_path / "x.tif"), "--report", str(report)]
    assert restore_tool.main([*argv, *_args(tiny_model), "--force"]) == 0
    warnings = " | ".join(json.loads(report.read_text())["images"][0]["warnings"])
    assert "uint16 integers, read as electrons" in warnings and "--units adu" in warnings
    assert "x --scale 20" in warnings and "is far from 1" in warnings


def test_uncertainty_is_written_where_the_one_call_estimate_is_the_result(tiny_model, tmp_path):
    """An astronomy-like frame at 44 e- and s = 100 (noise level 0.14 < 0.4: the one-call
    estimate is the result): --num-samples 2 --uncertainty still writes the std of 2 samples,
    the image is the one written without samples, and the report says where the std came from."""
    rng = np.random.default_rng(3)
    y = (rng.poisson(44.0, (32, 32)) + rng.normal(0, 2, (32, 32))).astype(np.float32)
    np.save(tmp_path / "frame.npy", y)
    common = [str(tmp_path / "frame.npy"), *_args(tiny_model), "--scale", "100", "--steps", "6"]
    report, std = tmp_path / "r.json", tmp_path / "std.tif"
    extra = ["--num-samples", "2", "--uncertainty", str(std), "--report", str(report)]
    assert restore_tool.main([*common, "--output", str(tmp_path / "x2.tif"), *extra]) == 0
    assert restore_tool.main([*common, "--output", str(tmp_path / "x1.tif")]) == 0
    image = json.loads(report.read_text())["images"][0]
    assert (
        not image["refined"] and image["std_from"] == "samples drawn beside the one-call estimate"
    )
    sigma = tifffile.imread(std)
    assert sigma.shape == y.shape and sigma.mean() > 0 and image["uncertainty"] == str(std)
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "x2.tif"), tifffile.imread(tmp_path / "x1.tif")
    )


@pytest.mark.parametrize(
    "flag, value", [("--scale", "-10"), ("--read-noise", "-1"), ("--gain", "0")]
)
def test_bad_numbers_are_named_by_their_flag(tiny_model, tmp_path, capsys, flag, value):
    argv = [
        str(tmp_path / "y.npy"),
        "--output",
        str(tmp_path / "x.tif"),
        *_args(tiny_model),
        flag,
        value,
    ]
    with pytest.raises(SystemExit):
        restore_tool.main(argv)
    assert f"{flag} must be" in capsys.readouterr().err


def test_the_cli_without_options_is_restore_without_options(tiny_model, tmp_path):
    """tools/restore.py with only the required flags gives what restore(...) gives with its
    defaults (the CLI's key: the seed folded with the file's and the channel's index)."""
    from pdr_jax.restore import Physics, Prior, restore

    y, _ = _measurement((24, 40), s=5.0)  # noisy enough that the sampler refines
    np.save(tmp_path / "y.npy", y)
    required = [
        "--checkpoint",
        tiny_model,
        "--domain",
        "microscopy",
        "--scale",
        "5",
        "--read-noise",
        "2",
    ]
    report = tmp_path / "r.json"
    assert (
        restore_tool.main(
            [
                str(tmp_path / "y.npy"),
                "--output",
                str(tmp_path / "x.npy"),
                "--report",
                str(report),
                *required,
            ]
        )
        == 0
    )
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 0), 0)
    result = restore(
        Prior.load(tiny_model), y, physics=Physics(5.0, 2.0, 0.0, "microscopy"), key=key
    )
    assert result.report["refined"] and json.loads(report.read_text())["images"][0][
        "settings"
    ] == json.loads(json.dumps(result.report["settings"]))
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), result.image, atol=1e-6)


def test_adu_data_with_every_noise_parameter_auto(tiny_model, tmp_path):
    """--units adu --gain auto --read-noise auto --scale auto end to end: the estimates, their
    uncertainties and warnings in the report (true gain 2 e-/ADU, read noise 3 e-, 26-193 e-)."""
    y, _ = _measurement((96, 96), s=200.0, r=3.0, seed=4)
    adu = np.clip(np.round(y / 2.0 + 100), 0, 4095).astype(np.uint16)
    tifffile.imwrite(tmp_path / "raw.tif", adu)
    report = tmp_path / "r.json"
    code = restore_tool.main(
        [
            str(tmp_path / "raw.tif"),
            "--output",
            str(tmp_path / "x.tif"),
            "--report",
            str(report),
            "--checkpoint",
            tiny_model,
            "--domain",
            "microscopy",
            "--units",
            "adu",
            "--gain",
            "auto",
            "--black-level",
            "100",
            "--white-level",
            "4095",
            "--read-noise",
            "auto",
            "--scale",
            "auto",
            "--steps",
            "0",
            "--tile",
            "16",
            "--overlap",
            "4",
        ]
    )
    assert code == 0
    image = json.loads(report.read_text())["images"][0]
    noise = image["noise"]
    assert noise["gain"] == pytest.approx(2.0, rel=0.3) and noise["estimate"]["gain_std"] > 0
    assert noise["scale"] == pytest.approx(0.8 * 200.0, rel=0.3)
    # 3 e- of read noise under ~100 e- of shot noise is below what one image resolves: the
    # estimate says so (0 with its uncertainty and a warning) instead of inventing a value.
    assert noise["read_noise"] >= 0 and noise["estimate"]["read_noise_std"] > 0
    assert noise["read_noise"] > 0 or any("read noise unresolved" in w for w in image["warnings"])


def test_a_colour_model_restores_the_channels_together(tmp_path, monkeypatch):
    """An [H, W, 3] input and a 3-channel prior: one restoration of all three channels per frame
    (a grayscale prior makes three, one per channel), written as [H, W, 3]; a 2-channel input is
    refused by name before restoring."""
    directory = tmp_path / "rgb-model"
    save_tiny_prior(directory, img_channels=3)
    rng = np.random.default_rng(4)
    y = rng.poisson(20 * rng.uniform(0.2, 0.8, (20, 24, 3))) + rng.normal(0, 2, (20, 24, 3))
    np.save(tmp_path / "rgb.npy", y.astype(np.float32))
    np.save(tmp_path / "two.npy", y[..., :2].astype(np.float32))
    from pdr_jax.evaluation import report as report_lib

    drawn, plot = {}, report_lib.plot_restoration_preview
    monkeypatch.setattr(
        report_lib,
        "plot_restoration_preview",
        lambda path, **kw: (drawn.update(kw), plot(path, **kw)),
    )
    calls = _spy_on_restore(monkeypatch)
    report, previews = tmp_path / "r.json", tmp_path / "previews"
    argv = ["--output", str(tmp_path / "out"), "--report", str(report), "--preview", str(previews)]
    argv += _args(str(directory))
    code = restore_tool.main([str(tmp_path / "rgb.npy"), str(tmp_path / "two.npy"), *argv])
    assert code == 1 and [shape for _, shape, _ in calls] == [(20, 24, 3)]
    restored = tifffile.imread(tmp_path / "out" / "rgb.tif")
    assert restored.shape == (20, 24, 3) and np.all((restored >= 0) & (restored <= 1))
    saved = json.loads(report.read_text())
    per_channel = saved["images"][0]["chi_square_per_channel"]
    assert len(per_channel) == 3 and np.mean(per_channel) == pytest.approx(
        saved["images"][0]["chi_square"], rel=1e-5
    )
    (failure,) = saved["failures"]
    assert drawn["restored"].shape == drawn["noisy"].shape == (20, 24, 3)  # drawn in colour
    assert drawn["residual"].shape == (20, 24) and drawn["std"] is None  # one sample: no std
    assert (previews / "rgb.png").stat().st_size > 0
    assert "2 channel(s), but the model restores 3 at a time" in failure["error"]


def test_a_grayscale_model_restores_colour_in_opponent_channels_by_default(tmp_path, monkeypatch):
    """An [H, W, 3] input and a grayscale prior: one restoration of the three channels together
    through OpponentPrior and an 8-fold SelfEnsemble (--colour auto), the colour sampler's
    settings, HISTORY naming both; --colour channels restores each channel alone; --colour joint
    refuses a grayscale model by name."""
    import pdr_jax.restore

    directory = tmp_path / "gray-model"
    save_tiny_prior(directory)
    rng = np.random.default_rng(5)
    y = rng.poisson(20 * rng.uniform(0.2, 0.8, (16, 16, 3))) + rng.normal(0, 2, (16, 16, 3))
    np.save(tmp_path / "rgb.npy", y.astype(np.float32))
    calls = _spy_on_restore(monkeypatch)
    out = tmp_path / "out.fits"
    argv = [str(tmp_path / "rgb.npy"), "--output", str(out), *_args(str(directory))]
    assert restore_tool.main(argv) == 0
    ((name, shape, sampler),) = calls
    assert name == "SelfEnsemble" and shape == (16, 16, 3)
    assert sampler.refine_min_noise == pdr_jax.restore.COLOUR_SAMPLER.refine_min_noise
    history = "".join(fits.getheader(out)["HISTORY"])
    assert "--colour opponent --self-ensemble 8" in history
    calls.clear()
    assert restore_tool.main([*argv, "--colour", "channels"]) == 0
    assert [(n, s) for n, s, _ in calls] == [("Prior", (16, 16, 1))] * 3
    report = tmp_path / "r.json"
    assert restore_tool.main([*argv, "--colour", "joint", "--report", str(report)]) == 1
    (failure,) = json.loads(report.read_text())["failures"]
    assert "--colour joint needs a colour model" in failure["error"]


def test_a_mosaic_with_cfa_writes_rgb_and_wb_needs_a_mosaic(tmp_path, monkeypatch):
    """pdr-restore x.npy --cfa RGGB ... writes [H, W, 3] through a 3-channel model's
    chrominance and the grayscale model's luminance (--colour auto: luma, MOSAIC_SAMPLER), the
    report naming the operator and giving chi-square per Bayer colour, HISTORY the mode; --wb
    on a gray input is refused by name (the file is counted as failed)."""
    import pdr_jax.restore

    directory = tmp_path / "rgb-model"
    save_tiny_prior(directory, img_channels=3)
    save_tiny_prior(tmp_path / "gray-model")
    monkeypatch.setattr(restore_tool, "DEFAULT_CHECKPOINT", str(tmp_path / "gray-model"))
    calls = _spy_on_restore(monkeypatch)
    y, _ = _measurement((20, 24), s=10.0)
    np.save(tmp_path / "mosaic.npy", y)
    report = tmp_path / "r.json"
    argv = [str(tmp_path / "mosaic.npy"), "--output", str(tmp_path / "out.npy")]
    argv += ["--report", str(report), "--cfa", "RGGB", "--wb", "2,1,1.5", *_args(str(directory))]
    argv[argv.index("microscopy")] = "photography"
    assert restore_tool.main(argv) == 0
    restored = np.load(tmp_path / "out.npy")
    assert restored.shape == (20, 24, 3) and np.all((restored >= 0) & (restored <= 1))
    image = json.loads(report.read_text())["images"][0]
    assert image["operator"]["name"] == "Mosaic" and image["operator"]["pattern"] == "RGGB"
    np.testing.assert_allclose(image["operator"]["gains"], (0.5, 1.0, 1 / 1.5), rtol=1e-6)
    assert len(image["chi_square_per_channel"]) == 3
    ((name, _, sampler),) = calls
    assert name == "LumaChromaPrior"
    assert sampler.refine_min_noise == pdr_jax.restore.MOSAIC_SAMPLER.refine_min_noise
    gray = argv[:]
    gray.remove("--cfa"), gray.remove("RGGB")
    assert restore_tool.main(gray) == 1
    (failure,) = json.loads(report.read_text())["failures"]
    assert "--wb applies to a mosaic" in failure["error"]


def test_a_dng_is_restored_with_its_pattern_black_levels_and_white_balance(tmp_path):
    """A DNG written here: a red scene (linear, white balanced) seen through GRBG with white
    balance (2, 1, 1.5) (sensitivities 1/2, 1, 2/3) and a black level per cell position (200, 256,
    300, 240 ADU, gain 2 e-/ADU). pdr-restore's RAW path reads all three from the file and
    restores it (with tests/colour_prior.py's exact prior in the network's place) to red: the
    mean colour within 0.05 of the truth. A pattern read as RGGB, or one black level for all,
    misses by more than that."""
    from colour_prior import ColourPrior, LuminancePrior
    from raw_files import write_tiny_dng

    red, wb, gain, s = np.array([0.8, 0.05, 0.05]), (2.0, 1.0, 1.5), 2.0, 400.0
    blacks = np.array([[200, 256], [300, 240]])
    colours = np.array([[1, 0], [2, 1]])  # GRBG
    cells = np.tile(colours, (16, 24))
    rng = np.random.default_rng(8)
    electrons = rng.poisson(s * red[cells] / np.asarray(wb)[cells]) + rng.normal(0, 3, cells.shape)
    adu = np.round(electrons / gain + np.tile(blacks, (16, 24))).astype(np.uint16)
    write_tiny_dng(
        tmp_path / "red.dng",
        adu,
        black=tuple(blacks.ravel()),
        white=4095,
        pattern="GRBG",
        white_balance=wb,
    )
    args = restore_tool.parse_args(
        [str(tmp_path / "red.dng"), "--output", str(tmp_path / "x.npy"), "--units", "adu"]
        + ["--gain", "2", "--domain", "photography", "--scale", "400", "--read-noise", "3"]
        + ["--steps", "3", "--tile", "16", "--overlap", "4"]
    )
    priors = lambda checkpoint: (
        LuminancePrior() if checkpoint == restore_tool.DEFAULT_CHECKPOINT else ColourPrior()
    )
    report = restore_tool.restore_one(
        tmp_path / "red.dng", tmp_path / "x.npy", priors, args, jax.random.key(0)
    )
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (32, 48, 3)
    np.testing.assert_allclose(x.mean(axis=(0, 1)), red, atol=0.05)
    assert report["operator"]["pattern"] == "GRBG" and report["checkpoint"] == "pdr-rgb-default"
    np.testing.assert_allclose(report["operator"]["gains"], (0.5, 1.0, 2 / 3), rtol=1e-3)
    assert all(0.6 < c < 1.5 for c in report["chi_square_per_channel"])
    args.cfa = "RGGB"  # the file's pattern overridden by a wrong one: not red any more
    restore_tool.restore_one(
        tmp_path / "red.dng", tmp_path / "y.npy", priors, args, jax.random.key(0)
    )
    assert np.abs(np.load(tmp_path / "y.npy").mean(axis=(0, 1)) - red).max() > 0.2


def test_an_output_that_is_the_input_is_refused_and_the_input_survives(tiny_model, tmp_path):
    """--output equal to the input, or a link to it, fails that file before any work (issue 35,
    defect 8); the measurement's bytes are unchanged and the other input is restored."""
    y, _ = _measurement((24, 24))
    np.save(tmp_path / "y.npy", y)
    original = (tmp_path / "y.npy").read_bytes()
    report = tmp_path / "r.json"
    code = restore_tool.main(
        [str(tmp_path / "y.npy"), "--output", str(tmp_path / "y.npy"), "--report", str(report)]
        + _args(tiny_model)
    )
    assert code == 1 and (tmp_path / "y.npy").read_bytes() == original
    assert (
        "refusing to overwrite the measurement"
        in json.loads(report.read_text())["failures"][0]["error"]
    )
    (tmp_path / "link.npy").symlink_to(tmp_path / "y.npy")
    code = restore_tool.main(
        [str(tmp_path / "y.npy"), "--output", str(tmp_path / "link.npy")] + _args(tiny_model)
    )
    assert code == 1 and (tmp_path / "y.npy").read_bytes() == original


def test_outputs_are_atomic_symlinks_replaced_and_a_full_disk_leaves_nothing(
    tiny_model, tmp_path, monkeypatch
):
    """Issue 35, defects 7 and 9: an output path that is a symlink is replaced, its target left
    alone; a write failing with ENOSPC (the std file of the first input) leaves neither that
    input's restoration nor a partial file nor a temporary one, counts it as failed, restores
    the next input and still writes the report."""
    import errno

    y, _ = _measurement((24, 24))
    for name in ("a", "b"):
        np.save(tmp_path / f"{name}.npy", y)
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "precious.npy").write_bytes(b"keep me")
    (out / "b.tif").symlink_to(tmp_path / "precious.npy")  # folder outputs are .tif
    real = pdr_jax.io.writers.write_image

    def full_disk(path, x, meta=None, history=()):
        if "std" in str(history) and "a.npy" in str(history):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, x, meta, history)

    monkeypatch.setattr(pdr_jax.io.writers, "write_image", full_disk)
    report = tmp_path / "r.json"
    argv = [str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--output", str(out)]
    argv += ["--uncertainty", str(tmp_path / "std"), "--num-samples", "2", "--report", str(report)]
    assert restore_tool.main(argv + _args(tiny_model)) == 1
    assert (tmp_path / "precious.npy").read_bytes() == b"keep me"
    assert not (out / "b.tif").is_symlink() and tifffile.imread(out / "b.tif").shape == (24, 24)
    assert sorted(p.name for p in out.iterdir()) == ["b.tif"]  # no a.tif, no temporary file
    assert sorted(p.name for p in (tmp_path / "std").iterdir()) == ["b.tif"]
    saved = json.loads(report.read_text())
    assert saved["summary"]["restored"] == 1 and "No space left" in saved["failures"][0]["error"]


def test_nan_pixels_of_a_fits_frame_are_masked_or_refused(tiny_model, tmp_path):
    """A FITS frame with NaN pixels (BLANK in astronomy) restores by default: those pixels are
    out of the likelihood, filled by the prior (finite there), counted in the report with a
    warning; --nonfinite refuse fails the file naming the count."""
    from astropy.io import fits

    y, _ = _measurement((24, 24))
    y[3, 4] = y[10, 11] = np.nan
    fits.PrimaryHDU(y).writeto(tmp_path / "frame.fits")
    report = tmp_path / "r.json"
    argv = [str(tmp_path / "frame.fits"), "--output", str(tmp_path / "x.npy")]
    argv += ["--report", str(report), *_args(tiny_model)]
    assert restore_tool.main(argv) == 0
    x = np.load(tmp_path / "x.npy")
    assert np.all(np.isfinite(x))
    image = json.loads(report.read_text())["images"][0]
    assert image["nonfinite_pixels"] == 2 and any("2 NaN/Inf" in w for w in image["warnings"])
    assert restore_tool.main([*argv, "--nonfinite", "refuse"]) == 1
    (failure,) = json.loads(report.read_text())["failures"]
    assert "2 non-finite pixel(s)" in failure["error"]


def test_a_psf_deconvolves_an_image_of_any_size_and_keeps_the_fits_header(
    tiny_model, tmp_path, capsys
):
    """--psf as a parametric form and as a file: a 37 x 45 FITS frame (tiles, the margin of
    the PSF's radius) comes back at its size with its WCS, the report and HISTORY name the PSF;
    a PSF file with even sides is refused naming that file, and the run exits 1."""
    import json

    from astropy.io import fits
    from scipy import ndimage, signal

    from pdr_jax.physics import psf

    clean = _measurement((37, 45))[1]
    rng = np.random.default_rng(3)
    blurred = ndimage.convolve(clean, psf.gaussian(2.5), mode="reflect")
    y = (rng.poisson(20.0 * blurred) + rng.normal(0, 2.0, blurred.shape)).astype(np.float32)
    fits.PrimaryHDU(y, header=fits.Header({"CRVAL1": 150.1, "EXPTIME": 30.0})).writeto(
        tmp_path / "y.fits"
    )
    np.save(tmp_path / "psf.npy", psf.moffat(3.0, 2.5))
    for spec in ("gaussian:2.5", str(tmp_path / "psf.npy")):
        out, report = tmp_path / "x.fits", tmp_path / "report.json"
        code = restore_tool.main(
            [str(tmp_path / "y.fits"), "--output", str(out), "--psf", spec, "--report", str(report)]
            + _args(tiny_model)
        )
        assert code == 0
        with fits.open(out) as hdul:
            assert hdul[0].data.shape == (37, 45) and hdul[0].header["CRVAL1"] == 150.1
            history = "".join(str(line) for line in hdul[0].header["HISTORY"])  # cards of 72
            assert f"--psf {spec}" in history
        image = json.loads(report.read_text())["images"][0]
        assert image["operator"]["name"] == "Blur" and image["operator"]["psf"] == spec
        assert np.isfinite(image["chi_square"])

    # --psf auto: four isolated stars of a Moffat of FWHM 3 px; HISTORY and the report carry
    # the fitted form, so the restoration can be repeated with it. Stars of FWHM 2 and 4.5 px in
    # one field: restored with the median, and a warning that the stars disagree.
    def star_field(widths):
        field = np.zeros((64, 64))
        for (row, col), width in zip([(16, 16), (16, 48), (48, 16), (48, 48)], widths, strict=True):
            star = np.zeros((64, 64))
            star[row, col] = 150.0 * (width / 3.0) ** 2  # the same peak whatever the width
            field += signal.fftconvolve(star, psf.moffat(width, 2.5), mode="same")
        return (rng.poisson(20.0 * field + 1.0) + rng.normal(0, 2.0, field.shape)).astype(
            np.float32
        )

    images = {}
    for name, widths in (("stars", [3.0] * 4), ("mixed", [2.0, 4.5, 2.0, 4.5])):
        fits.PrimaryHDU(star_field(widths)).writeto(tmp_path / f"{name}.fits")
        code = restore_tool.main(
            [str(tmp_path / f"{name}.fits"), "--output", str(tmp_path / f"{name}_x.fits")]
            + ["--psf", "auto", "--report", str(report), *_args(tiny_model)]
        )
        assert code == 0
        images[name] = json.loads(report.read_text())["images"][0]
    fit = images["stars"]["psf_fit"]
    assert fit["num_stars"] == 4 and abs(fit["fwhm"] / 3.0 - 1) < 0.1
    with fits.open(tmp_path / "stars_x.fits") as hdul:
        assert f"--psf {fit['spec']}" in "".join(str(h) for h in hdul[0].header["HISTORY"])
    spread = [w for w in images["mixed"]["warnings"] if w.startswith("--psf auto: the 4 stars")]
    assert not any("--psf auto" in w for w in images["stars"]["warnings"]) and len(spread) == 1
    np.save(tmp_path / "even.npy", np.ones((4, 4)))
    code = restore_tool.main(
        [str(tmp_path / "y.fits"), "--output", str(tmp_path / "z.fits")]
        + ["--psf", str(tmp_path / "even.npy"), *_args(tiny_model)]
    )
    assert code == 1 and not (tmp_path / "z.fits").exists()
    assert "even.npy: a PSF must have odd sides" in capsys.readouterr().err


def test_the_estimate_ensemble_is_the_default_and_one_call_is_the_fast_setting(
    tiny_model, tmp_path
):
    """Where the one-call estimate is the result (--steps 0 here), it is averaged over 8 flips
    and transposes of each tile by default (8 network calls per tile), once with
    --estimate-ensemble 1; HISTORY records which."""
    y, _ = _measurement((24, 24))
    tifffile.imwrite(tmp_path / "y.tif", y)
    calls, images = {}, {}
    for extra in ([], ["--estimate-ensemble", "1"]):
        out, report = tmp_path / f"x{len(extra)}.fits", tmp_path / f"r{len(extra)}.json"
        argv = [str(tmp_path / "y.tif"), "--output", str(out), "--report", str(report)]
        assert restore_tool.main([*argv, *_args(tiny_model, "--steps", "0", *extra)]) == 0
        image = json.loads(report.read_text())["images"][0]
        calls[len(extra)], images[len(extra)] = image["network_calls"], fits.getdata(out)
        history = "".join(str(h) for h in fits.getheader(out)["HISTORY"])
        assert f"--estimate-ensemble {8 if not extra else 1}" in history
    assert calls == {0: 8, 2: 1}
    # The fresh tiny network is close to its skip connection, a flip-equivariant map: the two
    # images agree (the averaging itself is tested exactly in test_composite.py).
    np.testing.assert_allclose(images[0], images[2], atol=1e-4)


def test_conserve_flux_off_leaves_the_sampler_s_total(tiny_model, tmp_path):
    """By default (microscopy: scale) the restoration is scaled to the measured total (report
    flux_scale); with --conserve-flux off the scale is 1 and the image is the default's divided
    by it; with offset (astronomy's default) a constant is added instead (flux_offset) (the
    fast one-call setting: one deterministic network call per tile); HISTORY says so."""
    y, _ = _measurement((24, 24))
    tifffile.imwrite(tmp_path / "y.tif", y)
    reports, images = [], []
    for extra in ([], ["--conserve-flux", "off"], ["--conserve-flux", "offset"]):
        out, report = tmp_path / f"x{len(reports)}.fits", tmp_path / f"r{len(reports)}.json"
        argv = [str(tmp_path / "y.tif"), "--output", str(out), "--report", str(report)]
        fast = ("--steps", "0", "--estimate-ensemble", "1", *extra)
        assert restore_tool.main([*argv, *_args(tiny_model, *fast)]) == 0
        reports.append(json.loads(report.read_text())["images"][0])
        images.append(fits.getdata(out))
        history = "".join(str(h) for h in fits.getheader(out)["HISTORY"])
        assert (f"--conserve-flux {extra[-1]}" in history) if extra else "--conserve" not in history
    (scale,), (offset,) = reports[0]["flux_scale"][0], reports[2]["flux_offset"][0]
    assert abs(scale - 1) > 1e-3 and reports[0]["flux_offset"] == [[0.0]]
    assert reports[1]["flux_scale"] == [[1.0]] and reports[1]["flux_offset"] == [[0.0]]
    assert reports[2]["flux_scale"] == [[1.0]] and abs(offset) > 1e-4
    np.testing.assert_allclose(images[0], np.clip(images[1] * scale, 0, 1), atol=1e-6)
    np.testing.assert_allclose(images[2], np.clip(images[1] + offset, 0, 1), atol=1e-6)
