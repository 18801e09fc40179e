"""tools/evaluate.py and pdr_jax.evaluation: benchmark, methods, tables, resolution, regression."""

import dataclasses
import importlib.util
import json
import math
import types

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tiny_models import save_tiny_prior, tiny_prior

from pdr_jax.data import transforms
from pdr_jax.evaluation import benchmark, methods, report, resolution
from pdr_jax.io import readers
from pdr_jax.restore import COLOUR_SAMPLER, MOSAIC_SAMPLER, SamplerSettings

evaluate_tool = importlib.import_module("pdr_jax.cli.evaluate")

TINY = dict(attn_resolutions=())  # tiny_models.TINY_PRIOR without attention


def _make_tiny_model(directory):
    """A tiny conditional network, its parameters jittered so that the labels matter (at EDM's
    init the label path starts at zero), saved as a model directory."""
    save_tiny_prior(directory, jitter=0.05, **TINY)
    return directory


def test_clean_crops_are_held_out_and_deterministic():
    images = benchmark.load_clean_images(crop=32, per_domain=2)
    assert [i.domain for i in images] == ["photography"] * 2 + ["microscopy"] * 2 + [
        "astronomy"
    ] * 2
    again = benchmark.load_clean_images(crop=32, per_domain=2)
    for image, other in zip(images, again, strict=True):
        np.testing.assert_array_equal(image.clean, other.clean)
        assert image.clean.shape == (32, 32, 1) and image.clean.dtype == np.float32
        # The crop lies in the right-most 25% of the picture's columns, and is that picture.
        name, position = image.name.split("/")[1].split("@")
        row, col = map(int, position.split(","))
        picture, _ = readers.read_skimage(name.split("#")[0])
        width = picture.shape[2]
        assert col >= width - transforms.held_out_columns(width, 0.25)
        assert not any(reserved in name for reserved in ("moon", "cell", "retina"))
    photo = images[0]
    picture, meta = readers.read_skimage(photo.name.split("/")[1].split("@")[0])
    row, col = map(int, photo.name.split("@")[1].split(","))
    patch = picture[0, row : row + 32, col : col + 32].astype(np.float32) / 255
    gray = readers.to_gray(patch, meta.channel_names)
    np.testing.assert_allclose(photo.clean, gray, atol=1e-6)


def test_cases_are_deterministic_per_image_and_scale():
    images = benchmark.load_clean_images(crop=16, per_domain=1)
    both = benchmark.make_cases(images, [1.0, 100.0], read_noise=2.0, background=0.5, seed=3)
    alone = benchmark.make_cases(images, [100.0], read_noise=2.0, background=0.5, seed=3)
    assert len(both) == 6 and [c.s for c in both] == [1.0] * 3 + [100.0] * 3
    for case, same in zip(both[3:], alone, strict=True):
        assert case.name == same.name
        np.testing.assert_array_equal(case.y, same.y)
    other_seed = benchmark.make_cases(images, [100.0], read_noise=2.0, background=0.5, seed=4)
    assert not np.array_equal(other_seed[0].y, alone[0].y)
    residual = np.concatenate([(c.y - 100 * c.image.clean - 0.5).ravel() for c in alone])
    assert abs(residual.mean()) < 1.0  # y = Poisson(s x + b) + N(0, r^2) has mean s x + b


def _rows():
    """Synthetic per-image rows: 2 methods x 2 domains x 2 scales x 2 images."""
    rows = []
    for method, offset in (("noisy", 0.0), ("pdr", 5.0)):
        for domain in ("photography", "astronomy"):
            for scale in (1.0, 10.0):
                for i in range(2):
                    row = {m: 0.5 for m in benchmark.METRICS}
                    row.update(
                        method=method,
                        domain=domain,
                        image=f"{domain}/im@0,{i}",
                        scale=scale,
                        read_noise=2.0,
                        background=0.0,
                        seconds=0.1 + offset,
                        psnr=10 + offset + 10 * np.log10(scale) + i,
                        frc_px=float(i + 2),
                    )
                    rows.append(row)
    rows[-1]["frc_px"] = float("inf")  # a curve that starts below 1/7
    return rows


