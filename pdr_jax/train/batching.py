"""Devices and batches: the 1-D data mesh, global batches from each process's rows, and the
batch size of a stage (a number, or "auto": the largest that fits the memory budget)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from pdr_jax import cpu
from pdr_jax.train.steps import objective_of


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh ("data") over the first `num_devices` devices (None: all)."""
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


def stage_batch_size(
    stage, state, net, config, replicated, batch_sharding, log, *, cpu_options=None
) -> int:
    """The stage's global batch: its batch_size, checked to divide over the mesh's devices, or
    for "auto" the largest power-of-2 multiple of the device count (up to
    train.auto_batch_max) whose compiled train step fits train.memory_budget_gb
    (auto_batch_size; `log` gets the bytes per candidate). cpu_options: the run's pdr_jax.cpu
    record (None: the current one)."""
    num_devices = batch_sharding.mesh.devices.size
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
            cpu=cpu_options,
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
    log(f"stage {stage.index}: auto batch size {best} (bytes needed per candidate: {report})")
    return best


def stage_batches(pipeline, config, stage, batch_size: int, data_state, batch_sharding, objective):
    """(this process's training iterator of the stage, at data_state if given; the global
    validation batches, with "valid" rows). pipeline: pdr_jax.data.pipeline; objective: the
    run's steps.Objective (pairs or not, the batch keys)."""
    common = dict(
        resolution=stage.resolution,
        global_batch=batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        paired=objective.paired,
    )
    # Each stage its own training stream; the validation crops are the same for every stage.
    train = pipeline.make_dataset(
        config.data, seed=config.seed + stage.index, split="train", **common
    )
    data_iter = iter(train)
    if data_state is not None:
        data_iter.set_state(data_state)
    val = pipeline.make_dataset(config.data, seed=config.seed, split="val", **common)
    local = [b for _, b in zip(range(config.train.val_batches), val)]
    keys = (*objective.batch_keys, "valid")
    return data_iter, [global_batch(b, batch_sharding, keys=keys) for b in local]
