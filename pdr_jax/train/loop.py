"""Training loop: progressive resolution stages, data parallel jit, Orbax checkpoints that resume.

`train(config, workdir)` runs the stages of `config.stages` in order. One network, built for
the final resolution and fully convolutional, carries its parameters across stages; the train
step recompiles once per stage (new shapes). Data parallelism: the global batch is sharded over a
1-D device mesh ("data"), parameters are replicated, the state is donated. Randomness: the step
key is fold_in(base_key, step), so a resumed run sees the same draws; the data iterator's state
is checkpointed with the train state, so it sees the same batches too.

Objectives (`config.train.objective`, default "edm"; an `Objective` record each, OBJECTIVES):
"edm" trains the prior, a preconditioned denoiser D(x; sigma, labels), with the loss of its
preconditioner; "ddpm" trains a conditional restoration model (pdr_jax/conditional.py,
configs/conditional.py) on simulated (clean, noisy) pairs with a discrete-time loss. The record
holds the network builder, the train and eval steps, the batch keys (pairs for "ddpm") and the
end-of-stage figure; everything else is shared.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pdr_jax import conditional, cpu, model_io, schedules
from pdr_jax import precond as precond_lib
from pdr_jax.precond import build_network
from pdr_jax.train import distributed, lock
from pdr_jax.train import loss as losses
from pdr_jax.train.monitor import MetricsLogger, save_loss_plot, save_sample_grid
from pdr_jax.train.state import (
    TrainState,
    create_train_state,
    ema_step_size,
    make_optimizer,
    warmup_schedule,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One resolution stage: its length in kimg, batch (int or "auto"), learning rate."""

    index: int
    resolution: int
    kimg: float
    batch_size: Any
    lr: float
    adaptive: bool


def stages_from_config(config) -> list[Stage]:
    out = []
    for i, s in enumerate(config.stages):
        lr = s.get("lr", None) or config.optim.lr
        out.append(
            Stage(
                i,
                int(s["resolution"]),
                float(s["kimg"]),
                s["batch_size"],
                float(lr),
                bool(s.get("adaptive", False)),
            )
        )
    if not out:
        raise ValueError("config.stages is empty: at least one stage is needed")
    return out


def network_kwargs_from_config(model_cfg, objective: str = "edm") -> dict:
    """The network builder's keyword arguments from config.model: everything but dtype, remat
    and the keys only the other objective's builder takes (configs/base.py declares all)."""
    drop = ("dtype", "remat", *objective_of(objective).foreign_model_keys)
    kwargs = {k: v for k, v in model_cfg.items() if k not in drop}
    return {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in kwargs.items()}


def build_network_from_config(model_cfg, objective: str = "edm"):
    """(net, network_kwargs) of the objective's builder, with the configured compute dtype and
    rematerialisation."""
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[model_cfg.dtype]
    kwargs = network_kwargs_from_config(model_cfg, objective)
    return objective_of(objective).build(**kwargs, dtype=dtype, remat=model_cfg.remat), kwargs


# ----------------------------------------------------------------------------------------------
# Steps (jit boundary).


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


@dataclasses.dataclass(frozen=True)
class Ema:
    """EDM's EMA of the weights: half-life in thousands of images, ramped up as
    min(halflife, rampup_ratio * images seen) (rampup_ratio None or 0: none)."""

    halflife_kimg: float
    rampup_ratio: float | None


def make_train_step(net, loss_fn, *, batch_size: int, ema: Ema):
    """train_step(state, batch, base_key) -> (state, metrics); batch = {"clean", "cond"};
    loss_fn(denoise, key, images, labels) per image, e.g. loss_for(net, ...)."""

    def train_step(state: TrainState, batch, base_key):
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

    return train_step


def make_eval_step(net, val_sigmas):
    """Validation loss of the EMA network at fixed sigmas with fixed noise: comparable across steps."""
    sigmas = jnp.asarray(val_sigmas, jnp.float32)

    def eval_step(state: TrainState, batch):
        """Sums over the batch's valid rows (the last val batch is padded by repeats)."""
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

        return {"loss_sum": jnp.mean(jax.lax.map(at_sigma, sigmas)), "count": jnp.sum(valid)}

    return eval_step


def make_ddpm_train_step(net, *, distance: str, batch_size: int, ema: Ema):
    """train_step(state, batch, base_key) -> (state, metrics) of a conditional DDPM-style model;
    batch = {"clean", "cond", "noisy", "s", "r", "b"} (see conditional.measurement_channels);
    distance: "l2" or "l1" (losses.ddpm_loss)."""
    alpha_bar = jnp.asarray(schedules.alpha_bars(net.betas()), jnp.float32)
    loss_fn = functools.partial(
        losses.ddpm_loss,
        alpha_bar=alpha_bar,
        parameterization=net.parameterization,
        distance=distance,
    )

    def train_step(state: TrainState, batch, base_key):
        key_loss, key_dropout = jax.random.split(jax.random.fold_in(base_key, state.step))
        images = 2 * batch["clean"] - 1  # the model sees 2x - 1
        cond_image = conditional.measurement_channels(
            batch["noisy"], batch["s"], batch["r"], batch["b"]
        )

        def objective(params):
            variables = {"params": params, **state.buffers}
            model_fn = lambda x_t, t: net.apply(
                variables,
                conditional.model_input(x_t, cond_image),
                t,
                batch["cond"],
                train=True,
                rngs={"dropout": key_dropout},
            )
            return jnp.mean(loss_fn(model_fn, key_loss, images))

        loss, grads = jax.value_and_grad(objective)(state.params)
        return _apply_update(state, grads, loss, batch_size, ema)

    return train_step


