"""Mesh and batch size (pdr_jax.train.batching): the "auto" batch search."""

import jax
import pytest

from pdr_jax import model_io
from pdr_jax.configs import base
from pdr_jax.train import batching, loop
from pdr_jax.train.state import create_train_state, make_optimizer


def test_auto_batch_size_picks_the_largest_that_fits():
    fake = lambda need: type(
        "C",
        (),
        {
            "memory_analysis": lambda self: type(
                "M",
                (),
                dict(
                    argument_size_in_bytes=need,
                    output_size_in_bytes=0,
                    alias_size_in_bytes=0,
                    temp_size_in_bytes=0,
                ),
            )()
        },
    )()
    best, report = batching.auto_batch_size(
        lambda b: fake(100 * b), [1, 2, 4, 8, 16], budget_bytes=450
    )
    assert best == 4 and report == {1: 100, 2: 200, 4: 400, 8: 800}
    with pytest.raises(ValueError, match="batch 1 needs 100 bytes"):
        batching.auto_batch_size(lambda b: fake(100 * b), [1, 2], budget_bytes=50)


def test_auto_batch_size_with_compiled_memory_analysis():
    """A real compiled train step: its memory analysis grows with the batch; the chosen batch
    fits. The tiny prior cut to one resolution level without attention: the search compiles a
    train step per candidate batch (1, 2, 4), and this network compiles in about half the time."""
    config = base.get_config("tiny")
    config.model.update(channel_mult=(1,), attn_resolutions=())
    config.train.update(num_devices=1, memory_budget_gb=1.0, auto_batch_max=4)
    net, _ = model_io.build_network_from_config(config.model)
    mesh = batching.make_mesh(1)
    rep, shard = (
        jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
        jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")),
    )
    state = jax.eval_shape(
        lambda: create_train_state(net, jax.random.key(0), make_optimizer(1e-3), resolution=16)
    )
    stage = loop.Stage(0, 16, 1.0, "auto", 1e-3, False)
    logged = []
    assert batching.stage_batch_size(stage, state, net, config, rep, shard, logged.append) == 4
    assert "auto batch size 4" in logged[0]
