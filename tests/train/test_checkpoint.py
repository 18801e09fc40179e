"""A workdir's checkpoints (pdr_jax.train.checkpoint): init_from, the data position, the
checksum manifests. The runs that save, damage and resume checkpoints are in test_loop.py."""

import json
import os

import chex
import pytest
from tiny_models import fresh_state

from pdr_jax.configs import base
from pdr_jax.train import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_init_from_an_edm_pickle_and_a_mismatch():
    """The EDM fixture (DDPM++ gray 64 px, 6-D labels): its weights become the run's start."""
    from pdr_jax.convert.edm_pickle import load_edm_pickle

    pickle = os.path.join(ROOT, "tests", "fixtures", "edm", "ddpmpp_cond6_gray64.pkl")
    config = base.get_config("tiny")
    config.model.update(
        img_resolution=64, model_channels=32, channel_mult=(1, 2, 2), attn_resolutions=(16,)
    )
    state, kimg = checkpoint.init_from(*fresh_state(config), pickle)
    _, variables = load_edm_pickle(pickle)
    assert kimg == 0.0
    chex.assert_trees_all_equal(state.params, variables["params"])
    with pytest.raises(
        ValueError,
        match=r"init_from=.*ddpmpp_cond6_gray64.pkl \(against config.model\): variables do not fit",
    ):
        checkpoint.init_from(*fresh_state(base.get_config("tiny")), pickle)


def test_a_data_position_of_an_older_kind_is_dropped():
    meta = checkpoint.stage_meta(1, step=4, nimg=32.0)
    logged = []
    assert checkpoint.current_data_position(meta, {"i": 3}, 4, logged.append) == (meta, {"i": 3})
    older = {k: v for k, v in meta.items() if k != "data_position"}
    assert checkpoint.current_data_position(older, {"i": 3}, 4, logged.append) == (meta, None)
    assert logged == [
        "checkpoint 4 stores an older kind of data position; this stage's data restarts from "
        "its beginning (weights, step and kimg are kept)"
    ]


def test_manifests_find_a_damaged_step_and_move_it_aside(tmp_path):
    """A step whose file differs from its manifest is moved aside; when every step is damaged
    nothing is moved and CheckpointsUnusable says so."""
    for step in (1, 2):
        os.makedirs(tmp_path / str(step) / "meta")
        os.makedirs(tmp_path / str(step) / "data")
        for item in ("meta", "data"):
            (tmp_path / str(step) / item / "metadata").write_text(json.dumps({"step": step}))
    checkpoint.write_manifests(str(tmp_path))
    assert all((tmp_path / s / checkpoint.MANIFEST).exists() for s in ("1", "2"))
    (tmp_path / "2" / "data" / "metadata").write_text(json.dumps({"step": 3}))
    logged = []
    checkpoint.check_checkpoints(str(tmp_path), logged.append)
    assert sorted(os.listdir(tmp_path)) == ["1", "2.corrupt"]
    assert logged[0].startswith("checkpoint step 2: data/metadata differs from its checksum")
    (tmp_path / "1" / "meta" / "metadata").write_text("{")
    with pytest.raises(checkpoint.CheckpointsUnusable, match="none of the checkpoints"):
        checkpoint.check_checkpoints(str(tmp_path), logged.append)
    assert sorted(os.listdir(tmp_path)) == ["1", "2.corrupt"]
