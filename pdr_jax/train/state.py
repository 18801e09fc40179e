"""Training state: flax's TrainState plus EMA parameters, non-trainable buffers and images seen."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from pdr_jax.precond import init_variables


class TrainState(train_state.TrainState):
    """params/opt_state/step from flax; ema_params averaged as EDM does; buffers never trained."""

    ema_params: Any
    buffers: Any  # non-"params" collections, e.g. NCSN++'s Fourier freqs (may be empty)
    nimg: jax.Array  # images seen so far, float32 scalar (drives lr warm-up and EMA ramp-up)

    def variables(self, ema: bool = False) -> dict:
        return {"params": self.ema_params if ema else self.params, **self.buffers}


def make_optimizer(learning_rate, *, betas=(0.9, 0.999), eps=1e-8, grad_clip=None):
    """Adam (EDM's betas/eps) after global-norm clipping.

    The learning rate is always a schedule (a float becomes a constant one), so the optimizer
    state has the same structure whatever the stage's schedule: states carry over between stages.
    """
    if not callable(learning_rate):
        learning_rate = optax.constant_schedule(learning_rate)
    adam = optax.adam(learning_rate, b1=betas[0], b2=betas[1], eps=eps)
    if not grad_clip:
        return adam
    return optax.chain(optax.clip_by_global_norm(grad_clip), adam)


def warmup_schedule(
    lr: float, rampup_kimg: float, *, start_step: int, start_nimg: float, batch: int
):
    """EDM's lr * min(nimg / (rampup_kimg * 1000), 1), as an optax schedule of the update count.

    A stage has a constant batch, so nimg = start_nimg + (count - start_step) * batch there.
    """
    ramp = optax.linear_schedule(0.0, lr, transition_steps=max(int(rampup_kimg * 1000), 1))

    def schedule(count):
        nimg = start_nimg + (count - start_step) * batch
        return ramp(nimg)

    return schedule


def ema_step_size(nimg, batch: int, halflife_kimg: float, rampup_ratio: float | None):
    """1 - beta with EDM's beta = 0.5 ** (batch / halflife_nimg) and its ramp-up of the half-life."""
    halflife_nimg = jnp.asarray(halflife_kimg * 1000, jnp.float32)
    if rampup_ratio:
        halflife_nimg = jnp.minimum(halflife_nimg, nimg * rampup_ratio)
    beta = 0.5 ** (batch / jnp.maximum(halflife_nimg, 1e-8))
    return 1 - beta


def create_train_state(net, key, tx, *, resolution: int) -> TrainState:
    """Fresh state: parameters from the network's init, EMA equal to them."""
    variables = flax.core.unfreeze(init_variables(net, key, resolution=resolution))
    params = variables.pop("params")
    return TrainState.create(
        apply_fn=net.apply,
        params=params,
        tx=tx,
        ema_params=params,
        buffers=variables,
        nimg=jnp.zeros((), jnp.float32),
    )
