"""make_dataset: batch layout, mixing fractions, determinism and resume, multi-process slicing,
held-out validation, paired simulation, bad files, throughput. Tiny crops keep it fast."""

import json

import numpy as np
import pytest
import tifffile

from pdr_jax.data import pipeline, sources
from pdr_jax.physics.conditioning import DEFAULT_SPEC


def _cfg(**overrides):
    cfg = pipeline.default_config()
    cfg.read_threads = 0  # in-process and single-threaded: the tests share two cores
    cfg.update(overrides)
    return cfg


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_default_config_has_every_field_and_embedded_summary():
    cfg = pipeline.default_config()
    assert cfg.sources == [] and cfg.val_fraction == 0.25 and cfg.worker_count == 0
    assert set(cfg.domain_weights) == set(DEFAULT_SPEC.domains) == set(cfg.ranges)
    frames, summary = pipeline.build_frames(cfg)
    assert {d: len(f) for d, f in frames.items()} == {
        "photography": 10,
        "microscopy": 3,  # the IHC channels
        "astronomy": 1,
    }
    names = {p for s in sources.EMBEDDED_SOURCES for p in s["paths"]}
    assert {n.removeprefix("skimage://") for n in names} == {
        "astronaut",
        "camera",
        "chelsea",
        "coffee",
        "rocket",
        "motorcycle_left",
        "coins",
        "brick",
        "grass",
        "gravel",
        "immunohistochemistry",
        "hubble_deep_field",
    }
    assert summary.num_skipped == 0


def test_train_batch_layout_and_values():
    cfg = _cfg()
    cfg.lock()  # make_dataset must not write to the config
    ds = pipeline.make_dataset(cfg, seed=0, resolution=32, global_batch=6)
    assert ds.num_batches is None and ds.batch_size == 6
    for batch in _take(iter(ds), 4):
        assert sorted(batch) == ["clean", "cond", "domain"]
        assert batch["clean"].shape == (6, 32, 32, 1) and batch["clean"].dtype == np.float32
        assert batch["cond"].shape == (6, 6) and batch["cond"].dtype == np.float32
        assert batch["domain"].shape == (6,) and batch["domain"].dtype == np.int32
        assert batch["clean"].min() >= 0 and batch["clean"].max() <= 1
        kept = batch["cond"].any(axis=1)  # label dropout zeroes whole vectors
        np.testing.assert_array_equal(batch["cond"][kept, :3].argmax(1), batch["domain"][kept])


def test_conditioning_ranges_and_label_dropout():
    cfg = _cfg(label_dropout=0.25)
    ds = pipeline.make_dataset(cfg, seed=1, resolution=16, global_batch=32, paired=True)
    batches = _take(iter(ds), 10)
    s = np.concatenate([b["s"] for b in batches])
    r = np.concatenate([b["r"] for b in batches])
    domain = np.concatenate([b["domain"] for b in batches])
    dropped = np.concatenate([~b["cond"].any(axis=1) for b in batches])
    for i, name in enumerate(DEFAULT_SPEC.domains):
        lo, hi = cfg.ranges[name].s
        assert lo <= s[domain == i].min() and s[domain == i].max() <= hi
        lo, hi = cfg.ranges[name].r
        assert lo <= r[domain == i].min() and r[domain == i].max() <= hi
    # 320 draws of p = 0.25: within 4 binomial sigmas.
    assert abs(dropped.mean() - 0.25) < 4 * np.sqrt(0.25 * 0.75 / dropped.size)