def make_ddpm_eval_step(net, *, val_timesteps, distance: str):
    """Validation loss of the EMA conditional model at fixed timesteps with fixed noise."""
    alpha_bar = jnp.asarray(schedules.alpha_bars(net.betas()), jnp.float32)
    timesteps = jnp.asarray(val_timesteps, jnp.int32)

    def eval_step(state: TrainState, batch):
        """Sums over the batch's valid rows (the last val batch is padded by repeats)."""
        images = 2 * batch["clean"] - 1
        valid = batch["valid"].astype(jnp.float32)
        noise = jax.random.normal(jax.random.key(1234), images.shape)
        cond_image = conditional.measurement_channels(
            batch["noisy"], batch["s"], batch["r"], batch["b"]
        )
        model_fn = lambda x_t, t: net.apply(
            state.variables(ema=True), conditional.model_input(x_t, cond_image), t, batch["cond"]
        )

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

        return {"loss_sum": jnp.mean(jax.lax.map(at_timestep, timesteps)), "count": jnp.sum(valid)}

    return eval_step


def _apply_update(state: TrainState, grads, loss, batch_size: int, ema: Ema):
    """Optimizer step, then the EMA (EDM's half-life in images)."""
    new_state = state.apply_gradients(grads=grads)
    step_size = ema_step_size(state.nimg, batch_size, ema.halflife_kimg, ema.rampup_ratio)
    ema = optax.incremental_update(new_state.params, state.ema_params, step_size)
    new_state = new_state.replace(ema_params=ema, nimg=state.nimg + batch_size)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a training objective decides; everything else in the loop is shared.

    build: the network builder (network.json "network" arguments, dtype, remat). kind: the
    model_io kind of the exported model. steps(net, config, batch_size): (train_step,
    eval_step), the step factories called with the config's values (the one place that reads
    them). batch_keys: the batch entries a step reads.
    paired: the data pipeline simulates (clean, noisy) pairs. image_channels(net): channels of
    "clean". stage_figure(net, state, config, stage, workdir, val_batch): the end-of-stage PNG.
    foreign_model_keys: config.model keys only the other objective's builder takes.
    """

    name: str
    build: Callable
    kind: str
    steps: Callable
    batch_keys: tuple[str, ...]
    paired: bool
    image_channels: Callable
    stage_figure: Callable
    foreign_model_keys: tuple[str, ...]


def objective_of(config_or_name) -> Objective:
    """The Objective of config.train.objective (or of its name): "edm", the prior, a
    preconditioned denoiser with EDM's loss; "ddpm", the conditional restoration model."""
    name = config_or_name if isinstance(config_or_name, str) else config_or_name.train.objective
    if name not in OBJECTIVES:
        raise ValueError(
            f"config.train.objective must be one of {sorted(OBJECTIVES)}, got {name!r}"
        )
    return OBJECTIVES[name]


# ----------------------------------------------------------------------------------------------
# Devices.


def make_mesh(num_devices: int | None = None) -> Mesh:
    devices = np.asarray(jax.devices()[: num_devices or jax.device_count()])
    return Mesh(devices, ("data",))


