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


@pytest.mark.parametrize("overrides", [dict(dtype="bfloat16"), dict(remat=True)])
def test_bf16_and_remat_train_steps(overrides):
    """bf16 body / rematerialised blocks: the step runs, the loss is finite and close to float32's."""
    config = _tiny()
    losses = []
    for model in (dict(), overrides):
        config.model.update(dtype="float32", remat=False)
        config.model.update(**model)
        _, state, batch, step = fixed_batch_step(config)
        _, metrics = step(state, batch, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses[1])
    assert losses[1] == pytest.approx(losses[0], rel=2e-2 if "dtype" in overrides else 1e-5)


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
