"""tools/sample.py on a tiny network saved as a model directory and as a training checkpoint."""

import importlib.util
import json

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from PIL import Image
from tiny_models import save_tiny_prior, tiny_prior_kwargs

sample_tool = importlib.import_module("pdr_jax.cli.sample")

TINY = tiny_prior_kwargs(img_resolution=8, channel_mult=(1,), attn_resolutions=())


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model")
    net, variables = save_tiny_prior(directory, **TINY)
    return net, variables, directory


def test_help():
    with pytest.raises(SystemExit) as exit_info:
        sample_tool.main(["--help"])
    assert exit_info.value.code == 0


def test_solver_flag_and_its_deprecated_spelling():
    """--solver takes the names of pdr_jax.settings.SOLVERS, as pdr-restore does; --sampler (the
    old flag) still works and warns."""
    assert sample_tool.parse_args(["m", "o", "--solver", "dpmpp2m"]).solver == "dpmpp2m"
    assert sample_tool.parse_args(["m", "o"]).solver == "heun"
    with pytest.warns(FutureWarning, match="--sampler is deprecated"):
        assert sample_tool.parse_args(["m", "o", "--sampler", "euler"]).solver == "euler"
    with pytest.raises(SystemExit):
        sample_tool.parse_args(["m", "o", "--solver", "rk4"])


def test_samples_from_a_model_directory(tiny_model, tmp_path, capsys):
    """5 images in batches of 2 (the last padded): a 3x2 grid PNG and the arrays. Image i depends
    only on seed + i: the first two equal a run with --num 2, and the first five those of a run
    whose batch of 8 is sharded over the 8 test devices."""
    _, _, directory = tiny_model
    out = tmp_path / "out"
    common = ["--steps", "2", "--batch", "2", "--domain", "microscopy,astronomy", "--seed", "3"]
    assert sample_tool.main([str(directory), str(out), "--num", "5", *common]) == 0
    captured = capsys.readouterr()
    # tqdm's bar on stderr, a tick per denoiser call: 3 batches x (2 * 2 - 1) Heun calls.
    assert "9/9" in captured.err and "label_dim 6" in captured.out
    with np.load(out / "samples.npz") as arrays:
        images, labels, seeds = arrays["images"], arrays["labels"], arrays["seeds"]
        settings = json.loads(str(arrays["settings"]))
    assert images.shape == (5, 8, 8, 1) and images.dtype == np.float32
    assert np.isfinite(images).all()
    np.testing.assert_array_equal(seeds, [3, 4, 5, 6, 7])
    np.testing.assert_array_equal(labels[:, :3].argmax(1), [1, 2, 1, 2, 1])
    assert settings["steps"] == 2
    grid = Image.open(out / "samples.png")
    assert grid.size == (3 * 8, 2 * 8) and grid.mode == "L"

    again = tmp_path / "again"
    assert sample_tool.main([str(directory), str(again), "--num", "2", *common]) == 0
    np.testing.assert_allclose(np.load(again / "samples.npz")["images"], images[:2], atol=1e-6)

    sharded = tmp_path / "sharded"
    common[3] = "8"  # --batch
    assert sample_tool.main([str(directory), str(sharded), "--num", "8", *common]) == 0
    assert "over 8 devices" in capsys.readouterr().out
    np.testing.assert_allclose(np.load(sharded / "samples.npz")["images"][:5], images, atol=1e-5)


def test_samples_from_a_training_checkpoint(tiny_model, tmp_path, capsys):
    """A training workdir (network.json + checkpoints/<step>/state): the EMA parameters are used."""
    from pdr_jax.train.checkpoint import MANIFEST, load_training_run, write_manifests
    from pdr_jax.train.state import TrainState

    net, variables, _ = tiny_model
    ema = jax.tree_util.tree_map(lambda p: 0.5 * p, variables["params"])
    state = TrainState.create(
        apply_fn=net.apply,
        params=variables["params"],
        tx=optax.adam(1e-3),
        ema_params=ema,
        buffers={},
        nimg=np.float32(0),
    )
    workdir = tmp_path / "run"
    workdir.mkdir()
    network = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
    (workdir / "network.json").write_text(
        json.dumps({"format": "pdr_jax-model", "version": 1, "network": network})
    )
    with ocp.CheckpointManager(workdir / "checkpoints", item_names=("state",)) as manager:
        for step in (4, 8):
            manager.save(
                step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True
            )
        manager.wait_until_finished()
    # Step 8 damaged after its manifest was written: the newest intact step (4) is read, and
    # asking for step 8 by name fails naming the file; the workdir is left as it is.
    write_manifests(str(workdir / "checkpoints"))
    damaged = next(
        p
        for p in sorted((workdir / "checkpoints" / "8").rglob("*"))
        if p.is_file() and p.stat().st_size > 16 and p.name != MANIFEST
    )
    damaged.write_bytes(b"\0" * damaged.stat().st_size)
    loaded_net, loaded, step = load_training_run(workdir)
    assert step == 4 and loaded_net == net
    assert "checkpoint step 8:" in capsys.readouterr().err
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded["params"], state.ema_params)
    with pytest.raises(ValueError, match="differs from its checksum"):
        load_training_run(workdir, step=8)
    with pytest.raises(ValueError, match="no checkpoint step 5"):
        load_training_run(workdir, step=5)
    assert (workdir / "checkpoints" / "8").is_dir()
    out = tmp_path / "out"
    argv = [str(workdir), str(out), "--num", "2", "--steps", "2", "--labels", "1,0,0,0.5,0.1,0"]
    assert sample_tool.main(argv) == 0
    assert np.load(out / "samples.npz")["images"].shape == (2, 8, 8, 1)


def test_label_errors(tiny_model, tmp_path):
    _, _, directory = tiny_model
    bad = ["--labels", "1,2,3"]
    assert sample_tool.main([str(directory), str(tmp_path), *bad]) == 1
    assert sample_tool.main([str(directory), str(tmp_path), "--domain", "radio"]) == 1