def global_batch(local_batch: dict, sharding: NamedSharding, keys=("clean", "cond")) -> dict:
    """Each process's numpy batch -> one global array sharded over the mesh's data axis."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(local_batch[k]))
        for k in keys
    }


def auto_batch_size(compile_step, candidates, *, budget_bytes: float) -> tuple[int, dict]:
    """Largest candidate batch whose compiled train step fits `budget_bytes`.

    compile_step(batch) -> a compiled program (jax.stages.Compiled); its memory_analysis gives
    argument + output - aliased + temporary bytes. Candidates are tried in increasing order and
    the search stops at the first that does not fit (memory grows with the batch).
    """
    report, best = {}, None
    for batch in sorted(candidates):
        mem = compile_step(batch).memory_analysis()
        if mem is None:
            raise RuntimeError(
                "batch_size='auto' needs the backend's memory analysis, which is unavailable"
            )
        need = (
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes
        )
        report[batch] = int(need)
        if need > budget_bytes:
            break
        best = batch
    if best is None:
        smallest = min(candidates)
        raise ValueError(
            f"batch_size='auto': batch {smallest} needs {report[smallest]} bytes, over the budget of "
            f"{budget_bytes:.3g} bytes (config.train.memory_budget_gb)"
        )
    return best, report


# ----------------------------------------------------------------------------------------------
# Checkpoints.


def _val_loss(metrics):
    return metrics["val_loss"]


# Per step, written once the step's save is complete: the sha256 of every file of the step, so
# a damaged file (a halved data file of the best step, say) is found before the step is trusted.
MANIFEST = "pdr_manifest.json"
# The JSON items of a step, each of which must parse (Orbax reads `metrics` when the manager is
# created, before any restore could fall back).
_JSON_ITEMS = ("meta/metadata", "data/metadata")
_OPTIONAL_JSON_ITEMS = ("metrics/metrics",)


class CheckpointsUnusable(RuntimeError):
    """No checkpoint of the workdir can be used: the message says which and what to do."""


def _step_dirs(directory: str) -> list[tuple[int, str]]:
    if not os.path.isdir(directory):
        return []
    names = [name for name in os.listdir(directory) if name.isdigit()]
    return sorted((int(name), os.path.join(directory, name)) for name in names)


def _digests(step_dir: str) -> dict[str, str]:
    digests = {}
    for root, _, files in os.walk(step_dir):
        for name in files:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, step_dir)
            if not relative.startswith(MANIFEST):
                with open(path, "rb") as f:
                    digests[relative] = hashlib.file_digest(f, "sha256").hexdigest()
    return digests


def write_manifests(directory: str) -> None:
    """A checksum manifest for every finished step that has none (process 0; call it when no
    save is in flight: Orbax's finished steps are the numeric folders)."""
    if jax.process_index() != 0:
        return
    for _, step_dir in _step_dirs(directory):
        path = os.path.join(step_dir, MANIFEST)
        if not os.path.exists(path):
            digests = _digests(step_dir)
            with open(path + ".tmp", "w") as f:  # renamed: a crash leaves no half manifest
                json.dump(digests, f, indent=1)
            os.replace(path + ".tmp", path)


def _step_problem(step_dir: str) -> str | None:
    """Why a step cannot be trusted (a JSON item that is missing or does not parse, a file that
    differs from its manifest or is missing), or None."""
    for item in _JSON_ITEMS + _OPTIONAL_JSON_ITEMS:
        path = os.path.join(step_dir, item)
        if not os.path.exists(path):
            if item in _JSON_ITEMS:
                return f"{item} is missing"
            continue
        try:
            with open(path) as f:
                json.load(f)
        except (OSError, ValueError) as e:
            return f"{item} does not parse ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
    manifest = os.path.join(step_dir, MANIFEST)
    if os.path.exists(manifest):
        try:
            with open(manifest) as f:
                expected = json.load(f)
        except (OSError, ValueError):
            return f"{MANIFEST} does not parse"
        found = _digests(step_dir)
        for name, digest in expected.items():
            if found.get(name) != digest:
                what = "is missing" if name not in found else "differs from its checksum"
                return f"{name} {what}"
    return None


def _move_aside(step_dir: str) -> str:
    aside = f"{step_dir}.corrupt"
    aside = aside if not os.path.exists(aside) else f"{aside}.{time.time_ns()}"
    os.replace(step_dir, aside)
    return aside


def check_checkpoints(directory: str, log) -> None:
    """Every step checked before the checkpoint manager trusts it (_step_problem): a damaged
    step is reported in one line and moved aside to STEP.corrupt, the best-kept one too (the
    manager then keeps the best intact step). When every step is damaged nothing is moved and
    CheckpointsUnusable says so."""
    steps = _step_dirs(directory)
    problems = {step: _step_problem(path) for step, path in steps}
    bad = [step for step, problem in problems.items() if problem]
    if not bad:
        return
    if len(bad) == len(steps):
        raise CheckpointsUnusable(
            f"none of the checkpoints {[s for s, _ in steps]} in {directory} is intact ("
            + "; ".join(f"step {s}: {problems[s]}" for s in bad)
            + f"): move {directory} away to start this run afresh"
        )
    for step, path in steps:
        if problems[step] and jax.process_index() == 0:
            log(f"checkpoint step {step}: {problems[step]}; moved aside to {_move_aside(path)}")


def make_checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
    """Keep the latest N plus the best N by validation loss; saves are asynchronous.

    best_fn makes Orbax write each step's metrics beside it (the `metrics` item) and read them
    back on a restart; without it the best checkpoint's loss was forgotten after a resume and
    the best-of policy deleted it.
    """
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(
        [
            ocp.checkpoint_managers.LatestN(config.checkpoint.keep),
            ocp.checkpoint_managers.BestN(
                # reverse=True sorts descending and keeps the last n: the lowest losses.
                get_metric_fn=_val_loss,
                reverse=True,
                n=config.checkpoint.keep_best,
                keep_checkpoints_without_metrics=False,
            ),
        ]
    )
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    check_checkpoints(directory, lambda line: print(line, file=sys.stderr, flush=True))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        best_fn=_val_loss,
        best_mode="min",
        enable_async_checkpointing=True,
    )
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "data", "meta"))


def save_checkpoint(manager, step, state, data_iter, meta, metrics=None) -> None:
    """state (Orbax StandardSave), the data position and meta (JSON items, written by process 0).

    The data position is a global batch index (pdr_jax.data.pipeline), one copy for all
    processes, so a run resumes with another process count; Grain's own Orbax handler writes a
    file per process index and count and would refuse that resume. The previous save is
    finished first (it had a whole checkpoint interval) and the finished steps get their
    checksum manifests (write_manifests).
    """
    manager.wait_until_finished()
    write_manifests(str(manager.directory))
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_iter.get_state()),
            meta=ocp.args.JsonSave(meta),
        ),
        metrics=metrics,
        force=True,
    )


def restore_checkpoint(manager, step, abstract_state):
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        ),
    )
    return restored["state"], restored["data"], restored["meta"]


def restore_latest_intact(manager, abstract_state, log) -> tuple | None:
    """(step, state, data state, meta) of the newest checkpoint that loads; None without any.

    A step that fails to load is reported in one line (step, cause) and the next older one is
    tried; once one loads, the broken newer ones are moved aside to `checkpoints/STEP.corrupt`
    (kept for inspection, ignored by Orbax). When none loads nothing is moved (a config that no
    longer matches its checkpoints fails every step alike) and a RuntimeError names the folder.
    """
    steps, broken = sorted(manager.all_steps(), reverse=True), []
    for step in steps:
        try:
            restored = restore_checkpoint(manager, step, abstract_state)
        except Exception as e:  # noqa: BLE001 - TensorStore, JSON, Orbax: any failure to load
            broken.append(step)
            cause = " ".join(str(e).split())[:300]
            log(f"checkpoint step {step} does not load ({type(e).__name__}: {cause})")
            continue
        for bad in broken if jax.process_index() == 0 else ():
            aside = _move_aside(os.path.join(str(manager.directory), str(bad)))
            log(f"checkpoint step {bad} moved aside to {aside}; resuming from step {step}")
        return (step, *restored)
    if steps:
        raise CheckpointsUnusable(
            f"none of the checkpoints {steps} in {manager.directory} loads (causes above; a changed "
            f"network config fails them all alike): fix the config, or move {manager.directory} away "
            "to start this run afresh"
        )
    return None


