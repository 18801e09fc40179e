"""Training loop: progressive resolution stages, data parallel jit, Orbax checkpoints that resume.

`train(config, workdir)` runs the stages of `config.stages` in order. One network, built for
the final resolution and fully convolutional, carries its parameters across stages; the train
step recompiles once per stage (new shapes). Data parallelism: the global batch is sharded over a
1-D device mesh ("data", pdr_jax.train.batching), parameters are replicated, the state is
donated. Randomness: the step key is fold_in(base_key, step), so a resumed run sees the same
draws; the data iterator's state is checkpointed with the train state (pdr_jax.train.checkpoint),
so it sees the same batches too. On CPU the programs are built for config.cpu_conv
($PDR_CPU_CONV wins; pdr_jax.cpu), and the mode used is recorded in the workdir's config.json
and the exported model's network.json ("source").

What the objective (`config.train.objective`, "edm" or "ddpm") decides, its network, steps, batch
keys and end-of-stage figure, is its record in pdr_jax.train.steps.OBJECTIVES; everything here
is shared.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pdr_jax import cpu, model_io
from pdr_jax.train import distributed, lock
from pdr_jax.train.batching import global_batch, make_mesh, stage_batch_size, stage_batches
from pdr_jax.train.checkpoint import (
    current_data_position,
    export_model,
    init_from,
    make_checkpoint_manager,
    next_stage_meta,
    restore_latest_intact,
    save_checkpoint,
    stage_meta,
    write_manifests,
)
from pdr_jax.train.monitor import MetricsLogger, done_message, etas, save_loss_plot
from pdr_jax.train.state import TrainState, create_train_state, make_optimizer, warmup_schedule
from pdr_jax.train.steps import Objective, jit_steps, objective_of, validate

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
    """config.stages in order; a stage's lr None (or absent) is optim.lr."""
    if not config.stages:
        raise ValueError("config.stages is empty: at least one stage is needed")
    return [
        Stage(
            i,
            int(s["resolution"]),
            float(s["kimg"]),
            s["batch_size"],
            float(s.get("lr", None) or config.optim.lr),
            bool(s.get("adaptive", False)),
        )
        for i, s in enumerate(config.stages)
    ]


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
    cpu_options: cpu.CpuOptions  # config.cpu_conv's record: every program of the run uses it


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
    net, network_kwargs = model_io.build_network_from_config(config.model, objective.name)
    cpu_options = cpu.options(cpu.resolve_mode(config.get("cpu_conv")))
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
        cpu_options=cpu_options,
    )
    network = model_io.describe(network_kwargs, kind=objective.kind.name)
    _write_json(os.path.join(workdir, model_io.NETWORK_FILE), network)
    # config.cpu_conv as resolved: the mode this run's programs are built for.
    config_json = json.loads(config.to_json_best_effort())
    config_json["cpu_conv"] = cpu.mode_name(cpu_options)
    _write_json(os.path.join(workdir, "config.json"), config_json)
    return run


def _start_or_resume(run: _Run) -> tuple[TrainState, dict, Any]:
    """(state, meta, data iterator state or None): the newest intact checkpoint, else a new
    state (random, or train.init_from's weights)."""
    config, logger = run.config, run.logger
    init_fn = lambda: create_train_state(
        run.net,
        jax.random.fold_in(run.base_key, 10**6),
        _optimizer(config.optim, config.optim.lr),
        resolution=run.net.model.img_resolution,
    )
    abstract_state = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=run.replicated),
        jax.eval_shape(init_fn),
    )
    restored = restore_latest_intact(run.manager, abstract_state, logger.info)
    if restored is None:
        state, meta = (
            cpu.jit(init_fn, cpu=run.cpu_options, out_shardings=run.replicated)(),
            stage_meta(0, step=0, nimg=0.0),
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
    meta, data_state = current_data_position(meta, data_state, latest, logger.info)
    if meta["stage_complete"] and not _extended(meta, run.stages, float(state.nimg)):
        # Saved at a stage's end: the next stage starts with fresh data.
        meta, data_state = next_stage_meta(meta, meta["stage"], state), None
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
        source = {
            "workdir": os.path.abspath(run.workdir),
            "step": int(state.step),
            "kimg": kimg,
            "init_from": run.config.train.init_from or None,
            "kimg_total": meta.get("init_kimg", 0.0) + kimg,
            "cpu_conv": cpu.mode_name(run.cpu_options),  # how it was trained (config.cpu_conv)
        }
        kind, weights = run.objective.kind.name, run.config.data.domain_weights
        model_dir = export_model(run.workdir, state, run.network_kwargs, kind, source, log)
        log(done_message(source, run.workdir, model_dir, kind, weights))
    run.logger.close()


def _run_stage(run: _Run, stage: Stage, state, meta: dict, data_state):
    """Train one stage; returns (state, meta, stopped_early_for_preemption)."""
    rep, shard, num_devices = run.replicated, run.batch_sharding, run.mesh.devices.size
    batch_size = stage_batch_size(
        stage, state, run.net, run.config, rep, shard, run.logger.info, cpu_options=run.cpu_options
    )
    state, schedule, train_step, eval_step = _stage_programs(run, stage, state, meta, batch_size)
    data_iter, val_batches = stage_batches(
        run.pipeline, run.config, stage, batch_size, data_state, shard, run.objective
    )
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
        with cpu.using(run.cpu_options):  # the figure's programs too
            path = run.objective.stage_figure(run.net, state, run.config, stage, run.workdir, local)
        run.logger.info(f"stage {stage.index}: wrote {path}")
    return state, next_stage_meta(meta, stage.index, state), False


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
    tx = _optimizer(optim, schedule)
    train_step, eval_step = jit_steps(
        run.objective.steps(run.net, run.config, batch_size),
        run.replicated,
        run.batch_sharding,
        run.cpu_options,
    )
    return state.replace(tx=tx), schedule, train_step, eval_step


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
                val_metrics = validate(self.eval_step, state, self.val_batches)
                last = self._after_validation(state, step, val_metrics["val_loss"]) or last
            stop = run.preemption.reached(step)
            if step % self.ckpt_every == 0 or last or stop:
                _check_finite(float(metrics["loss"]), step, self.stage, self.last_good_step)
                meta_now = {**self.meta, "stage_complete": bool(last), "plateaued": self.plateaued}
                val_metrics = val_metrics or validate(self.eval_step, state, self.val_batches)
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
        later = [(s.kimg, s.resolution) for s in self.run.stages[self.stage.index + 1 :]]
        eta_s, run_eta_s = etas(rate, remaining * self.batch_size, self.stage.resolution, later)
        self.run.logger.progress(
            step=step,
            stage=self.stage.index,
            kimg=float(state.nimg) / 1000,
            loss=loss,
            grad_norm=float(metrics["grad_norm"]),
            lr=float(self.schedule(step - 1)),
            img_per_s=rate,
            eta_s=eta_s,
            run_eta_s=run_eta_s,
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


def _optimizer(optim, learning_rate):
    """config.optim's optimizer with this learning rate (a number or a schedule)."""
    betas, eps, grad_clip = tuple(optim.betas), optim.eps, optim.grad_clip
    return make_optimizer(learning_rate, betas=betas, eps=eps, grad_clip=grad_clip)


def _write_json(path: str, obj) -> None:
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)
