"""The tiny networks the tests build: configs/base.py:tiny's network, varied by overrides.

A 16 px DDPM++ prior with the project's 6-D conditioning (8 channels, one block per
resolution, attention at 8 px, no dropout) compiles in seconds and runs every code path of the
full-size priors; tests change only what they exercise (resolution, attention, label_dim, ...).
"""

import jax

from pdr_jax import model_io, precond
from pdr_jax.configs import base
from pdr_jax.model_io import network_kwargs_from_config

TINY_PRIOR = network_kwargs_from_config(base.get_config("tiny").model)


def tiny_prior_kwargs(**overrides) -> dict:
    """build_network arguments of the tiny prior with `overrides`."""
    return {**TINY_PRIOR, **overrides}


def tiny_prior(key=None, **overrides):
    """(net, variables): the tiny prior with `overrides`, initialised from `key` (key 0)."""
    net = precond.build_network(**tiny_prior_kwargs(**overrides))
    key = jax.random.key(0) if key is None else key
    # jit: initialising op by op takes several times longer.
    return net, jax.jit(lambda k: precond.init_variables(net, k))(key)


def save_tiny_prior(directory, *, jitter: float = 0.0, **overrides):
    """(net, variables) of tiny_prior(**overrides), saved as a model directory; jitter > 0 adds
    jitter * N(0, 1) to every parameter (at EDM's init the label path starts at zero)."""
    net, variables = tiny_prior(**overrides)
    if jitter:
        leaves, tree = jax.tree_util.tree_flatten(variables)
        keys = jax.random.split(jax.random.key(1), len(leaves))
        leaves = [leaf + jitter * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)]
        variables = jax.tree_util.tree_unflatten(tree, leaves)
    model_io.save_model(directory, tiny_prior_kwargs(**overrides), variables, overwrite=True)
    return net, variables


def _train_state(net, key, resolution):
    """A fresh train state of `net` (Adam, lr 1e-3), initialised under jit: op by op takes
    about three times longer (tiny prior: 11 s against 4 s on 2 loaded cores)."""
    from pdr_jax.train.state import create_train_state, make_optimizer

    tx = make_optimizer(1e-3)
    return jax.jit(lambda k: create_train_state(net, k, tx, resolution=resolution))(key)


def fresh_state(config):
    """(train state, net) of config.model, freshly initialised (Adam, lr 1e-3)."""
    net, _ = model_io.build_network_from_config(config.model)
    return _train_state(net, jax.random.key(5), net.model.img_resolution), net


def fixed_batch_step(config):
    """(net, fresh train state, a fixed 8 x 16 x 16 batch, the jitted train step) of a prior
    config (the objective's step as the training loop binds it)."""
    import jax.numpy as jnp

    from pdr_jax.train.steps import objective_of

    net, _ = model_io.build_network_from_config(config.model)
    state = _train_state(net, jax.random.key(0), 16)
    batch = {
        "clean": jnp.linspace(0, 1, 8 * 16 * 16).reshape(8, 16, 16, 1),
        "cond": jnp.zeros((8, 6)),
    }
    return net, state, batch, jax.jit(objective_of(config).steps(net, config, 8)[0])