# ----------------------------------------------------------------------------------------------
# The loop.


class _Preemption:
    """SIGTERM stops the run at a step boundary, which saves a checkpoint and exits.

    One process: a Python handler sets a flag. Several processes: each may receive the signal at
    another step, and the checkpoint save is collective, so they agree on the step through
    Orbax's `CheckpointManager.reached_preemption` (JAX's preemption sync point, fed by the
    coordination service's SIGTERM notifier; no Python handler).
    """

    def __init__(self, manager: ocp.CheckpointManager):
        self.manager = manager
        self.multi_process = jax.process_count() > 1
        self.flag = False
        if self.multi_process:
            return
        # Not in the main thread (e.g. a notebook worker) there is no handler.
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint and exiting")
        self.flag = True

    def reached(self, step: int) -> bool:
        """Stop after `step`? The same answer on every process."""
        return self.manager.reached_preemption(step) if self.multi_process else self.flag


class Plateau:
    """Adaptive stage end: stop when `patience` validations in a row improve the best validation
    loss by less than `min_rel_improvement` (relative)."""

    def __init__(self, patience: int, min_rel_improvement: float):
        self.patience, self.min_rel = patience, min_rel_improvement
        self.best, self.bad = math.inf, 0

    def update(self, val_loss: float) -> bool:
        if val_loss < self.best * (1 - self.min_rel):
            self.best, self.bad = val_loss, 0
        else:
            self.bad += 1
        return self.bad >= self.patience


@dataclasses.dataclass(frozen=True)
class _Run:
    """What stays fixed for a whole run: the loop's context."""

    config: Any
    workdir: str
    stages: list[Stage]
    objective: Objective
    net: Any
    network_kwargs: dict
    mesh: Mesh
    replicated: NamedSharding
    batch_sharding: NamedSharding
    base_key: Any
    manager: ocp.CheckpointManager
    logger: MetricsLogger
    preemption: _Preemption
    pipeline: Any  # pdr_jax.data.pipeline, imported when a run starts


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Train `config` into `workdir`, resuming from its latest checkpoint if there is one.

    One training per workdir: process 0 holds its lock (pdr_jax.train.lock) for the whole run,
    and a second training on it raises lock.WorkdirBusy before touching anything."""
    distributed.initialize()  # a job described by the environment (launch/train.py: also flags)
    with lock.workdir_lock(workdir, enabled=jax.process_index() == 0):
        run = _setup(config, workdir)
        state, meta, data_state = _start_or_resume(run)
        stopped = False
        try:
            for stage in run.stages[meta["stage"] :]:
                state, meta, stopped = _run_stage(run, stage, state, meta, data_state)
                data_state = None
                if stopped:
                    break
        finally:  # on errors too: a save in flight is the last good checkpoint, let it land
            run.manager.wait_until_finished()
            write_manifests(str(run.manager.directory))
        _finish(run, state, meta, stopped)
    return state


def _setup(config, workdir: str) -> _Run:
    """The run's context; network.json and config.json written into the workdir."""
    from pdr_jax.data import pipeline  # local: the data stack (grain, readers) is heavy

    os.makedirs(workdir, exist_ok=True)
    objective = objective_of(config)
    net, network_kwargs = build_network_from_config(config.model, objective.name)
    mesh = make_mesh(config.train.num_devices)
    manager = make_checkpoint_manager(workdir, config)
    run = _Run(
        config=config,
        workdir=workdir,
        stages=stages_from_config(config),
        objective=objective,
        net=net,
        network_kwargs=network_kwargs,
        mesh=mesh,
        replicated=NamedSharding(mesh, P()),
        batch_sharding=NamedSharding(mesh, P("data")),
        base_key=jax.random.key(config.seed),
        manager=manager,
        logger=MetricsLogger(workdir, enabled=jax.process_index() == 0),
        preemption=_Preemption(manager),
        pipeline=pipeline,
    )
    description = {"format": "pdr_jax-model", "version": 1, "kind": objective.kind}
    _write_json(os.path.join(workdir, "network.json"), {**description, "network": network_kwargs})
    _write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
    return run


