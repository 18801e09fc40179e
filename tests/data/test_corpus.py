"""pdr_jax.data.corpus_build and pdr_jax.data.corpus on a fake package folder: selection,
reserved files, duplicates, corrupt files, licences, splits, rerun, and the sources it gives
the data pipeline."""

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from pdr_jax.data import corpus, corpus_build, pipeline
from pdr_jax.io import readers
from pdr_jax.physics import calibration

_COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: someone
License: GPL-2+

Files: src/photo4.jpg
Copyright: someone else
License: CC0-1.0
"""

_TEXTURES = """{ "subTiles" : [
 { "imageCredits": {"short": "a"}, "imageUrl" : "n9999.png",
   "worldCoords" : [[[54.0, -35.0], [54.5, -35.0], [54.5, -35.5], [54.0, -35.5]]] },
 { "imageCredits": {"short": "b"}, "imageUrl" : "n0001.png",
   "worldCoords" : [[[120.0, -.5], [120.5, -.5], [120.5, .0], [120.0, .0]]] }
]}"""


def _photo(seed: int, shape=(600, 800)) -> np.ndarray:
    """A smooth random RGB picture (uint8)."""
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    x = ndimage.gaussian_filter(rng.uniform(0, 255, (*shape, 3)), (8, 8, 0))
    x = (x - x.min()) / (x.max() - x.min()) * 255
    return x.astype(np.uint8)


def _sky(seed: int, size: int = 256) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((size, size))
    x[rng.integers(0, size, 60), rng.integers(0, size, 60)] = rng.uniform(50, 255, 60)
    from scipy import ndimage

    return np.clip(ndimage.gaussian_filter(x, 1.5) * 8 + np.linspace(0, 40, size), 0, 255).astype(
        np.uint8
    )


def _fake_packages(base: pathlib.Path) -> None:
    photos = base / "photos" / "usr/share/backgrounds"
    photos.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(_photo(i)).save(photos / f"photo{i}.jpg", quality=95)
    (photos / "zcopy_of_photo0.jpg").write_bytes((photos / "photo0.jpg").read_bytes())  # exact
    Image.fromarray(_photo(0)).resize((700, 525)).save(photos / "zsmaller_photo0.jpg")  # near
    (photos / "broken.jpg").write_bytes((photos / "photo2.jpg").read_bytes()[:3000])  # corrupt
    Image.fromarray(_photo(9)).save(photos / "moon_texture.jpg")  # reserved by name
    doc = base / "photos/usr/share/doc/photos"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(_COPYRIGHT)
    sky = base / "sky/usr/share/stellarium/nebulae/default"
    sky.mkdir(parents=True)
    for name, seed in (("m13", 1), ("n9999", 2), ("n0001", 3), ("n0002", 4), ("n0003", 5)):
        Image.fromarray(_sky(seed)).save(sky / f"{name}.png")
    Image.fromarray((_sky(6) // 64 * 64).astype(np.uint8)).save(sky / "posterised.png")
    (sky / "textures.json").write_text(_TEXTURES)


PACKAGES = {
    "photos": (corpus_build.Selection("photography", "usr/share/backgrounds/*.jpg"),),
    "sky": (
        corpus_build.Selection(
            "astronomy", "usr/share/stellarium/nebulae/default/*.png", kind="render"
        ),
    ),
    "missing-package": (corpus_build.Selection("photography", "*.jpg"),),
}
SIMULATED = (("fluorescence", "microscopy", {"train": 4, "val": 2, "test": 2}),)


def _fetch(base):
    def fetch(name, packages_dir):
        if not (base / name).exists():
            raise FileNotFoundError(
                f"package {name}: apt-get download failed: E: Unable to locate package"
            )
        return base / name

    return fetch


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("debs")
    _fake_packages(base)
    root = tmp_path_factory.mktemp("corpus")
    manifest = corpus_build.build(root, packages=PACKAGES, fetch=_fetch(base), simulated=SIMULATED)
    return root, base, manifest


def test_build_selects_processes_and_skips_with_reasons(built):
    root, _, manifest = built
    ids = sorted(r["id"].split("/")[-1] for r in manifest["images"])
    assert ids == [
        "backgrounds_photo0.jpg",
        "backgrounds_photo1.jpg",
        "backgrounds_photo2.jpg",
        "backgrounds_photo3.jpg",
        "backgrounds_photo4.jpg",
        "backgrounds_photo5.jpg",
        "stellarium_nebulae_default_n0001.png",
        "stellarium_nebulae_default_n0002.png",
        "stellarium_nebulae_default_n0003.png",
    ]
    reasons = {
        pathlib.Path(s["path"]).name or s["package"]: s["reason"] for s in manifest["skipped"]
    }
    assert set(reasons) == {
        "zcopy_of_photo0.jpg",
        "zsmaller_photo0.jpg",
        "broken.jpg",
        "moon_texture.jpg",
        "m13.png",
        "n9999.png",
        "posterised.png",
        "missing-package",
    }
    assert "exact duplicate" in reasons["zcopy_of_photo0.jpg"]
    assert "near duplicate" in reasons["zsmaller_photo0.jpg"]
    assert "reserved" in reasons["moon_texture.jpg"] and "reserved" in reasons["m13.png"]
    assert "Fornax" in reasons["n9999.png"]  # by its sky position, not its name
    assert "posterised" in reasons["posterised.png"]
    assert "Unable to locate" in reasons["missing-package"]
    assert corpus_build.reserved_images(manifest) == []
    photo = next(r for r in manifest["images"] if r["id"].endswith("photo4.jpg"))
    # 800x600 JPEG -> colour, 2x anti-aliased downsampling (short side 600 // 384 = 1 -> at least 2)
    assert (photo["height"], photo["width"], photo["processing"]["downsample"]) == (300, 400, 2)
    assert photo["channels"] == 3
    assert photo["licence"] == "CC0-1.0"  # the later, more specific DEP-5 stanza wins
    assert {r["licence"] for r in manifest["images"] if r["package"] == "photos"} == {
        "GPL-2+",
        "CC0-1.0",
    }
    stored = np.load(root / photo["file"])
    assert stored.dtype == np.uint16 and stored.shape == (300, 400, 3)
    source = np.asarray(Image.open(built[1] / "photos/usr/share/backgrounds/photo4.jpg"))
    # each channel's mean survives (the sRGB encoding is kept, / 255)
    np.testing.assert_allclose(
        stored.mean(axis=(0, 1)) / 65535, source.mean(axis=(0, 1)) / 255, atol=2e-3
    )
    sky = next(r for r in manifest["images"] if r["domain"] == "astronomy")
    assert sky["channels"] == 1 and np.load(root / sky["file"]).ndim == 2  # renders stay gray
    assert len(photo["sha256"]) == 64 and photo["pixels"] == 300 * 400


def test_splits_are_by_whole_image_and_reproducible(built, tmp_path):
    _, base, manifest = built
    by_domain = {}
    for r in manifest["images"]:
        by_domain.setdefault(r["domain"], []).append(r["split"])
    assert sorted(by_domain["photography"]) == ["test", "train", "train", "train", "train", "val"]
    assert sorted(by_domain["astronomy"]) == ["test", "train", "val"]
    again = corpus_build.build(tmp_path, packages=PACKAGES, fetch=_fetch(base), simulated=SIMULATED)
    assert {r["id"]: r["split"] for r in again["images"]} == {
        r["id"]: r["split"] for r in manifest["images"]
    }
    # Dropping an image (a new refusal rule, say) moves no other image across splits.
    records = [dict(r) for r in manifest["images"] if not r["id"].endswith("photo3.jpg")]
    corpus_build.assign_splits(records, seed=0)
    assert all(
        r["split"] == {m["id"]: m["split"] for m in manifest["images"]}[r["id"]] for r in records
    )
    sims = {(s["simulator"], s["split"]): tuple(s["indices"]) for s in manifest["simulators"]}
    ranges = [range(*v) for v in sims.values()]
    assert all(not set(a) & set(b) for i, a in enumerate(ranges) for b in ranges[i + 1 :])
    summary = manifest["summary"]
    assert summary["photography"]["train"]["images"] == 4
    assert summary["microscopy"]["train"]["simulated_fluorescence"] == 4
    assert summary["skipped"] == 8
    assert "| photography | train | 4 | 0 |" in corpus.summary_markdown(manifest)


def test_rerun_skips_finished_images(built):
    root, base, manifest = built
    files = {r["file"]: (root / r["file"]).stat().st_mtime_ns for r in manifest["images"]}
    again = corpus_build.build(root, packages=PACKAGES, fetch=_fetch(base), simulated=SIMULATED)
    assert {r["file"]: (root / r["file"]).stat().st_mtime_ns for r in again["images"]} == files
    assert json.loads((root / "manifest.json").read_text())["images"] == again["images"]


def test_pipeline_sources_from_the_corpus(built):
    root, _, manifest = built
    cfg = pipeline.default_config()
    cfg.sources = [{"corpus": str(root), "embedded": False}]
    frames, summary = pipeline.build_frames(cfg)
    names = {s["name"]: s["frames"] for s in summary.sources}
    assert names == {
        "corpus-photography-train": 4,
        "corpus-astronomy-train": 1,
        "corpus-fluorescence-train": 4,
        "corpus-photography-val": 1,
        "corpus-astronomy-val": 1,
        "corpus-fluorescence-val": 2,
    }
    test_files = {str(root / r["file"]) for r in manifest["images"] if r["split"] == "test"}
    assert not test_files & {f.path for fs in frames.values() for f in fs}  # test never trains
    batch = next(iter(pipeline.make_dataset(cfg, seed=0, resolution=32, global_batch=6)))
    assert (
        batch["clean"].shape == (6, 32, 32, 1)
        and 0 <= batch["clean"].min() <= batch["clean"].max() <= 1
    )
    assert set(batch["domain"].tolist()) <= {0, 1, 2}
    short = pipeline.default_config()
    short.sources = [f"corpus:{root}"]
    assert len(pipeline.expand_sources(short.sources)) == len(
        pipeline.expand_sources([{"corpus": str(root)}])
    )
    with pytest.raises(ValueError, match="must be 'corpus' or 'corpus:ROOT'"):
        pipeline.expand_sources(["photos"])
    with pytest.raises(ValueError, match="unknown corpus splits"):
        corpus.source_entries(root, ["training"])


def test_colour_pipeline_from_the_corpus(built):
    """configs/rgb.py's data: the corpus photographs in R, G, B, the gray ones repeated, the
    crops as stored without gamma and decoded to linear at gamma 1; simulators refused."""
    from pdr_jax.configs import rgb

    root, _, _manifest = built
    cfg = rgb.get_config("tiny").data
    cfg.sources = [{"corpus": str(root), "domains": ["photography"]}]  # + embedded photographs
    frames, _ = pipeline.build_frames(cfg)
    assert set(frames) == {"photography"}
    photo = next(f for f in frames["photography"] if f.path.endswith("photo4.jpg.npy"))
    stored = np.load(photo.path) / 65535
    np.testing.assert_allclose(photo.read(slice(0, 8), slice(0, 8)), stored[:8, :8], atol=1e-6)
    camera = next(f for f in frames["photography"] if f.path.endswith("camera"))
    patch = camera.read(slice(0, 8), slice(0, 8))
    assert patch.shape == (8, 8, 3) and np.array_equal(patch[..., 0], patch[..., 2])
    for gamma, decode in ((None, lambda v: v), ((1.0, 1.0), calibration.srgb_to_linear)):
        cfg.gamma = {} if gamma is None else {"photography": gamma}
        cfg.augment = False
        cfg.sources = [{"corpus": str(root), "domains": ["photography"], "embedded": False}]
        batch = next(iter(pipeline.make_dataset(cfg, seed=3, resolution=16, global_batch=4)))
        assert batch["clean"].shape == (4, 16, 16, 3)
        cfg.gamma = {}
        plain = next(iter(pipeline.make_dataset(cfg, seed=3, resolution=16, global_batch=4)))
        np.testing.assert_allclose(batch["clean"], decode(plain["clean"]), atol=1e-6)
    cfg.sources = [{"corpus": str(root)}]
    cfg.domain_weights.update(microscopy=1.0)
    with pytest.raises(ValueError, match="simulators render gray"):
        pipeline.build_frames(cfg)


def test_random_gamma_draws_log_uniformly_and_refuses_bad_ranges():
    """RandomGamma: x = linear(v) ** (1 / gamma), ln(gamma) uniform on [ln lo, ln hi]; other
    domains untouched."""
    from pdr_jax.data import transforms

    v = np.full((2, 2, 3), 0.5, np.float32)
    lin = float(calibration.srgb_to_linear(np.float32(0.5)))
    gamma = transforms.RandomGamma({0: (1.0, 2.4)})
    out = [
        gamma.random_map({"clean": v, "domain": 0}, np.random.default_rng(i)) for i in range(400)
    ]
    gammas = np.array([np.log(lin) / np.log(o["clean"][0, 0, 0]) for o in out])
    assert gammas.min() >= 1.0 - 1e-4 and gammas.max() <= 2.4 + 1e-4
    # log-uniform: mean of ln(gamma) = ln(2.4) / 2 = 0.438, std ln(2.4) / sqrt(12) = 0.253;
    # 400 draws: s.e. 0.013, bound 0.05 (~4 s.e.)
    assert abs(np.log(gammas).mean() - np.log(2.4) / 2) < 0.05
    assert gamma.random_map({"clean": v, "domain": 1}, np.random.default_rng(0))["clean"] is v
    with pytest.raises(ValueError, match="0 < lo <= hi"):
        transforms.RandomGamma({0: (2.0, 1.0)})


def test_missing_corpus_and_bad_manifest_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_corpus.py"):
        corpus.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: not valid JSON"):
        corpus.load(tmp_path)


def test_reserved_names_and_positions():
    assert corpus_build.reserved_reason("nebulae/default/m13.png")
    assert corpus_build.reserved_reason("x/NGC1316_fornax_A.fits")
    assert corpus_build.reserved_reason("textures/moon_4k.jpg")
    assert corpus_build.reserved_reason("n1365.png", (53.40, -36.14))  # a Fornax cluster galaxy
    assert corpus_build.reserved_reason("n6205.png") and corpus_build.reserved_reason("m13b.png")
    assert corpus_build.reserved_reason("m1.png", (83.6, 22.0)) is None  # the Crab: fine
    assert corpus_build.reserved_reason("m3.png", (205.5, 28.4)) is None
    assert corpus_build.reserved_reason("x.png", (250.4, 36.5))  # M13 by position
    doctored = {"images": [{"id": "p/m13", "path": "nebulae/m13.png", "sky_centre": None}]}
    assert corpus_build.reserved_images(doctored) == ["p/m13"]


def test_noise_level_and_frame_processing(tmp_path):
    from astropy.io import fits

    rng = np.random.default_rng(0)
    assert abs(corpus_build.noise_level(rng.standard_normal((256, 256))) - 1) < 0.05
    # A photon-count image (X-ray: mostly zeros, single counts) is noise, not a clean image.
    counts = rng.poisson(0.05, (256, 256)).astype(np.float64)
    assert corpus_build.noise_level(counts / counts.max()) > 0.1
    y, x = np.mgrid[0:512, 0:512]
    clean = 1000 + 5e4 * np.exp(-((y - 256) ** 2 + (x - 256) ** 2) / (2 * 60.0**2))
    noisy = clean + rng.standard_normal(clean.shape) * 40  # noise 40 / 5e4 ~ 8e-4 of full scale
    fits.PrimaryHDU(noisy.astype(np.float32)).writeto(tmp_path / "frame.fits")
    image, info = corpus_build.process(tmp_path / "frame.fits", "frame")
    assert info["downsample"] == 1 and info["noise"] < corpus_build.MAX_FRAME_NOISE
    assert image.shape == (512, 512) and image.min() >= 0 and image.max() <= 1
    fits.PrimaryHDU((clean + rng.standard_normal(clean.shape) * 2000).astype(np.float32)).writeto(
        tmp_path / "noisy.fits"
    )
    with pytest.raises(readers.UnreadableImageError, match="noise"):
        corpus_build.process(tmp_path / "noisy.fits", "frame")


def test_table_names_the_issue_packages_and_refuses_nothing_it_selects():
    assert set(corpus_build.PACKAGES) == {
        "lomiri-wallpapers-16.04",
        "lomiri-wallpapers-20.04",
        "plasma-workspace-wallpapers",
        "mate-backgrounds",
        "stellarium-data",
        "python-drizzle-testdata",
        "eso-midas-testdata",
    }
    for selections in corpus_build.PACKAGES.values():
        for selection in selections:
            for name in selection.names or ():
                assert corpus_build.reserved_reason(name + ".jpg") is None, name


def test_prepare_corpus_tool_summary_and_missing_corpus(built, capsys):
    from pdr_jax.cli import prepare_corpus as tool

    root, _, _ = built
    assert tool.main(["--root", str(root), "--summary"]) == 0
    assert "| photography | train | 4 | 0 |" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="run python tools/prepare_corpus.py"):
        tool.main(["--root", str(root / "nowhere"), "--summary"])


def test_corpus_config_presets(built):
    """configs/corpus.py names the corpus as its data; its presets build; the data it names
    expands against a built corpus."""
    from pdr_jax.configs import corpus as corpus_config

    for preset in (None, "cpu", "sweep", "tiny"):
        config = corpus_config.get_config(preset)
        assert list(config.data.sources) == [{"corpus": ""}]
        assert (config.train.P_mean, config.train.P_std) == (-1.4, 1.4)
    assert corpus_config.get_config("cpu").model.model_channels == 32
    finish = corpus_config.get_config("cpu-finish")
    assert (finish.train.P_mean, finish.train.P_std) == (-1.8, 1.5)
    assert finish.data.domain_weights.photography == 2 * finish.data.domain_weights.astronomy
    assert not finish.data.gamma  # the gray prior's photographs as stored, until cpu-finish4
    linear = corpus_config.get_config("cpu-finish4")
    assert dict(linear.data.gamma) == {"photography": (1.0, 2.4)}
    assert [s["resolution"] for s in linear.stages] == [64, 128]
    from pdr_jax.configs import rgb

    colour = rgb.get_config("cpu-finish")  # the shipped colour prior's last run
    assert colour.model.img_channels == 3 and dict(colour.data.gamma) == {"photography": (1.0, 2.4)}
    assert (colour.train.P_mean, colour.optim.lr) == (-2.2, 1e-4)
    with pytest.raises(ValueError, match="expected 'cpu', 'cpu-finish' or 'tiny'"):
        rgb.get_config("gpu")
    with pytest.raises(ValueError, match="unknown preset"):
        corpus_config.get_config("gpu")
    root, _, _ = built
    config = corpus_config.get_config("tiny")
    config.data.sources = [{"corpus": str(root)}]
    frames, _ = pipeline.build_frames(config.data)
    assert set(frames) == {"photography", "microscopy", "astronomy"}  # + the embedded set


def test_a_large_colour_photograph_is_downsampled_by_its_short_side(tmp_path):
    """process("photo"): the factor is short side // 384 clipped to [2, 4] (1200 px: 3), of the
    picture's height and width, not of its channel count; colour kept."""
    Image.fromarray(_photo(3, shape=(1200, 1500))).save(tmp_path / "big.png")
    x, info = corpus_build.process(tmp_path / "big.png", "photo")
    assert info["downsample"] == 3 and x.shape == (400, 500, 3)