def test_tables_figures_and_regression(tmp_path):
    rows = _rows()
    summary = report.write_outputs(
        tmp_path,
        rows,
        title="Synthetic",
        examples={
            1.0: {"photography": {"clean": np.zeros((16, 16, 1)), "noisy": np.ones((16, 16, 1))}},
        },
    )
    assert len(summary) == 8
    cell = next(
        c for c in summary if (c["method"], c["domain"], c["scale"]) == ("pdr", "astronomy", 10.0)
    )
    assert cell["images"] == 2 and cell["psnr"] == pytest.approx(25.5) and cell["frc_px"] == np.inf
    table = (tmp_path / "table.md").read_text()
    assert "| domain | s (e-) | noisy | pdr |" in table
    assert "| photography | 1 | 10.50 / 0.500 / 0.50 | **15.50** / 0.500 / 0.50 |" in table
    assert "| pdr | 5.100 |" in table  # seconds per image
    assert "| astronomy | 10 | 0.5 / 0.5 / 0.5 | 0.5 / 0.5 / 0.5 |" in table  # point sources
    assert "| pdr | astronomy | 10 | 0.5000 | 0.500 | 0.500 |" in table  # posterior std
    for name in ("results.csv", "summary.csv", "psnr_vs_photons.png", "examples_s1.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert Image.open(tmp_path / "psnr_vs_photons.png").size[0] > 400
    # CSV round trip, then the regression rule: a 5% margin on each cell's mean PSNR.
    previous = report.read_csv(tmp_path / "results.csv")
    assert len(previous) == len(rows) and previous[0]["psnr"] == pytest.approx(rows[0]["psnr"])
    assert report.compare_to(summary, previous) == ([], [])
    assert report.compare_to(summary, report.read_csv(tmp_path / "summary.csv"))[0] == []
    worse = [dict(r, psnr=r["psnr"] * 0.97) for r in rows]
    assert report.compare_to(report.summarise(worse), previous)[0] == []
    worse = [dict(r, psnr=r["psnr"] * (0.9 if r["method"] == "pdr" else 1)) for r in rows[:-2]]
    failures, notes = report.compare_to(report.summarise(worse), previous)
    assert len(failures) == 3 and all(f.startswith("pdr/") for f in failures)
    assert notes == ["pdr/astronomy/s=10: only in the earlier run"]


def test_a_sampling_method_scores_its_posterior_std():
    """A method returning (x_hat, std) gets its std's mean and coverage scored per image; one
    returning x_hat alone gets None there."""
    cases = benchmark.make_cases(
        benchmark.load_clean_images(crop=16, per_domain=1), [10.0], read_noise=2.0
    )

    def sampling(y, *, s, r, b, domain, key, spread, operator):
        x = np.clip((y - b) / s, 0, 1)
        return x, np.full_like(x, spread)

    methods_ = {
        "wide": benchmark.Method(lambda y, **kw: sampling(y, spread=1.0, **kw)),
        "narrow": benchmark.Method(lambda y, **kw: sampling(y, spread=1e-9, **kw)),
        "point": benchmark.Method(lambda y, *, s, b, **kw: np.clip((y - b) / s, 0, 1)),
    }
    rows = benchmark.run_methods(cases, methods_, log=lambda _: None).rows
    by_method = {m: [r for r in rows if r["method"] == m] for m in methods_}
    assert all(r["coverage_1sd"] == r["coverage_2sd"] == 1.0 for r in by_method["wide"])
    assert all(r["std_mean"] == pytest.approx(1.0) for r in by_method["wide"])
    assert all(r["coverage_2sd"] < 0.05 for r in by_method["narrow"])
    assert all(r["coverage_1sd"] is None and r["std_mean"] is None for r in by_method["point"])
    astronomy = [r for r in by_method["point"] if r["domain"] == "astronomy"]
    assert astronomy and all(r["sources_false"] is not None for r in astronomy)


def test_total_flux_is_scored_in_units_of_its_own_uncertainty_and_weighted_by_flux():
    """flux_z of x_hat = 1.02 x is 0.02 sum(x) s / sqrt(sum(s x + b + r^2)) (closed form); a
    cell's flux_error is sum(flux_hat) / sum(flux_true) - 1, so a nearly black crop with +100 %
    moves it by its share of the flux, not by 100 % / crops."""
    (image,) = benchmark.load_clean_images(crop=16, per_domain=1)[:1]
    (case,) = benchmark.make_cases([image], [40.0], read_noise=3.0, background=2.0)
    row = benchmark.score(case, 1.02 * image.clean)
    x = image.clean.astype(np.float64)
    expected = 0.02 * x.sum() * 40.0 / np.sqrt(np.sum(40.0 * x + 2.0 + 9.0))
    assert row["flux_z"] == pytest.approx(expected, rel=1e-4)
    assert row["flux_hat"] / row["flux_true"] == pytest.approx(1.02, rel=1e-5)
    rows = [
        {"method": "m", "domain": "d", "scale": 1.0, "flux_true": 99.0, "flux_hat": 99.0},
        {"method": "m", "domain": "d", "scale": 1.0, "flux_true": 1.0, "flux_hat": 2.0},
    ]
    (cell,) = report.summarise(rows)
    assert cell["flux_error"] == pytest.approx(0.01) and cell["flux_true"] == 100.0


def test_a_restoration_equal_to_its_truth_is_counted_not_averaged():
    """PSNR is infinite for a restoration equal to its truth (a black crop restored to 0): the
    cell's mean is over the other crops, `exact` counts it, and the table says so."""
    rows = [
        {"method": "m", "domain": "d", "scale": 1.0, "psnr": 30.0, "ssim": 0.5},
        {"method": "m", "domain": "d", "scale": 1.0, "psnr": 32.0, "ssim": 0.7},
        {"method": "m", "domain": "d", "scale": 1.0, "psnr": math.inf, "ssim": 1.0},
    ]
    (cell,) = report.summarise(rows)
    assert cell["psnr"] == 31.0 and cell["exact"] == 1 and cell["images"] == 3
    table = report.markdown_table([cell])
    assert "31.00 (+1 exact) / 0.733" in table and "left out of the mean PSNR" in table
    (plain,) = report.summarise(rows[:2])
    assert plain["exact"] == 0 and "exact" not in report.markdown_table([plain])


def test_recommend_resolution():
    summary = [
        {"resolution": 32, "psnr": 24.0, "seconds": 1.0, "memory_mb": 100.0},
        {"resolution": 64, "psnr": 26.0, "seconds": 2.0, "memory_mb": 400.0},
        {"resolution": 128, "psnr": 26.0, "seconds": 3.0, "memory_mb": 1600.0},
        {"resolution": 256, "error": "image is too small"},
    ]
    assert resolution.recommend_resolution(summary)[0] == 64  # tie on PSNR: the faster
    assert resolution.recommend_resolution(summary, max_memory_mb=200)[0] == 32
    assert resolution.recommend_resolution(summary, max_seconds=1.5, min_psnr=20)[0] == 32
    choice, reason = resolution.recommend_resolution(summary, max_memory_mb=200, min_psnr=25)
    assert choice is None and "32: PSNR 24.00 < 25 dB" in reason and "64: memory 400" in reason
    assert "Recommendation: " in resolution.markdown(summary[3:], (None, reason))


def test_ablations_and_method_registry(tmp_path, monkeypatch):
    assert methods.parse_ablation("likelihood=wls,exact") == [
        ("likelihood", "wls"),
        ("likelihood", "exact"),
    ]
    assert methods.parse_ablation("conditioning=off") == [("conditioning", False)]
    assert methods.parse_ablation("kappa=0.5,2") == [("kappa", 0.5), ("kappa", 2.0)]
    assert methods.parse_ablation("kappa=auto,1") == [("kappa", "auto"), ("kappa", 1.0)]
    for bad in ("likelihood=poisson", "temperature=1", "steps", "guidance=x1", "steps=two"):
        with pytest.raises(ValueError):
            methods.parse_ablation(bad)
    with pytest.raises(ValueError, match="expected a number >= 0 or 'auto', got 'strong'"):
        methods.parse_ablation("kappa=0.5,strong")
    assert methods.parse_ablation("measured_luminance=off,on") == [
        ("measured_luminance", False),
        ("measured_luminance", True),
    ]
    assert methods.parse_ablation("polish_factor=0,0.3") == [
        ("polish_factor", 0.0),
        ("polish_factor", 0.3),
    ]
    with pytest.raises(ValueError, match=r"expected one of \[.*'on'.*\], got 'maybe'"):
        methods.parse_ablation("measured_luminance=maybe")
    with pytest.raises(ValueError, match="polish_factor >= 0"):
        methods.parse_ablation("polish_factor=-1")
    for kappa in (-1.0, float("nan"), "strong"):
        with pytest.raises(ValueError, match="kappa must be >= 0 or 'auto'"):
            methods.with_field(methods.PdrSettings(), "kappa", kappa)
    assert methods.parse_ablation("start_factor=0.5") == [("start_factor", 0.5)]
    assert methods.parse_ablation("deblur_iterations=None,2") == [
        ("deblur_iterations", None),
        ("deblur_iterations", 2),
    ]
    assert methods.parse_ablation("self_ensemble=2,8") == [
        ("self_ensemble", 2),
        ("self_ensemble", 8),
    ]
    with pytest.raises(ValueError, match="self_ensemble must be one of"):
        methods.parse_ablation("self_ensemble=3")
    tuned = methods.with_field(methods.PdrSettings(), "steps", 3)
    assert dict(tuned.sampler) == {"num_steps": 3}
    assert tuned.guidance == methods.PdrSettings().guidance
    with pytest.raises(ValueError, match=r"unknown SamplerSettings field\(s\) \['steps'\]"):
        methods.PdrSettings(sampler=(("steps", 3),))
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        methods.PdrSettings(sampler=(("num_steps", -1),))
    ablations = methods.parse_ablation("likelihood=wls,exact") + [("conditioning", False)]
    variants = methods.pdr_variants(methods.PdrSettings(), ablations)
    assert list(variants) == ["pdr[likelihood=exact]", "pdr[conditioning=off]"]
    assert variants["pdr[conditioning=off]"].conditioning is False
    # No model (the default directory is still empty): pdr and its variants are skipped with a
    # reason, baselines still run.
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(methods, "DEFAULT_CHECKPOINT", tmp_path / "empty")
    monkeypatch.setattr(methods, "DEFAULT_CONDITIONAL", tmp_path / "empty")
    messages = []
    built = methods.build_methods(
        ["pdr", "conditional", "noisy"], methods.MethodOptions(), ablations, log=messages.append
    )
    assert list(built) == ["noisy"]
    assert any("pdr: no model" in m for m in messages)
    assert any(
        "conditional: the concat-conditioned" in m and "--conditional-checkpoint" in m
        for m in messages
    )
    assert sum(m.startswith("SKIPPED method pdr[") for m in messages) == 2
    # Each diffusion method named gets its own variants, built by its own factory.
    monkeypatch.setitem(methods.METHODS, "pdr-lc", lambda options: options.pdr)
    raw = methods.build_methods(
        ["pdr-lc", "noisy-raw"], methods.MethodOptions(mode="raw"), [("steps", 2)], log=print
    )
    assert list(raw) == ["pdr-lc", "noisy-raw", "pdr-lc[steps=2]"]
    assert raw["pdr-lc"].sampler == () and dict(raw["pdr-lc[steps=2]"].sampler) == {"num_steps": 2}
    with pytest.raises(KeyError, match="unknown methods"):
        methods.build_methods(["bm4d"], methods.MethodOptions())
    y = np.full((2, 16, 16, 1), 25.0, np.float32)
    x = built["noisy"].restore(y, s=50.0, r=2.0, b=5.0, domain="photography", key=None)
    np.testing.assert_allclose(x, 0.4)


def test_restore_pdr_takes_the_colour_mode_defaults_unless_settings_name_others(monkeypatch):
    """pdr-opp's self-ensemble of 8 and COLOUR_SAMPLER, pdr-lc's MOSAIC_SAMPLER: the
    self-ensemble replaced by what PdrSettings names, the sampler's fields where PdrSettings
    changes them (an ablation of steps keeps the mode's threshold and its estimate_ensemble of
    1; colour_denoiser is the one place they are composed)."""
    seen = []

    def fake_restore(denoiser, y, *, sampler, **kwargs):
        seen.append((denoiser, sampler))
        return types.SimpleNamespace(image=y, std=None)

    monkeypatch.setattr(methods, "restore", fake_restore)
    gray, colour = methods.Prior(*tiny_prior()), methods.Prior(*tiny_prior(img_channels=3))
    steps = methods.with_field(methods.PdrSettings(), "steps", 2)
    default_threshold = {"refine_min_noise": SamplerSettings().refine_min_noise}
    gray_threshold = methods.with_field(methods.PdrSettings(), "refine_min_noise", 0.4)
    # A self-ensembled denoiser is averaged at every call: its one-call estimate is not again.
    replace = dataclasses.replace
    once = lambda sampler: replace(sampler, estimate_ensemble=1)
    cases = [
        (gray, None, methods.PdrSettings(), "Prior", 1, SamplerSettings()),
        (gray, "opponent", methods.PdrSettings(), "OpponentPrior", 8, once(COLOUR_SAMPLER)),
        (
            gray,
            "opponent",
            methods.PdrSettings(self_ensemble=2),
            "OpponentPrior",
            2,
            once(COLOUR_SAMPLER),
        ),
        (
            gray,
            "opponent",
            methods.PdrSettings(self_ensemble=1),
            "OpponentPrior",
            1,
            COLOUR_SAMPLER,
        ),
        (colour, "luma", methods.PdrSettings(), "LumaChromaPrior", 1, MOSAIC_SAMPLER),
        (colour, "luma", steps, "LumaChromaPrior", 1, replace(MOSAIC_SAMPLER, num_steps=2)),
        # A field set to SamplerSettings' own default still replaces the mode's.
        (
            colour,
            "luma",
            gray_threshold,
            "LumaChromaPrior",
            1,
            replace(MOSAIC_SAMPLER, **default_threshold),
        ),
        (gray, "opponent", steps, "OpponentPrior", 8, replace(once(COLOUR_SAMPLER), num_steps=2)),
        (gray, None, methods.PdrSettings(self_ensemble=8), "Prior", 8, once(SamplerSettings())),
    ]
    for prior, mode, settings, name, size, sampler in cases:
        out = methods.restore_pdr(
            prior,
            7,
            s=1,
            r=1,
            b=0,
            domain="photography",
            key=None,
            settings=settings,
            colour=mode,
            gray=gray,
        )
        denoiser, used = seen.pop()
        assert out == 7 and used == sampler
        assert getattr(denoiser, "size", 1) == size
        assert type(getattr(denoiser, "prior", denoiser)).__name__ == name


@pytest.mark.slow
def test_evaluate_tool_end_to_end(tmp_path, capsys):
    """2 clean images x 2 scales, every method (conditional, given the prior as
    --conditional-checkpoint, is skipped with its reason), an
    ablation and a processing resolution of 8 (3 x 3 tiles per 16-pixel crop); then the
    regression mode. About 20 s on an idle 2-core CPU, mostly compiling the sampler twice."""
    model = _make_tiny_model(tmp_path / "model")
    clean = tmp_path / "clean"
    clean.mkdir()
    yy, xx = np.mgrid[:24, :24]
    for i, pattern in enumerate((xx * 10, (xx + yy) * 5 + 40)):
        Image.fromarray(np.clip(pattern, 0, 255).astype(np.uint8)).save(clean / f"im{i}.png")
    out = tmp_path / "out"
    argv = [
        "--clean",
        str(clean),
        "--domain",
        "microscopy",
        "--crop",
        "16",
        "--num-images",
        "2",
        "--scales",
        "2,50",
        "--read-noise",
        "1.5",
        "--checkpoint",
        str(model),
        "--steps",
        "2",
        "--ablation",
        "conditioning=off",
        "--resolutions",
        "8",
        "--out",
        str(out),
        "--conditional-checkpoint",
        str(model),
    ]
    assert evaluate_tool.main(argv) == 0
    log = capsys.readouterr().out
    assert "SKIPPED method conditional" in log and "is a prior model" in log
    assert "recommended resolution: " in log
    rows = report.read_csv(out / "results.csv")
    names = ["pdr", "gat-bm3d", "nlm", "noisy", "pdr[conditioning=off]"]
    assert [r["method"] for r in rows[::4]] == names and len(rows) == 4 * len(names)
    for row in rows:
        assert row["domain"] == "microscopy" and row["scale"] in (2.0, 50.0)
        assert np.isfinite([row[m] for m in ("psnr", "ssim", "chi_square", "seconds")]).all()
    pdr = [r["psnr"] for r in rows if r["method"] == "pdr"]
    assert pdr != [r["psnr"] for r in rows if r["method"] == "pdr[conditioning=off]"]
    table = (out / "table.md").read_text()
    assert "| microscopy | 50 |" in table and "### Processing resolution" in table
    (tiles,) = report.read_csv(out / "resolutions.csv")
    assert tiles["resolution"] == 8 and tiles["tiles"] == 9 and tiles["memory_mb"] > 0
    for name in ("summary.csv", "psnr_vs_photons.png", "examples_s2.png", "resolution_rows.csv"):
        assert (out / name).exists()
    assert json.loads((out / "settings.json").read_text())["pdr"]["sampler"]["num_steps"] == 2

    # Regression mode: the noisy estimate against an earlier run where it was 10% better.
    earlier = [dict(r, psnr=r["psnr"] * 1.1) for r in rows if r["method"] == "noisy"]
    report.write_csv(earlier, tmp_path / "earlier.csv", report.ROW_FIELDS)
    common = [
        "--clean",
        str(clean),
        "--domain",
        "microscopy",
        "--crop",
        "16",
        "--num-images",
        "2",
        "--scales",
        "2,50",
        "--read-noise",
        "1.5",
        "--methods",
        "noisy",
    ]
    again = ["--out", str(tmp_path / "again"), "--compare-to", str(out / "summary.csv")]
    assert evaluate_tool.main(common + again) == 0  # same benchmark, same numbers
    worse = ["--out", str(tmp_path / "worse"), "--compare-to", str(tmp_path / "earlier.csv")]
    assert evaluate_tool.main(common + worse) == 1
    assert (tmp_path / "worse" / "regression.md").read_text().count("- FAIL noisy/") == 2


def test_steps_sweep_runs_where_the_sampler_refines_and_recommends_the_cheapest(tmp_path):
    """pdr_jax.evaluation.steps on a tiny model: only refined cases (s = 2, not 500) are run,
    one row per setting with its network calls; recommend takes the fewest calls within 0.1 dB
    of the best; the table and figure are written."""
    from pdr_jax.evaluation import steps

    prior = methods.load_prior(
        methods.MethodOptions(checkpoint=str(_make_tiny_model(tmp_path / "m")))
    )
    images = benchmark.load_clean_images(crop=16, per_domain=1)[:1]
    cases = benchmark.make_cases(images, [2.0, 500.0], read_noise=1.0)
    assert [c.s for c in steps.refined_cases(cases, methods.PdrSettings())] == [2.0]
    summary, rows = steps.evaluate_steps(
        cases, prior, methods.PdrSettings(), (("heun", 2), ("euler", 2)), log=lambda _: None
    )
    assert [(r["solver"], r["network_calls"], r["images"]) for r in summary] == [
        ("heun", 4, 1),
        ("euler", 3, 1),
    ]
    assert [r["method"] for r in rows] == ["pdr[heun,2]", "pdr[euler,2]"]
    assert all(np.isfinite(r["psnr"]) and r["scale"] == 2.0 for r in rows)
    synthetic = [
        {"solver": "heun", "steps": 6, "network_calls": 12, "psnr": 30.0},
        {"solver": "euler", "steps": 6, "network_calls": 7, "psnr": 29.95},
        {"solver": "euler", "steps": 4, "network_calls": 5, "psnr": 29.5},
    ]
    assert steps.recommend(synthetic)["network_calls"] == 7
    assert steps.recommend(synthetic, margin_db=1.0)["network_calls"] == 5
    steps.plot(summary, tmp_path / "sweep.png")
    assert Image.open(tmp_path / "sweep.png").size[0] > 400
    assert "| euler | 2 | 3 |" in steps.markdown(summary, steps.recommend(summary))
    best = max(summary, key=lambda r: r["psnr"])
    assert best["psnr_vs_best"] == 0.0 and all(np.isnan(r["psnr_vs_best_se"]) for r in summary)


def test_the_steps_sweep_compares_settings_image_by_image():
    """paired_to_best: per-case differences to the best setting (closed form: diffs -0.1, -0.2,
    -0.3 -> mean -0.2, se 0.1 / sqrt(3)); resolved when the gap lies > 2 se from the margin."""
    from pdr_jax.evaluation import steps

    def rows(method, psnrs):
        return [
            dict(
                method=method,
                domain="d",
                image=f"i{k}",
                scale=2.0,
                read_noise=0.5,
                background=0.0,
                psnr=p,
            )
            for k, p in enumerate(psnrs)
        ]

    summary = [
        {"solver": "euler", "steps": 6, "network_calls": 7, "psnr": 30.0},
        {"solver": "euler", "steps": 4, "network_calls": 5, "psnr": 29.8},
    ]
    summary = [{**row, "chi_square": 1.0, "seconds": 0.1} for row in summary]
    paired = steps.paired_to_best(
        summary, rows("pdr[euler,6]", [30.1, 30.0, 29.9]) + rows("pdr[euler,4]", [30.0, 29.8, 29.6])
    )
    assert paired[0]["psnr_vs_best"] == 0.0 and paired[0]["psnr_vs_best_se"] == 0.0
    np.testing.assert_allclose(paired[1]["psnr_vs_best"], -0.2, atol=1e-12)
    np.testing.assert_allclose(paired[1]["psnr_vs_best_se"], 0.1 / np.sqrt(3), atol=1e-12)
    choice = steps.recommend(paired, margin_db=0.25)
    assert choice["steps"] == 4 and not steps.resolved(choice, 0.25)  # |0.2 - 0.25| < 2 se
    assert steps.resolved(paired[1], 0.5) and "Not resolved" not in steps.markdown(
        paired, paired[1], 0.5
    )
    assert "Not resolved" in steps.markdown(paired, choice, 0.25)


def _tiny_corpus(root):
    """A corpus of 6 small astronomy renditions and simulated microscopy (no apt: a fake package)."""
    from pdr_jax.data import corpus_build

    tree = root / "pkg" / "usr/share/sky"
    tree.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        image = np.clip(rng.gamma(2.0, 30 + 10 * i, (48, 48)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(tree / f"field{i}.png")
    packages = {"pkg": (corpus_build.Selection("astronomy", "usr/share/sky/*.png", kind="render"),)}
    simulated = (("fluorescence", "microscopy", {"train": 2, "val": 2, "test": 2}),)
    return corpus_build.build(
        root / "corpus", packages=packages, fetch=lambda name, _: root / name, simulated=simulated
    )


def test_corpus_benchmark_protocol_and_gaussian_diagnostic(tmp_path, capsys):
    """--clean corpus:val@ROOT: the val split's crops (real astronomy, simulated microscopy,
    embedded held-out columns), s = 2..250, r = 0.5 and 3 averaged, astronomy sky 0.05 s; and
    the prior diagnostic table."""
    manifest = _tiny_corpus(tmp_path)
    val_files = {r["file"].split("/")[-1] for r in manifest["images"] if r["split"] == "val"}
    images = benchmark.load_clean_images(f"corpus:val@{tmp_path / 'corpus'}", crop=32, per_domain=3)
    names = [i.name for i in images]
    assert {i.domain for i in images} == {"photography", "microscopy", "astronomy"}
    astronomy = [n for n in names if n.startswith("astronomy/")]
    assert astronomy and all(any(f in n for f in val_files) or "hubble" in n for n in astronomy)
    assert not any(
        r["file"].split("/")[-1] in n
        for n in names
        for r in manifest["images"]
        if r["split"] != "val"
    )
    with pytest.raises(ValueError, match="corpus:val or corpus:test"):
        benchmark.load_clean_images(f"corpus:train@{tmp_path / 'corpus'}", crop=32)

    cases = benchmark.make_cases(
        images[:2] + images[-2:],
        benchmark.CORPUS_SCALES,
        read_noise=benchmark.CORPUS_READ_NOISES,
        sky_fraction=benchmark.CORPUS_SKY_FRACTION,
    )
    assert len(cases) == 4 * 4 * 2
    for case in cases:
        assert case.b == (0.05 * case.s if case.image.domain == "astronomy" else 0.0)
    assert {c.r for c in cases} == {0.5, 3.0}

    model = _make_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    argv = [
        "--clean",
        f"corpus:val@{tmp_path / 'corpus'}",
        "--crop",
        "16",
        "--num-images",
        "1",
        "--methods",
        "noisy",
        "--gaussian-denoising",
        "--checkpoint",
        str(model),
        "--out",
        str(out),
    ]
    assert evaluate_tool.main(argv) == 0
    rows = report.read_csv(out / "results.csv")
    assert sorted({r["scale"] for r in rows}) == [2.0, 10.0, 50.0, 250.0]
    assert sorted({r["read_noise"] for r in rows}) == [0.5, 3.0]
    summary = report.read_csv(out / "summary.csv")
    assert {r["read_noise"] for r in summary} == {1.75}  # both read noises in each cell
    diagnostic_rows = report.read_csv(out / "gaussian_denoising.csv")
    assert len(diagnostic_rows) == 3 * 4
    # The noisy input's PSNR is -20 log10(sigma) (one 16 px crop: sd 4.34 sqrt(2 / 256) = 0.38
    # dB), raised by clipping to [0, 1] (by <= 3 dB: a pixel at 0 or 1 keeps half its errors).
    # Over --seed 0-99: rows -1.0 to +3.1 dB from -20 log10(sigma), their mean +0.33 to +0.83.
    gap = np.array([row["noisy"] + 20 * np.log10(row["sigma"]) for row in diagnostic_rows])
    assert (gap > -2).all() and (gap < 5.5).all() and -0.5 < gap.mean() < 2, gap
    for row in diagnostic_rows:
        assert np.isfinite(row["prior"]) and np.isfinite(row["bm3d"])
    assert "prior - BM3D" in (out / "table.md").read_text()
    assert "0.5, 3 e- (averaged)" in capsys.readouterr().out


def test_gaussian_diagnostic_noise_is_the_stated_sigma():
    from pdr_jax.evaluation import diagnostic

    image = benchmark.CleanImage("x/y@0,0", "astronomy", np.full((64, 64, 1), 0.5, np.float32))
    noisy = diagnostic.noisy_crop(image, 0.1, seed=0)
    assert abs(float((noisy - 0.5).std()) - 0.1) < 0.005
    np.testing.assert_array_equal(noisy, diagnostic.noisy_crop(image, 0.1, seed=0))


def test_gaussian_diagnostic_calls_the_denoiser_in_model_space():
    """An exact denoiser of model-space data (a constant image 2 * 0.3 - 1 = -0.4 with
    sigma 2 * 0.1) must give back the clean image: the [0, 1] <-> model-space mapping."""
    from pdr_jax.evaluation import diagnostic

    class Exact:
        class model:
            label_dim = 0

        @staticmethod
        def apply(variables, x, sigma, labels):
            # The posterior mean of a point prior at -0.4 is -0.4 whatever x; a sigma other
            # than the model-space 0.2 moves the output off it.
            return jnp.full_like(x, -0.4) + 100 * (sigma[:, None, None, None] - 0.2)

    image = benchmark.CleanImage(
        "photography/a@0,0", "photography", np.full((16, 16, 1), 0.3, np.float32)
    )
    (row,) = diagnostic.gaussian_denoising([image], Exact, {}, sigmas=(0.1,), with_bm3d=False)
    assert row["prior"] > 80  # exact: PSNR limited only by float rounding


def test_colour_and_raw_modes_measure_and_score_through_the_operator():
    """--mode rgb: photographs only, [H, W, 3] crops as stored; --mode raw: the same crops in
    linear light (srgb_to_linear of them), measured through the RGGB mosaic ([H, W, 1] y), and
    scored on A(x_hat): the truth itself gets chi-square ~1 (32 x 32 mosaic pixels per crop: std
    ~0.045; bound 0.25, > 5 std), a mosaic's noisy estimate is [H, W, 3]. Methods outside their
    modes are unavailable with the reason."""
    from pdr_jax.physics import calibration

    rgb = benchmark.load_clean_images(crop=16, per_domain=2, mode="rgb")
    raw = benchmark.load_clean_images(crop=32, per_domain=2, mode="raw")
    assert {i.domain for i in rgb} == {"photography"} and rgb[0].clean.shape == (16, 16, 3)
    rgb32 = benchmark.load_clean_images(crop=32, per_domain=2, mode="rgb")
    np.testing.assert_allclose(raw[0].clean, calibration.srgb_to_linear(rgb32[0].clean), atol=1e-6)
    cases = benchmark.make_cases(raw, [50.0], read_noise=2.0, operator=benchmark.RAW_MOSAIC)
    assert cases[0].y.shape == (32, 32, 1)
    options = methods.MethodOptions(mode="raw")
    truth = benchmark.Method(lambda y, **kw: np.stack([c.image.clean for c in cases]))
    noisy = methods.build_methods(["noisy-raw"], options)["noisy-raw"]
    rows = benchmark.run_methods(
        cases, {"truth": truth, "noisy-raw": noisy}, log=lambda _: None
    ).rows
    assert all(abs(r["chi_square"] - 1) < 0.25 for r in rows if r["method"] == "truth")
    assert all(r["psnr"] > 10 for r in rows)
    skipped = []
    built = methods.build_methods(
        ["gat-cbm3d", "gat-bm3d-menon"], methods.MethodOptions(mode="gray"), log=skipped.append
    )
    assert built == {} and all("runs in modes" in line for line in skipped)
    with pytest.raises(ValueError, match="mode must be one of"):
        benchmark.load_clean_images(crop=16, mode="cmyk")


def test_blurred_cases_and_the_deconvolution_baselines():
    """--psf: the clean crop blurred as a crop of a larger scene (reflection beyond its edges:
    ndimage's "mirror"), then measured; the truth scores chi-square ~1 on the blurred model
    (64 x 64 pixels per crop: std ~0.025; bound 0.15, 6 std); the oracle's count per image is at
    least as good as the tuned count (the same iterations, RL_ITERATIONS' count is one of
    ORACLE_COUNTS); a deconvolution method without --psf is unavailable with the reason."""
    from scipy import ndimage

    from pdr_jax.io import read_psf

    blur = read_psf("gaussian:2.5")
    images = [
        i for i in benchmark.load_clean_images(crop=64, per_domain=1) if i.domain != "photography"
    ]
    x = images[0].clean
    np.testing.assert_allclose(
        benchmark.measure(blur, x[None])[0, ..., 0],
        ndimage.convolve(x[..., 0], blur.array, mode="mirror"),
        atol=2e-5,
    )
    cases = benchmark.make_cases(images, [50.0], read_noise=2.0, operator=blur)
    assert methods.at_level(methods.RL_ITERATIONS, 50.0) in methods.ORACLE_COUNTS
    options = methods.MethodOptions(psf="gaussian:2.5")
    built = methods.build_methods(["rl", "rl-oracle", "rl-tv", "gat-bm3d-rl"], options)
    truth = benchmark.Method(lambda y, clean, **kw: clean, oracle=True)  # gets each chunk's truth
    rows = benchmark.run_methods(cases, {"truth": truth, **built}, log=lambda _: None).rows
    by = {(r["method"], r["image"]): r for r in rows}
    for case in cases:
        name = case.image.name
        assert abs(by["truth", name]["chi_square"] - 1) < 0.15
        assert by["rl-oracle", name]["psnr"] >= by["rl", name]["psnr"] - 1e-3
        for method in built:
            assert by[method, name]["psnr"] > 10, (method, name)  # no garbage
    skipped = []
    assert methods.build_methods(["rl"], methods.MethodOptions(), log=skipped.append) == {}
    assert "give --psf" in skipped[0]


def test_richardson_lucy_forms_agree_with_scikit_image():
    """The oracle's trace is scikit-image's iteration at each count; RL-TV with weight 0 is RL."""
    from skimage import restoration

    from pdr_jax import baselines
    from pdr_jax.physics import psf

    rng = np.random.default_rng(0)
    image = rng.uniform(0.1, 0.9, (24, 28))
    kernel = psf.moffat(2.0, 3.0)
    trace = baselines.richardson_lucy_trace(image, kernel, (3, 7))
    for n in (3, 7):
        want = restoration.richardson_lucy(image, kernel, num_iter=n, clip=False)
        np.testing.assert_allclose(trace[n], want, rtol=1e-6, atol=1e-9)
    tv0 = baselines.richardson_lucy_tv(image[..., None], kernel, 1.0, 0.0, iterations=7, weight=0.0)
    np.testing.assert_allclose(tv0[..., 0], np.clip(trace[7], 0, 1), atol=1e-6)


def test_the_deconvolution_tuner_scores_every_setting():
    """python -m pdr_jax.evaluation.deconvolution: one finite PSNR per setting of each baseline
    (the oracle's counts, the RL-TV grid, GAT+BM3D then the counts), the settings told apart."""
    from pdr_jax.evaluation import deconvolution
    from pdr_jax.io import read_psf

    blur = read_psf("gaussian:2.5")
    images = [
        i for i in benchmark.load_clean_images(crop=32, per_domain=1) if i.domain == "microscopy"
    ]
    case = benchmark.make_cases(images, [50.0], read_noise=2.0, operator=blur)[0]
    scores = deconvolution.settings_psnr(case, blur.array)
    counts = methods.ORACLE_COUNTS
    assert {f"rl:{n}" for n in counts} | {f"gat-bm3d-rl:{n}" for n in counts} <= set(scores)
    assert {f"rl-tv:{i},{w}" for i, w in deconvolution.TV_GRID} <= set(scores)
    assert all(np.isfinite(v) for v in scores.values())
    assert scores["rl:1"] != scores["rl:200"]