def _start_or_resume(run: _Run) -> tuple[TrainState, dict, Any]:
    """(state, meta, data iterator state or None): the newest intact checkpoint, else a new
    state (random, or train.init_from's weights)."""
    config, logger = run.config, run.logger
    optim = config.optim
    tx0 = make_optimizer(
        optim.lr, betas=tuple(optim.betas), eps=optim.eps, grad_clip=optim.grad_clip
    )
    init_fn = lambda: create_train_state(
        run.net,
        jax.random.fold_in(run.base_key, 10**6),
        tx0,
        resolution=run.net.model.img_resolution,
    )
    abstract_state = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=run.replicated),
        jax.eval_shape(init_fn),
    )
    restored = restore_latest_intact(run.manager, abstract_state, logger.info)
    if restored is None:
        state, meta = (
            cpu.jit(init_fn, out_shardings=run.replicated)(),
            _stage_meta(0, step=0, nimg=0.0),
        )
        logger.info(f"new run: {run.network_kwargs}")
        if config.train.init_from:
            state, meta["init_kimg"] = init_from(state, run.net, config.train.init_from)
            state = jax.device_put(state, run.replicated)
            logger.info(
                f"weights from {config.train.init_from} ({meta['init_kimg']:.1f} kimg before this run)"
            )
        return state, meta, None
    run.manager.reload()  # forget steps moved aside
    latest, state, data_state, meta = restored
    logger.info(
        f"resumed from step {latest} (stage {meta['stage']}, kimg {float(state.nimg) / 1000:.2f})"
    )
    if meta.get("data_position") != DATA_POSITION:
        # Written before the data position counted global batches (an element index): read as
        # a batch index it would silently skip data. The weights and counts are kept.
        if data_state is not None:
            logger.info(
                f"checkpoint {latest} stores an older kind of data position; this stage's data "
                "restarts from its beginning (weights, step and kimg are kept)"
            )
        meta, data_state = {**meta, "data_position": DATA_POSITION}, None
    if meta["stage_complete"] and not _extended(meta, run.stages, float(state.nimg)):
        # Saved at a stage's end: the next stage starts with fresh data.
        meta = _stage_meta(
            meta["stage"] + 1,
            step=int(state.step),
            nimg=float(state.nimg),
            init_kimg=meta.get("init_kimg", 0.0),
        )
        data_state = None
    return state, meta, data_state


def _finish(run: _Run, state: TrainState, meta: dict, stopped: bool) -> None:
    """The loss plot and, unless stopped early, the EMA network as a model directory; a last
    line saying where they are and what to run next."""
    log = run.logger.info
    if jax.process_index() == 0:
        save_loss_plot(run.logger.path, os.path.join(run.workdir, "loss.png"))
    if stopped:
        log(
            f"stopped at step {int(state.step)} for a preemption, checkpoint saved; run the same "
            "command again to resume"
        )
    else:  # every process saves: Orbax writes collectively
        kimg = float(state.nimg) / 1000
        model_dir = os.path.abspath(os.path.join(run.workdir, "model"))
        source = {
            "workdir": os.path.abspath(run.workdir),
            "step": int(state.step),
            "kimg": kimg,
            "init_from": run.config.train.init_from or None,
            "kimg_total": meta.get("init_kimg", 0.0) + kimg,
        }
        log(f"exporting the EMA network to {model_dir}")
        variables = jax.device_get(state.variables(ema=True))
        model_io.save_model(
            model_dir,
            run.network_kwargs,
            variables,
            source=source,
            overwrite=True,
            kind=run.objective.kind,
        )
        conditional = run.objective.kind == "conditional"
        method = " --method conditional" if conditional else ""
        weights = run.config.data.domain_weights
        domain = max(weights, key=lambda name: float(weights[name]))  # what it was trained on most
        sample = (
            "" if conditional else f"\n  pdr-sample {model_dir} samples/ --num 12 --domain {domain}"
        )
        log(
            f"done: {kimg:.2f} kimg in this run ({source['kimg_total']:.2f} in all); the model is "
            f"{model_dir}, the loss curve {os.path.join(run.workdir, 'loss.png')}. Next:\n"
            f"  pdr-restore noisy.tif --output restored.tif --checkpoint {model_dir}{method} "
            f"--domain {domain} --scale 10 --read-noise 2{sample}"
        )
    run.logger.close()


def init_from(state: TrainState, net, source: str) -> tuple[TrainState, float]:
    """`state` with parameters (and EMA, buffers) from a model directory or an EDM pickle.

    source: a pdr_jax model directory or a shipped model's name such as "pdr-gray-default"
    (model_io.load_model; its recorded kimg_total or kimg is
    returned so that the run's total counts on) or an EDM .pkl/.pt/.pth (convert/edm_pickle,
    its EMA network; 0 kimg returned). The optimiser starts fresh. A source with another number
    of image channels (a gray prior for an RGB config) has its first and last convolutions
    adapted (model_io.adapt_image_channels: gray images in, the same gray out). Raises
    model_io.ModelFormatError (a ValueError) naming the source and the missing, unexpected and
    mis-shaped parameters when its network differs from `net`, the config's, otherwise.
    """
    path = model_io.resolve_model(source)
    if path.is_dir():
        source_net, variables = model_io.load_model(path)
        recorded = model_io.read_network_json(path).get("source", {})
        kimg = float(recorded.get("kimg_total") or recorded.get("kimg") or 0.0)
    else:
        from pdr_jax.convert.edm_pickle import load_edm_pickle

        source_net, variables = load_edm_pickle(path)
        kimg = 0.0
    variables = model_io.adapt_image_channels(
        net,
        variables,
        source_net.model.in_channels,
        f"train.init_from={source} (against config.model)",
    )
    variables = flax.core.unfreeze(variables)
    cast = lambda tree, like: jax.tree_util.tree_map(
        lambda v, ref: jnp.asarray(v, ref.dtype), tree, like
    )
    params = cast(variables.pop("params"), state.params)
    # Separate buffers for params and EMA: the train step donates both.
    ema_params = jax.tree_util.tree_map(jnp.copy, params)
    return state.replace(
        params=params, ema_params=ema_params, buffers=cast(variables, state.buffers)
    ), kimg


