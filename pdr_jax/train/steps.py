"""The train and eval steps of each objective (the jit boundary), the loss choice and the EMA.

A step is a plain function `train_step(state, batch, base_key, *, settings...) -> (state,
metrics)` or `eval_step(state, batch, *, settings...) -> {"loss_sum", "count"}`; the objective's
`steps(net, config, batch_size)` binds the settings once with functools.partial (the one place
that reads the config), and the loop jits the result. The step key is fold_in(base_key, step),
so a resumed run sees the same draws.

Objectives (`config.train.objective`; an `Objective` record each, OBJECTIVES, keyed by the
model kind's objective name, pdr_jax.model_io.KINDS): "edm" trains the prior, a preconditioned
denoiser D(x; sigma, labels), with the loss of its preconditioner; "ddpm" trains a conditional
restoration model (pdr_jax/conditional.py, configs/conditional.py) on simulated (clean, noisy)
pairs with a discrete-time loss.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from pdr_jax import conditional, cpu, model_io, schedules
from pdr_jax import precond as precond_lib
from pdr_jax.train import loss as losses
from pdr_jax.train import monitor
from pdr_jax.train.state import TrainState, ema_step_size


@dataclasses.dataclass(frozen=True)
class Ema:
    """EDM's EMA of the weights: half-life in thousands of images, ramped up as
    min(halflife, rampup_ratio * images seen) (rampup_ratio None or 0: none)."""

    halflife_kimg: float
    rampup_ratio: float | None


def loss_for(net, *, P_mean: float = -1.2, P_std: float = 1.2):
    """The training loss of the network's preconditioner, as EDM's train.py pairs them:
    EDMPrecond with EDMLoss (ln sigma ~ N(P_mean, P_std^2)), VPPrecond with VPLoss, VEPrecond with
    VELoss, each with the network's own schedule constants. iDDPM models are sampled, not
    trained (EDM has no iDDPM loss): a ValueError says so."""
    if isinstance(net, precond_lib.EDMPrecond):
        return functools.partial(
            losses.edm_loss,
            P_mean=P_mean,
            P_std=P_std,
            sigma_data=net.sigma_data,
        )
    if isinstance(net, precond_lib.VPPrecond):
        return functools.partial(
            losses.vp_loss, beta_d=net.beta_d, beta_min=net.beta_min, epsilon_t=net.epsilon_t
        )
    if isinstance(net, precond_lib.VEPrecond):
        return functools.partial(losses.ve_loss, sigma_min=net.sigma_min, sigma_max=net.sigma_max)
    raise ValueError(
        f"config.model.precond: {type(net).__name__} has no training loss (EDM samples iDDPM models but "
        "trains only edm, vp and ve); use one of those"
    )


def _apply_update(state: TrainState, grads, loss, batch_size: int, ema: Ema):
    """Optimizer step, then the EMA (EDM's half-life in images)."""
    new_state = state.apply_gradients(grads=grads)
    step_size = ema_step_size(state.nimg, batch_size, ema.halflife_kimg, ema.rampup_ratio)
    ema_params = optax.incremental_update(new_state.params, state.ema_params, step_size)
    new_state = new_state.replace(ema_params=ema_params, nimg=state.nimg + batch_size)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


# ----------------------------------------------------------------------------------------------
# "edm": a preconditioned denoiser, continuous sigma.


def edm_train_step(state: TrainState, batch, base_key, *, net, loss_fn, batch_size: int, ema: Ema):
    """(state, metrics) after one step; batch = {"clean", "cond"}; loss_fn(denoise, key, images,
    labels) per image, e.g. loss_for(net, ...)."""
    key_loss, key_dropout = jax.random.split(jax.random.fold_in(base_key, state.step))
    images = 2 * batch["clean"] - 1  # the model sees 2x - 1

    def objective(params):
        variables = {"params": params, **state.buffers}
        denoise = lambda x, sigma, labels: net.apply(
            variables, x, sigma, labels, train=True, rngs={"dropout": key_dropout}
        )
        # Mean over pixels and batch (EDM sums over pixels; Adam only sees the scale via eps/clip).
        return jnp.mean(loss_fn(denoise, key_loss, images, batch["cond"]))

    loss, grads = jax.value_and_grad(objective)(state.params)
    return _apply_update(state, grads, loss, batch_size, ema)


def edm_eval_step(state: TrainState, batch, *, net, val_sigmas):
    """Validation loss of the EMA network at fixed sigmas with fixed noise (comparable across
    steps), summed over the batch's valid rows (the last val batch is padded by repeats)."""
    images = 2 * batch["clean"] - 1
    valid = batch["valid"].astype(jnp.float32)
    noise = jax.random.normal(jax.random.key(1234), images.shape)
    denoise = lambda x, sigma, labels: net.apply(state.variables(ema=True), x, sigma, labels)

    def at_sigma(sigma):
        s = jnp.full((images.shape[0], 1, 1, 1), sigma)
        err = losses.weighted_denoising_error(
            denoise, images, batch["cond"], s, noise, losses.loss_weight(net, s)
        )
        return jnp.sum(jnp.mean(err, axis=(1, 2, 3)) * valid)

    sigmas = jnp.asarray(val_sigmas, jnp.float32)
    return {"loss_sum": jnp.mean(jax.lax.map(at_sigma, sigmas)), "count": jnp.sum(valid)}


def _edm_steps(net, config, batch_size: int):
    loss_fn = loss_for(net, P_mean=config.train.P_mean, P_std=config.train.P_std)
    train_step = functools.partial(
        edm_train_step, net=net, loss_fn=loss_fn, batch_size=batch_size, ema=_ema_of(config)
    )
    eval_step = functools.partial(edm_eval_step, net=net, val_sigmas=config.train.val_sigmas)
    return train_step, eval_step


# ----------------------------------------------------------------------------------------------
# "ddpm": a conditional model, discrete time.


def _ddpm_model_fn(net, variables, batch, **apply_kwargs):
    """model_fn(x_t, t) of the conditional model on the batch's measurement channels."""
    cond_image = conditional.measurement_channels(
        batch["noisy"], batch["s"], batch["r"], batch["b"]
    )
    return lambda x_t, t: net.apply(
        variables, conditional.model_input(x_t, cond_image), t, batch["cond"], **apply_kwargs
    )


def ddpm_train_step(
    state: TrainState, batch, base_key, *, net, distance: str, batch_size: int, ema: Ema
):
    """(state, metrics) after one step of a conditional DDPM-style model; batch = {"clean",
    "cond", "noisy", "s", "r", "b"} (see conditional.measurement_channels); distance: "l2",
    "l1" or "huber" (losses.ddpm_loss)."""
    key_loss, key_dropout = jax.random.split(jax.random.fold_in(base_key, state.step))
    images = 2 * batch["clean"] - 1  # the model sees 2x - 1
    alpha_bar = jnp.asarray(schedules.alpha_bars(net.betas()), jnp.float32)

    def objective(params):
        variables = {"params": params, **state.buffers}
        model_fn = _ddpm_model_fn(net, variables, batch, train=True, rngs={"dropout": key_dropout})
        loss = losses.ddpm_loss(
            model_fn,
            key_loss,
            images,
            alpha_bar=alpha_bar,
            parameterization=net.parameterization,
            distance=distance,
        )
        return jnp.mean(loss)

    loss, grads = jax.value_and_grad(objective)(state.params)
    return _apply_update(state, grads, loss, batch_size, ema)


def ddpm_eval_step(state: TrainState, batch, *, net, val_timesteps, distance: str):
    """Validation loss of the EMA conditional model at fixed timesteps with fixed noise, summed
    over the batch's valid rows (the last val batch is padded by repeats)."""
    alpha_bar = jnp.asarray(schedules.alpha_bars(net.betas()), jnp.float32)
    images = 2 * batch["clean"] - 1
    valid = batch["valid"].astype(jnp.float32)
    noise = jax.random.normal(jax.random.key(1234), images.shape)
    model_fn = _ddpm_model_fn(net, state.variables(ema=True), batch)

    def at_timestep(t):
        t = jnp.full((images.shape[0],), t)
        err = losses.discrete_denoising_error(
            model_fn,
            images,
            t,
            noise,
            alpha_bar,
            parameterization=net.parameterization,
            distance=distance,
        )
        return jnp.sum(jnp.mean(err, axis=(1, 2, 3)) * valid)

    timesteps = jnp.asarray(val_timesteps, jnp.int32)
    return {"loss_sum": jnp.mean(jax.lax.map(at_timestep, timesteps)), "count": jnp.sum(valid)}


def _ddpm_steps(net, config, batch_size: int):
    distance = config.train.loss
    train_step = functools.partial(
        ddpm_train_step, net=net, distance=distance, batch_size=batch_size, ema=_ema_of(config)
    )
    eval_step = functools.partial(
        ddpm_eval_step, net=net, val_timesteps=config.train.val_timesteps, distance=distance
    )
    return train_step, eval_step


def jit_steps(steps, replicated, batch_sharding, cpu_options=None):
    """(train_step, eval_step) = `steps` (an objective's) jitted at the boundary: the state and
    base key replicated, the batch sharded over the mesh's "data" axis, the state donated. On
    CPU one program per pdr_jax.cpu record (convolutions, layers, compiler options):
    cpu_options, None for the current one."""
    train_step, eval_step = steps
    rep, shard = replicated, batch_sharding
    return (
        cpu.jit(
            train_step,
            cpu=cpu_options,
            in_shardings=(rep, shard, rep),
            out_shardings=(rep, rep),
            donate_argnums=0,
        ),
        cpu.jit(eval_step, cpu=cpu_options, in_shardings=(rep, shard), out_shardings=rep),
    )


def validate(eval_step, state, val_batches) -> dict:
    """{"val_loss"}: the mean EMA validation loss over the held-out batches (an eval_step's
    fixed sigmas or timesteps), each valid row counted once."""
    out = jax.device_get([eval_step(state, b) for b in val_batches])
    return {
        "val_loss": float(sum(o["loss_sum"] for o in out) / max(sum(o["count"] for o in out), 1))
    }


def _ema_of(config) -> Ema:
    return Ema(config.train.ema_halflife_kimg, config.train.ema_rampup_ratio)


# ----------------------------------------------------------------------------------------------
# Objectives.


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a training objective decides; everything else in the loop is shared.

    kind: the model_io.ModelKind it trains (its builder, its network.json kind; name ==
    kind.objective). steps(net, config, batch_size): (train_step, eval_step) with the config's
    settings bound. batch_keys: the batch entries a step reads. paired: the data pipeline
    simulates (clean, noisy) pairs. image_channels(net): channels of "clean".
    stage_figure(net, state, config, stage, workdir, val_batch): the end-of-stage PNG.
    """

    kind: model_io.ModelKind
    steps: Callable
    batch_keys: tuple[str, ...]
    paired: bool
    image_channels: Callable
    stage_figure: Callable

    @property
    def name(self) -> str:
        return self.kind.objective


OBJECTIVES = {
    objective.name: objective
    for objective in (
        Objective(
            kind=model_io.KINDS["prior"],
            steps=_edm_steps,
            batch_keys=("clean", "cond"),
            paired=False,
            image_channels=lambda net: net.model.in_channels,
            stage_figure=monitor.stage_samples,
        ),
        Objective(
            kind=model_io.KINDS["conditional"],
            steps=_ddpm_steps,
            batch_keys=("clean", "cond", "noisy", "s", "r", "b"),
            paired=True,
            image_channels=lambda net: net.img_channels,
            stage_figure=monitor.stage_restorations,
        ),
    )
}


def objective_of(config_or_name) -> Objective:
    """The Objective of config.train.objective (or of its name): "edm", the prior, a
    preconditioned denoiser with EDM's loss; "ddpm", the conditional restoration model."""
    name = config_or_name if isinstance(config_or_name, str) else config_or_name.train.objective
    if name not in OBJECTIVES:
        raise ValueError(
            f"config.train.objective must be one of {sorted(OBJECTIVES)}, got {name!r}"
        )
    return OBJECTIVES[name]