def test_domain_fractions_match_weights():
    """Fractions over 2400 examples within 4 binomial sigmas of the weights (the mix is exact
    per shuffle window, so this is a loose bound)."""
    weights = {"photography": 0.6, "microscopy": 0.3, "astronomy": 0.1}
    cfg = _cfg(domain_weights=weights, augment=False)
    ds = pipeline.make_dataset(cfg, seed=3, resolution=8, global_batch=24)
    domain = np.concatenate([b["domain"] for b in _take(iter(ds), 100)])
    n = domain.size
    for i, name in enumerate(DEFAULT_SPEC.domains):
        p = weights[name]
        assert abs(np.mean(domain == i) - p) < 4 * np.sqrt(p * (1 - p) / n), name
    # Batches are not all alike: the window shuffle mixes the domain order.
    assert len({tuple(b) for b in domain.reshape(-1, 24)}) > 50


def test_zero_weight_leaves_a_domain_out():
    cfg = _cfg(domain_weights={"photography": 1.0, "microscopy": 0.0, "astronomy": 1.0})
    ds = pipeline.make_dataset(cfg, seed=0, resolution=8, global_batch=16)
    assert set(np.concatenate([b["domain"] for b in _take(iter(ds), 5)])) == {0, 2}


def test_same_seed_same_batches_and_resume_from_state():
    cfg = _cfg()
    make = lambda seed: pipeline.make_dataset(cfg, seed=seed, resolution=16, global_batch=4)
    first = iter(make(7))
    head = _take(first, 3)
    state = json.loads(json.dumps(first.get_state()))  # as a checkpoint stores it
    tail = _take(first, 3)

    _assert_batches_equal(_take(iter(make(7)), 6), head + tail)
    resumed = iter(make(7))
    resumed.set_state(state)
    _assert_batches_equal(_take(resumed, 3), tail)
    other = _take(iter(make(8)), 1)[0]
    assert not np.array_equal(other["clean"], head[0]["clean"])


def test_iterator_state_in_an_orbax_checkpoint(tmp_path):
    """As the training loop stores it: one JSON item (JsonSave), restored into a fresh iterator."""
    import orbax.checkpoint as ocp

    cfg = _cfg()
    make = lambda: iter(pipeline.make_dataset(cfg, seed=2, resolution=16, global_batch=4))
    iterator = make()
    _take(iterator, 2)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as manager:
        manager.save(1, args=ocp.args.Composite(data=ocp.args.JsonSave(iterator.get_state())))
        manager.wait_until_finished()
        expected = _take(iterator, 2)
        restored = make()
        restored.set_state(
            manager.restore(1, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]
        )
    _assert_batches_equal(_take(restored, 2), expected)


def test_processes_split_each_global_batch():
    """Process p's k-th batch is the p-th block of global_batch / P rows of the single-process
    k-th batch: disjoint shares that, concatenated in process order, are the same global batch."""
    cfg = _cfg()
    make = lambda index, count: iter(
        pipeline.make_dataset(
            cfg,
            seed=5,
            resolution=16,
            global_batch=6,
            process_index=index,
            process_count=count,
            paired=True,
        )
    )
    whole = _take(make(0, 1), 2)
    shares = [_take(make(p, 3), 2) for p in range(3)]
    for k in range(2):
        for p in range(3):
            assert shares[p][k]["clean"].shape[0] == 2
            for key in whole[k]:
                np.testing.assert_array_equal(
                    shares[p][k][key], whole[k][key][2 * p : 2 * p + 2], err_msg=key
                )
    with pytest.raises(ValueError, match="divisible"):
        pipeline.make_dataset(cfg, seed=0, resolution=16, global_batch=5, process_count=2)


def test_training_never_sees_the_held_out_columns(tmp_path):
    image = np.zeros((64, 64), np.float32)
    image[:, 48:] = 1.0  # the right-most 25%: validation only
    np.save(tmp_path / "marked.npy", image)
    cfg = _cfg(
        sources=[{"domain": "microscopy", "paths": [str(tmp_path / "marked.npy")]}],
        label_dropout=0.0,
    )
    train = pipeline.make_dataset(cfg, seed=0, resolution=16, global_batch=16)
    assert max(b["clean"].max() for b in _take(iter(train), 20)) == 0.0
    val = pipeline.make_dataset(cfg, seed=0, resolution=16, global_batch=16, split="val")
    batches = list(val)
    assert len(batches) == val.num_batches == 1
    assert batches[0]["valid"].sum() == 4  # a 4 x 1 grid in the 64 x 16 strip, 12 padding
    assert batches[0]["clean"][batches[0]["valid"]].min() == 1.0