def _run_stage(run: _Run, stage: Stage, state, meta: dict, data_state):
    """Train one stage; returns (state, meta, stopped_early_for_preemption)."""
    num_devices = run.mesh.devices.size
    batch_size = _stage_batch_size(
        stage,
        state,
        run.net,
        run.config,
        num_devices,
        run.replicated,
        run.batch_sharding,
        run.logger,
    )
    state, schedule, train_step, eval_step = _stage_programs(run, stage, state, meta, batch_size)
    data_iter, val_batches = _stage_data(run, stage, batch_size, data_state)
    run.logger.info(
        f"stage {stage.index}: {stage.resolution}x{stage.resolution}, batch {batch_size} on "
        f"{num_devices} device(s), {stage.kimg} kimg, lr {stage.lr:g}{', adaptive' if stage.adaptive else ''}"
    )
    run.logger.info(
        f"stage {stage.index}: compiling the training step for {stage.resolution} px "
        f"(batch {batch_size}); the first step waits for it"
    )
    steps = _StageSteps(run, stage, meta, batch_size, schedule, eval_step, val_batches)
    state, stopped = steps.loop(state, train_step, data_iter)
    if stopped:
        return state, meta, True
    # Every process takes its own rows of the (sharded, global) validation batch; process 0 draws.
    local = multihost_utils.global_array_to_host_local_array(val_batches[0], run.mesh, P("data"))
    if jax.process_index() == 0:
        local = jax.tree_util.tree_map(np.asarray, local)
        run.logger.info(
            f"stage {stage.index}: drawing the end-of-stage figure "
            f"({run.config.sample.num_steps} sampler steps, compiled first)"
        )
        path = run.objective.stage_figure(run.net, state, run.config, stage, run.workdir, local)
        run.logger.info(f"stage {stage.index}: wrote {path}")
    next_meta = _stage_meta(
        stage.index + 1,
        step=int(state.step),
        nimg=float(state.nimg),
        init_kimg=meta.get("init_kimg", 0.0),
    )
    return state, next_meta, False


def _stage_programs(run: _Run, stage: Stage, state, meta: dict, batch_size: int):
    """(state with the stage's optimizer, lr schedule, jitted train step, jitted eval step)."""
    optim = run.config.optim
    schedule = warmup_schedule(
        stage.lr,
        optim.lr_rampup_kimg,
        start_step=meta["stage_start_step"],
        start_nimg=meta["stage_start_nimg"],
        batch=batch_size,
    )
    tx = make_optimizer(
        schedule, betas=tuple(optim.betas), eps=optim.eps, grad_clip=optim.grad_clip
    )
    rep, shard = run.replicated, run.batch_sharding
    train_step, eval_step = run.objective.steps(run.net, run.config, batch_size)
    # On CPU, one program per pdr_jax.cpu record (convolutions, layers, compiler options).
    train_step = cpu.jit(
        train_step,
        in_shardings=(rep, shard, rep),
        out_shardings=(rep, rep),
        donate_argnums=0,
    )
    eval_step = cpu.jit(
        eval_step,
        in_shardings=(rep, shard),
        out_shardings=rep,
    )
    return state.replace(tx=tx), schedule, train_step, eval_step


def _stage_data(run: _Run, stage: Stage, batch_size: int, data_state):
    """(this process's training iterator, at data_state if given; the global val batches)."""
    config, objective = run.config, run.objective
    pidx, pcount = jax.process_index(), jax.process_count()
    ds = run.pipeline.make_dataset(
        config.data,
        seed=config.seed + stage.index,
        resolution=stage.resolution,
        global_batch=batch_size,
        split="train",
        process_index=pidx,
        process_count=pcount,
        paired=objective.paired,
    )
    data_iter = iter(ds)
    if data_state is not None:
        data_iter.set_state(data_state)
    local = _val_batches(run.pipeline, config, stage, batch_size, pidx, pcount, objective.paired)
    keys = (*objective.batch_keys, "valid")
    return data_iter, [global_batch(b, run.batch_sharding, keys=keys) for b in local]


