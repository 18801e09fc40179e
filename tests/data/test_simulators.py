"""pdr_jax.data.simulators: deterministic per index, in [0, 1], with the documented structure."""

import numpy as np
import pytest

from pdr_jax.data import pipeline, simulators


@pytest.mark.parametrize("name", sorted(simulators.SIMULATORS))
def test_deterministic_per_index_and_in_range(name):
    first = [simulators.SIMULATORS[name](np.random.default_rng([0, i]), 96) for i in range(6)]
    again = [simulators.SIMULATORS[name](np.random.default_rng([0, i]), 96) for i in (3, 1)]
    np.testing.assert_array_equal(again[0], first[3])
    np.testing.assert_array_equal(again[1], first[1])
    for image in first:
        assert image.shape == (96, 96) and image.dtype == np.float32
        assert image.min() >= 0 and image.max() <= 1 and np.isfinite(image).all()
    assert min(np.abs(a - b).mean() for i, a in enumerate(first) for b in first[i + 1 :]) > 1e-3
    # The per-process cache hands out the same image (float16-rounded) as a fresh render.
    np.testing.assert_allclose(simulators.render(name, 0, 3, 96), first[3], atol=5e-4)


def _stats(name, n=12, size=128):
    images = np.stack(
        [simulators.SIMULATORS[name](np.random.default_rng([7, i]), size) for i in range(n)]
    )
    return np.median(images, axis=(1, 2)), np.quantile(images, 0.999, axis=(1, 2)), images


def test_documented_statistics():
    # fluorescence: dark background (median <= 0.3) with bright objects (peak 0.5-1 + background).
    # (At the corpus's 256 px; crowded frames reach a median of ~0.3.)
    median, top, _ = _stats("fluorescence", n=8, size=256)
    assert np.median(median) < 0.25 and (median < 0.4).all() and (top > 0.35).all()
    # brightfield: bright transmitted light (median > 0.35) with dark stained nuclei (low 1 %).
    median, _, images = _stats("brightfield")
    assert (median > 0.35).all() and (np.quantile(images, 0.01, axis=(1, 2)) < median - 0.1).all()
    # astronomy: mostly sky (median < 0.15) with bright point sources: 99.9th pct 0.4-1 + sky.
    median, top, images = _stats("astronomy")
    assert (median < 0.15).all() and (top > 0.35).all()
    # Stars are compact: the brightest pixel's neighbourhood falls off within a few pixels.
    image = images[0]
    y, x = np.unravel_index(np.argmax(image), image.shape)
    ring = image[max(y - 8, 0) : y + 9, max(x - 8, 0) : x + 9]
    assert np.median(ring) < 0.5 * image[y, x]


def test_simulated_source_in_the_pipeline():
    cfg = pipeline.default_config()
    cfg.sources = [
        {
            "domain": "microscopy",
            "simulator": "fluorescence",
            "indices": [0, 6],
            "size": 64,
            "split": "train",
        },
        {
            "domain": "microscopy",
            "simulator": "brightfield",
            "indices": [100, 102],
            "size": 64,
            "split": "val",
        },
    ]
    frames, summary = pipeline.build_frames(cfg)
    assert [s["frames"] for s in summary.sources] == [6, 2]
    assert frames["microscopy"][7].path == "sim://brightfield/0/101"
    batch = next(iter(pipeline.make_dataset(cfg, seed=0, resolution=32, global_batch=4)))
    assert batch["clean"].shape == (4, 32, 32, 1) and (batch["domain"] == 1).all()
    val = pipeline.make_dataset(cfg, seed=0, resolution=32, global_batch=4, split="val")
    assert val.num_batches >= 1
    with pytest.raises(ValueError, match="unknown simulator"):
        cfg.sources = [{"domain": "microscopy", "simulator": "confocal", "indices": [0, 2]}]
        pipeline.build_frames(cfg)
    with pytest.raises(ValueError, match="unknown simulated-source fields"):
        cfg.sources = [{"domain": "microscopy", "simulator": "brightfield", "paths": ["x"]}]
        pipeline.build_frames(cfg)