def test_val_is_fixed_finite_and_covers_every_domain():
    cfg = _cfg()
    make = lambda seed: list(
        pipeline.make_dataset(cfg, seed=seed, resolution=64, global_batch=8, split="val")
    )
    first, again = make(0), make(123)  # the training seed does not change the val set
    _assert_batches_equal(first, again)
    valid = np.concatenate([b["valid"] for b in first])
    domains = np.concatenate([b["domain"] for b in first])[valid]
    assert set(domains) == {0, 1, 2}
    assert all(b["cond"].any(axis=1).all() for b in first)  # no label dropout in val
    assert (~valid).sum() < 8  # padding only fills the last batch


def test_paired_noise_statistics(tmp_path):
    np.save(tmp_path / "flat.npy", np.full((32, 32), 0.5, np.float32))
    cfg = _cfg(
        sources=[
            {
                "domain": "microscopy",
                "paths": [str(tmp_path / "flat.npy")],
                "conditioning": {"s": 100.0, "r": 2.0, "b": 3.0},
                "split": "train",
            }
        ],
        label_dropout=0.0,
    )
    batch = next(
        iter(pipeline.make_dataset(cfg, seed=0, resolution=16, global_batch=8, paired=True))
    )
    assert batch["noisy"].shape == (8, 16, 16, 1) and batch["noisy"].dtype == np.float32
    np.testing.assert_array_equal(batch["s"], 100.0)
    mean = 100 * 0.5 + 3.0  # Poisson rate s x + b; variance rate + r^2
    noisy = batch["noisy"].ravel()
    assert abs(noisy.mean() - mean) < 4 * np.sqrt((mean + 4) / noisy.size)
    assert noisy.var() == pytest.approx(mean + 4, rel=0.1)


def test_corrupt_files_are_skipped_and_counted(tmp_path, caplog):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        tifffile.imwrite(folder / f"good{i}.tif", rng.integers(0, 255, (40, 40), dtype=np.uint8))
    data = (folder / "good0.tif").read_bytes()
    (folder / "truncated.tif").write_bytes(data[: len(data) // 2])
    (folder / "text.png").write_text("this is not a png")
    cfg = _cfg(sources=[{"domain": "photography", "paths": [str(folder)]}])
    with caplog.at_level("WARNING"):
        ds = pipeline.make_dataset(cfg, seed=0, resolution=16, global_batch=4)
    assert ds.summary.num_skipped == 2
    skipped = sorted(p.rsplit("/", 1)[-1] for p, _ in ds.summary.skipped)
    assert skipped == ["text.png", "truncated.tif"]
    assert sum("Skipping unreadable file" in r.message for r in caplog.records) == 2
    assert ds.summary.sources[0]["files"] == 2
    assert len(_take(iter(ds), 3)) == 3


def test_throughput_function_and_command(capsys):
    assert pipeline.measure_throughput(_cfg(), resolution=32, global_batch=4, num_batches=5) > 1
    pipeline._main(["--bench", "--resolution", "32", "--num_batches", "5", "--read_threads", "0"])
    assert "batches/s" in capsys.readouterr().out


def test_config_mistakes_are_errors():
    with pytest.raises(ValueError, match="unknown domains"):
        pipeline.make_dataset(
            _cfg(domain_weights={"astronmy": 1.0}), seed=0, resolution=8, global_batch=2
        )
    with pytest.raises(ValueError, match="unknown source fields"):
        pipeline.make_dataset(
            _cfg(sources=[{"domain": "astronomy", "paths": [], "calibraton": {}}]),
            seed=0,
            resolution=8,
            global_batch=2,
        )