class _StageSteps:
    """The step loop of one stage: train, log, validate (and end a plateaued adaptive stage),
    checkpoint, and stop at a preemption."""

    def __init__(
        self, run: _Run, stage: Stage, meta: dict, batch_size, schedule, eval_step, val_batches
    ):
        self.run, self.stage, self.meta, self.batch_size = run, stage, meta, batch_size
        self.schedule, self.eval_step, self.val_batches = schedule, eval_step, val_batches
        self.end_nimg = meta["stage_start_nimg"] + stage.kimg * 1000
        self.total_steps = math.ceil((self.end_nimg - meta["stage_start_nimg"]) / batch_size)
        every = lambda kimg: max(round(kimg * 1000 / batch_size), 1)
        train, checkpoint = run.config.train, run.config.checkpoint
        self.log_every, self.val_every = every(train.log_every_kimg), every(train.val_every_kimg)
        self.ckpt_every = every(checkpoint.every_kimg)
        self.plateau = Plateau(train.adaptive_patience, train.adaptive_min_rel_improvement)
        self.last_good_step, self.plateaued, self.t0, self.n0 = None, False, None, None
        self.compile_t0 = time.time()

    def loop(self, state, train_step, data_iter) -> tuple[Any, bool]:
        """(state, stopped for a preemption)."""
        run, step = self.run, int(state.step)
        while float(state.nimg) < self.end_nimg - 0.5:
            batch = global_batch(next(data_iter), run.batch_sharding, keys=run.objective.batch_keys)
            state, metrics = train_step(state, batch, run.base_key)
            step += 1
            if self.t0 is None:  # throughput and ETA exclude the first step (the compile)
                self.t0, self.n0 = time.time(), step
                run.logger.info(
                    f"stage {self.stage.index}: compiled, first step started after "
                    f"{self.t0 - self.compile_t0:.0f} s"
                )
            last = float(state.nimg) >= self.end_nimg - 0.5
            if step % self.log_every == 0 or last:
                self._log(state, metrics, step)
            val_metrics = None
            if step % self.val_every == 0 or last:
                val_metrics = _validate(self.eval_step, state, self.val_batches)
                last = self._after_validation(state, step, val_metrics["val_loss"]) or last
            stop = run.preemption.reached(step)
            if step % self.ckpt_every == 0 or last or stop:
                _check_finite(float(metrics["loss"]), step, self.stage, self.last_good_step)
                meta_now = {**self.meta, "stage_complete": bool(last), "plateaued": self.plateaued}
                val_metrics = val_metrics or _validate(self.eval_step, state, self.val_batches)
                save_checkpoint(run.manager, step, state, data_iter, meta_now, val_metrics)
                self.last_good_step = step
            if stop:
                run.manager.wait_until_finished()
                return state, True
            if last:
                break
        return state, False

    def _log(self, state, metrics, step: int) -> None:
        loss = float(metrics["loss"])  # host sync only at log steps
        _check_finite(loss, step, self.stage, self.last_good_step)
        elapsed = max(time.time() - self.t0, 1e-9)
        rate = (step - self.n0) * self.batch_size / elapsed if step > self.n0 else 0.0
        remaining = self.total_steps - (step - self.meta["stage_start_step"])
        eta_s = remaining * self.batch_size / max(rate, 1e-9)
        # The later stages at this rate, scaled by their pixels per image.
        later_s = sum(
            later.kimg * 1000 / max(rate, 1e-9) * (later.resolution / self.stage.resolution) ** 2
            for later in self.run.stages[self.stage.index + 1 :]
        )
        self.run.logger.progress(
            step=step,
            stage=self.stage.index,
            kimg=float(state.nimg) / 1000,
            loss=loss,
            grad_norm=float(metrics["grad_norm"]),
            lr=float(self.schedule(step - 1)),
            img_per_s=rate,
            eta_s=eta_s,
            run_eta_s=eta_s + later_s,
            resolution=self.stage.resolution,
        )

    def _after_validation(self, state, step: int, val_loss: float) -> bool:
        """Log the validation loss; True when an adaptive stage (not the last) has plateaued."""
        stage, kimg = self.stage, float(state.nimg) / 1000
        self.run.logger.scalars(
            step,
            {
                "val_loss": val_loss,
                "stage": stage.index,
                "resolution": stage.resolution,
                "kimg": kimg,
            },
        )
        not_last = stage.index < len(self.run.stages) - 1
        if stage.adaptive and not_last and self.plateau.update(val_loss):
            self.run.logger.info(
                f"stage {stage.index}: validation loss plateaued at {val_loss:.4f} "
                f"(kimg {kimg:.1f}); moving on"
            )
            self.plateaued = True
            return True
        return False


def _extended(meta: dict, stages: list[Stage], nimg: float) -> bool:
    """A stage that ended at its kimg but is longer in the current config goes on."""
    if meta.get("plateaued") or meta["stage"] >= len(stages):
        return False
    return nimg < meta["stage_start_nimg"] + stages[meta["stage"]].kimg * 1000 - 0.5


# What the checkpointed data position counts (pdr_jax.data.pipeline): global batches of the
# stage's stream, the same batch for any process count.
DATA_POSITION = "global-batches"


def _stage_meta(stage: int, *, step: int, nimg: float, init_kimg: float = 0.0) -> dict:
    """Checkpointed bookkeeping: where the current stage started, and whether it has ended;
    init_kimg: the kimg of train.init_from's weights (the run's total counts on from it);
    data_position: what the stored data position counts (DATA_POSITION)."""
    return {
        "data_position": DATA_POSITION,
        "stage": stage,
        "stage_start_step": step,
        "stage_start_nimg": nimg,
        "stage_complete": False,
        "plateaued": False,
        "init_kimg": init_kimg,
    }


def _stage_batch_size(
    stage, state, net, config, num_devices, replicated, batch_sharding, logger
) -> int:
    if stage.batch_size != "auto":
        batch = int(stage.batch_size)
        if batch % num_devices:
            raise ValueError(
                f"stage {stage.index}: batch_size {batch} is not divisible by the {num_devices} devices"
            )
        return batch
    shapes = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state
    )
    objective = objective_of(config)
    res, label_dim = stage.resolution, net.model.label_dim
    channels = objective.image_channels(net)
    shapes_of = {
        "clean": (res, res, channels),
        "noisy": (res, res, channels),
        "cond": (label_dim,),
        "s": (),
        "r": (),
        "b": (),
    }

    def compile_step(b):
        batch = {
            k: jax.ShapeDtypeStruct((b, *shapes_of[k]), jnp.float32, sharding=batch_sharding)
            for k in objective.batch_keys
        }
        step = cpu.jit(
            objective.steps(net, config, b)[0],
            in_shardings=(replicated, batch_sharding, replicated),
            donate_argnums=0,
        )
        return step.lower(shapes, batch, jax.random.key(0)).compile()

    candidates = [
        num_devices * 2**k for k in range(12) if num_devices * 2**k <= config.train.auto_batch_max
    ]
    best, report = auto_batch_size(
        compile_step, candidates, budget_bytes=config.train.memory_budget_gb * 2**30
    )
    logger.info(
        f"stage {stage.index}: auto batch size {best} (bytes needed per candidate: {report})"
    )
    return best


def _check_finite(loss: float, step: int, stage: Stage, last_good_step) -> None:
    if not math.isfinite(loss):
        where = (
            f"the checkpoint of step {last_good_step}"
            if last_good_step is not None
            else "the previous stage's checkpoints"
        )
        raise FloatingPointError(
            f"training loss is {loss} at step {step} (stage {stage.index}, {stage.resolution}x{stage.resolution}); "
            f"stopping without saving. The last good state is {where} in the workdir: lower optim.lr or "
            f"set optim.grad_clip and resume."
        )


