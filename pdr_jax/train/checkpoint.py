"""A training workdir's checkpoints: the Orbax manager, checksums, save/restore, where to resume.

`workdir/checkpoints/STEP/` holds the train state (Orbax StandardSave), the data position and
the stage bookkeeping (JSON items), Orbax's metrics item, and once finished a sha256 manifest
(MANIFEST) of its files. A damaged step (a manifest mismatch, a JSON item that does not parse,
an array that does not load) is moved aside to STEP.corrupt and the newest intact step is
used. `init_from` starts a new run from a model's weights; `load_training_run` reads a
workdir's network and weights for sampling (pdr-sample).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import sys
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from pdr_jax import model_io
from pdr_jax.train.state import TrainState

# What the checkpointed data position counts (pdr_jax.data.pipeline): global batches of the
# stage's stream, the same batch for any process count.
DATA_POSITION = "global-batches"


def current_data_position(meta: dict, data_state, step: int, log) -> tuple[dict, Any]:
    """(meta, data_state) of a restored step, the data position dropped (None: the stage's data
    restarts) when it is of an older kind: written before the data position counted global
    batches (an element index), read as a batch index it would silently skip data. The
    weights and counts are kept."""
    if meta.get("data_position") == DATA_POSITION:
        return meta, data_state
    if data_state is not None:
        log(
            f"checkpoint {step} stores an older kind of data position; this stage's data "
            "restarts from its beginning (weights, step and kimg are kept)"
        )
    return {**meta, "data_position": DATA_POSITION}, None


def stage_meta(stage: int, *, step: int, nimg: float, init_kimg: float = 0.0) -> dict:
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


def next_stage_meta(meta: dict, stage: int, state) -> dict:
    """The bookkeeping of the stage after `stage`, which starts at `state`'s step and kimg."""
    init_kimg = meta.get("init_kimg", 0.0)
    return stage_meta(stage + 1, step=int(state.step), nimg=float(state.nimg), init_kimg=init_kimg)


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
    return _manifest_problem(step_dir)


def _manifest_problem(step_dir: str) -> str | None:
    """A file of the step that differs from its manifest or is missing (None: no manifest,
    or every file as written)."""
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


def export_model(workdir: str, state: TrainState, network_kwargs: dict, kind: str, source, log):
    """The EMA network of `state` as the model directory workdir/model (replaced if there),
    with `source` (how it was trained) in its network.json; returns the directory's path.
    Every process calls it (Orbax writes collectively)."""
    model_dir = os.path.abspath(os.path.join(workdir, "model"))
    log(f"exporting the EMA network to {model_dir}")
    variables = jax.device_get(state.variables(ema=True))
    model_io.save_model(
        model_dir, network_kwargs, variables, source=source, overwrite=True, kind=kind
    )
    return model_dir


def load_training_run(workdir, step: int | None = None, ema: bool = True):
    """(net, variables, step) of a training workdir: its network.json's network (of its kind)
    and the variables of checkpoint `step` (default: the newest intact one), EMA unless
    ema=False.

    A step whose files differ from its checksum manifest or whose state does not load is not
    used: without `step` the next older one is tried (each skipped step named on stderr; the
    workdir is left as it is, since reading it must not change a run that may be going on);
    a given `step` that is damaged raises ValueError naming the file. The state is read without
    a target (the optimizer state's structure depends on the run's config and is not needed);
    the variables are checked against the network."""
    directory = pathlib.Path(workdir) / "checkpoints"
    net = model_io.network_of(workdir)
    steps = [s for s, _ in _step_dirs(str(directory))]
    if step is not None and step not in steps:
        raise ValueError(f"{directory}: no checkpoint step {step} (steps: {steps})")
    candidates = [step] if step is not None else steps[::-1]
    if not candidates:
        raise ValueError(f"{directory}: no checkpoints")
    problems = []
    for candidate in candidates:
        step_dir = directory / str(candidate)
        problem = _manifest_problem(str(step_dir))
        if problem is None:
            try:
                with ocp.StandardCheckpointer() as checkpointer:
                    state = checkpointer.restore(step_dir / "state")
                break
            except Exception as e:  # noqa: BLE001 - TensorStore, Orbax: any failure to load
                problem = f"does not load ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        problems.append(f"step {candidate}: {problem}")
        if step is None:
            print(f"{directory}: checkpoint {problems[-1]}; trying an older one", file=sys.stderr)
    else:
        raise ValueError(f"{directory}: no intact checkpoint ({'; '.join(problems)})")
    variables = {"params": state["ema_params" if ema else "params"], **state["buffers"]}
    model_io.check_variables(net, variables, str(step_dir))
    return net, jax.tree_util.tree_map(jnp.asarray, variables), candidate
