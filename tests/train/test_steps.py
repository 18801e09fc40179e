"""The objectives' steps (pdr_jax.train.steps): the loss choice, bf16 and remat steps, the
registry shared with pdr_jax.model_io."""

import jax
import numpy as np
import pytest
from tiny_models import fixed_batch_step

from pdr_jax import model_io
from pdr_jax.configs import base
from pdr_jax.train import steps


def _tiny():
    return base.get_config("tiny")


def test_bf16_and_remat_train_steps():
    """bf16 body / rematerialised blocks: each step runs, its loss is finite and close to
    float32's (one float32 reference step for both: a train step compile is most of the test)."""
    losses = {}
    variants = {"float32": {}, "bfloat16": dict(dtype="bfloat16"), "remat": dict(remat=True)}
    for name, model in variants.items():
        config = _tiny()
        config.model.update(**model)
        _, state, batch, step = fixed_batch_step(config)
        _, metrics = step(state, batch, jax.random.key(1))
        losses[name] = float(metrics["loss"])
    for name, rel in (("bfloat16", 2e-2), ("remat", 1e-5)):
        assert np.isfinite(losses[name]), losses
        assert losses[name] == pytest.approx(losses["float32"], rel=rel), name


def test_an_iddpm_network_is_not_trained():
    config = _tiny()
    config.model.precond = "iddpm"
    net, _ = model_io.build_network_from_config(config.model)
    with pytest.raises(ValueError, match="trains only edm, vp and ve"):
        steps.loss_for(net)


def test_one_registry_of_model_kinds():
    """Every objective trains a model_io kind, and the two names lead to the same record."""
    assert sorted(steps.OBJECTIVES) == sorted(k.objective for k in model_io.KINDS.values())
    for name, objective in steps.OBJECTIVES.items():
        assert steps.objective_of(name) is objective
        assert model_io.kind_of(name) is objective.kind is model_io.kind_of(objective.kind.name)
    with pytest.raises(ValueError, match="config.train.objective must be one of"):
        steps.objective_of("gan")
    with pytest.raises(ValueError, match="unknown model kind or objective 'gan'"):
        model_io.kind_of("gan")