def _val_batches(pipeline, config, stage, batch_size, pidx, pcount, paired=False):
    ds = pipeline.make_dataset(
        config.data,
        seed=config.seed,
        resolution=stage.resolution,
        global_batch=batch_size,
        split="val",
        process_index=pidx,
        process_count=pcount,
        paired=paired,
    )
    return [b for _, b in zip(range(config.train.val_batches), ds)]


def _validate(eval_step, state, val_batches) -> dict:
    """Mean EMA denoising loss over the held-out crops and the fixed sigmas."""
    out = jax.device_get([eval_step(state, b) for b in val_batches])
    return {
        "val_loss": float(sum(o["loss_sum"] for o in out) / max(sum(o["count"] for o in out), 1))
    }


def _stage_samples(net, state, config, stage, workdir, val_batch=None) -> str:
    """A PNG grid of EMA samples, a row per domain (fixed seeds, Heun), written at the end of a
    stage; returns its path."""
    from pdr_jax.physics.conditioning import DOMAINS, conditioning_vector
    from pdr_jax.samplers import edm_sampler, network_sampler_args

    n = config.sample.per_domain
    variables = jax.device_get(state.variables(ema=True))
    rows = []
    for d, domain in enumerate(DOMAINS):
        s = config.sample.scales[domain]
        labels = jnp.broadcast_to(
            conditioning_vector(domain, s, config.sample.read_noise, 0.0), (n, net.model.label_dim)
        )
        shape = (n, stage.resolution, stage.resolution, net.model.in_channels)
        latents = jax.random.normal(jax.random.key(config.sample.seed + d), shape)
        x = edm_sampler(
            latents=latents,
            num_steps=config.sample.num_steps,
            **network_sampler_args(net, variables, labels),
        )
        rows.append(np.asarray((x + 1) / 2))
    path = os.path.join(workdir, f"samples_stage{stage.index}_{stage.resolution}px.png")
    save_sample_grid(rows, path, row_labels=DOMAINS)
    return path


def _stage_restorations(net, state, config, stage, workdir, val_batch) -> str:
    """A PNG grid of held-out crops: clean, noisy ((y - b) / s) and the EMA model's restoration
    (pdr_jax.restore.restore with CONDITIONAL_SETTINGS and config.sample.num_steps, image by
    image: each has its own s, r, b), written at the end of a stage; returns its path."""
    from pdr_jax.conditional import ConditionalModel
    from pdr_jax.physics.conditioning import DOMAINS
    from pdr_jax.restore import CONDITIONAL_SETTINGS, Physics, restore

    n = min(config.sample.per_domain * 3, val_batch["clean"].shape[0])
    batch = {k: np.asarray(v[:n]) for k, v in val_batch.items()}
    model = ConditionalModel(net, jax.device_get(state.variables(ema=True)))
    sampler = dataclasses.replace(
        CONDITIONAL_SETTINGS["sampler"], num_steps=config.sample.num_steps
    )
    restored = []
    for i in range(n):
        domain = DOMAINS[int(np.argmax(batch["cond"][i, : len(DOMAINS)]))]
        physics = Physics(float(batch["s"][i]), float(batch["r"][i]), float(batch["b"][i]), domain)
        result = restore(
            model,
            batch["noisy"][i],
            physics=physics,
            guidance=CONDITIONAL_SETTINGS["guidance"],
            sampler=sampler,
            tiling_settings=None,
            key=jax.random.key(config.sample.seed + i),
        )
        restored.append(result.image)
    noisy = (batch["noisy"] - batch["b"][:, None, None, None]) / batch["s"][:, None, None, None]
    rows = [batch["clean"], noisy, np.stack(restored)]
    path = os.path.join(workdir, f"restorations_stage{stage.index}_{stage.resolution}px.png")
    save_sample_grid(rows, path, row_labels=("clean", "noisy", "restored"))
    return path


def _ema_of(config) -> Ema:
    return Ema(config.train.ema_halflife_kimg, config.train.ema_rampup_ratio)


def _edm_steps(net, config, batch_size: int):
    loss_fn = loss_for(net, P_mean=config.train.P_mean, P_std=config.train.P_std)
    train_step = make_train_step(net, loss_fn, batch_size=batch_size, ema=_ema_of(config))
    return train_step, make_eval_step(net, config.train.val_sigmas)


def _ddpm_steps(net, config, batch_size: int):
    distance = config.train.loss
    train_step = make_ddpm_train_step(
        net, distance=distance, batch_size=batch_size, ema=_ema_of(config)
    )
    eval_step = make_ddpm_eval_step(
        net, val_timesteps=config.train.val_timesteps, distance=distance
    )
    return train_step, eval_step


OBJECTIVES = {
    "edm": Objective(
        name="edm",
        build=build_network,
        kind="prior",
        steps=_edm_steps,
        batch_keys=("clean", "cond"),
        paired=False,
        image_channels=lambda net: net.model.in_channels,
        stage_figure=_stage_samples,
        foreign_model_keys=("cond_channels", "num_timesteps", "beta_schedule", "parameterization"),
    ),
    "ddpm": Objective(
        name="ddpm",
        build=conditional.build_conditional,
        kind="conditional",
        steps=_ddpm_steps,
        batch_keys=("clean", "cond", "noisy", "s", "r", "b"),
        paired=True,
        image_channels=lambda net: net.img_channels,
        stage_figure=_stage_restorations,
        foreign_model_keys=("precond",),
    ),
}


def _write_json(path: str, obj) -> None:
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)
