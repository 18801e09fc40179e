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
    """Per-frame checks only where the simulator guarantees them, the rest on the median over
    the frames: 0.3-1.7 % of single frames broke the former per-frame bounds (fluorescence 99.9th
    pct, astronomy median, peak falloff), failing 2.5-3.3 % of seeds."""
    # fluorescence: dark background (median <= 0.3) with bright objects (peak 0.5-1 + background).
    # (At the corpus's 256 px; crowded frames reach a median of ~0.3.) Over seeds 0-39: median
    # over the frames of their medians <= 0.14, of their 99.9th pct >= 0.59; frames' medians
    # <= 0.26.
    median, top, images = _stats("fluorescence", n=8, size=256)
    assert np.median(median) < 0.25 and (median < 0.4).all() and np.median(top) > 0.35
    assert (images.max(axis=(1, 2)) > 0.45).all()  # the peak is scaled to 0.5-1
    # brightfield: bright transmitted light (median > 0.35) with dark stained nuclei (low 1 %).
    # Over seeds 0-39: medians >= 0.50, low 1 % >= 0.19 below the median.
    median, _, images = _stats("brightfield")
    assert (median > 0.35).all() and (np.quantile(images, 0.01, axis=(1, 2)) < median - 0.1).all()
    # astronomy: mostly sky with bright point sources: 99.9th pct scaled to 0.4-1 (+ sky).
    # Over 3600 frames (seeds 0-299): median over the frames of their medians <= 0.063, frames'
    # medians <= 0.27; 99.9th pct >= 0.41.
    median, top, images = _stats("astronomy")
    assert np.median(median) < 0.15 and (median < 0.4).all() and (top > 0.35).all()
    # Stars are compact: the brightest pixel's neighbourhood falls off within a few pixels.
    # The median over the frames of median(17 x 17 around the peak) / peak: <= 0.091 over
    # seeds 0-299 (single frames up to 0.64 where a galaxy or nebula holds the peak).
    falloff = []
    for image in images:
        y, x = np.unravel_index(np.argmax(image), image.shape)
        ring = image[max(y - 8, 0) : y + 9, max(x - 8, 0) : x + 9]
        falloff.append(np.median(ring) / image[y, x])
    assert np.median(falloff) < 0.25, falloff


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
