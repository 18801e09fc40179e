"""A network on disk: ``network.json`` (how to build it) plus ``variables/`` (Orbax checkpoint).

    save_model("/models/edm-cifar10", network_kwargs, variables)
    net, variables = load_model("/models/edm-cifar10")
    D = net.apply(variables, x, sigma, class_labels)

``network.json`` holds::

    {"format": "pdr_jax-model", "version": 1,
     "kind": "prior" | "conditional" (absent: "prior"),
     "network": {build_network keyword arguments; tuples written as lists},
     "source": {free-form: where the weights came from}}

kind "prior" is a pdr_jax.precond denoiser D(x, sigma, labels); kind "conditional" is a
pdr_jax.conditional.ConditionalDenoiser, whose "network" holds `build_conditional`'s arguments
(including num_timesteps, beta_schedule and parameterization: all a sampler needs).

Model kinds (`KINDS`, one `ModelKind` record each) are the one vocabulary of what a network is:
its network.json "kind", the training objective that trains it (config.train.objective), its
builder, the network.json fields that builder needs and the config.model keys it does not take.
`build_network_from_config` turns a config into a network through the same record.

``variables`` is an Orbax StandardCheckpointer checkpoint of the Flax variables dict
("params", and "buffers" where the net has any) in float32. `tools/convert_edm.py` writes this
layout; training, sampling and restoration tools read it with `load_model`. (Training
workdirs are a separate, Orbax CheckpointManager layout.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from pdr_jax import conditional, precond

FORMAT = "pdr_jax-model"
VERSION = 1
NETWORK_FILE = "network.json"
VARIABLES_DIR = "variables"
# build_network arguments that are tuples (JSON has only lists).
_TUPLE_FIELDS = ("channel_mult", "attn_resolutions", "resample_filter")


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """One kind of model: `name` (network.json "kind"), `objective` (config.train.objective of the
    run that trains it), `build` (network.json "network" arguments -> net), `required` (the
    network.json fields `build` needs), `foreign_model_keys` (config.model keys only the other
    kinds' builders take)."""

    name: str
    objective: str
    build: Callable
    required: tuple[str, ...]
    foreign_model_keys: tuple[str, ...]


KINDS = {
    kind.name: kind
    for kind in (
        # A pdr_jax.precond denoiser D(x, sigma, labels), trained with EDM's loss.
        ModelKind(
            name="prior",
            objective="edm",
            build=precond.build_network,
            required=("precond", "arch", "img_resolution", "img_channels"),
            foreign_model_keys=(
                "cond_channels",
                "num_timesteps",
                "beta_schedule",
                "parameterization",
            ),
        ),
        # A pdr_jax.conditional.ConditionalDenoiser, trained on simulated pairs (discrete time).
        ModelKind(
            name="conditional",
            objective="ddpm",
            build=conditional.build_conditional,
            required=("arch", "img_resolution", "img_channels"),
            foreign_model_keys=("precond",),
        ),
    )
}


def kind_of(name: str) -> ModelKind:
    """The ModelKind of a kind name ("prior", "conditional") or of an objective name ("edm",
    "ddpm", config.train.objective); a ValueError lists both vocabularies otherwise."""
    for kind in KINDS.values():
        if name in (kind.name, kind.objective):
            return kind
    names = sorted(KINDS) + sorted(kind.objective for kind in KINDS.values())
    raise ValueError(f"unknown model kind or objective {name!r}: expected one of {names}")


def network_kwargs_from_config(model_cfg, kind: str = "prior") -> dict:
    """The builder's keyword arguments from config.model: everything but dtype, remat and the
    keys only the other kinds' builders take (configs/base.py declares all). kind: a kind or
    objective name (kind_of)."""
    drop = ("dtype", "remat", *kind_of(kind).foreign_model_keys)
    kwargs = {k: v for k, v in model_cfg.items() if k not in drop}
    return {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in kwargs.items()}


def build_network_from_config(model_cfg, kind: str = "prior"):
    """(net, network_kwargs) of the kind's builder (a kind or objective name), with the
    configured compute dtype and rematerialisation."""
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[model_cfg.dtype]
    kwargs = network_kwargs_from_config(model_cfg, kind)
    return kind_of(kind).build(**kwargs, dtype=dtype, remat=model_cfg.remat), kwargs


class ModelFormatError(ValueError):
    """A model directory is missing or malformed: the message names the file and field."""


def _json_value(value):
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value


def _variable_shapes(net) -> Any:
    return jax.eval_shape(lambda: precond.init_variables(net, jax.random.key(0)))


def _leaf_shapes(tree) -> dict[str, tuple]:
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(leaf))
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _listed(items: list, limit: int = 10) -> str:
    return str(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_variables(net, variables, where: str, expected: dict | None = None) -> None:
    """Same paths and shapes as the network's own variables, or a ModelFormatError naming them.
    expected: the network's _leaf_shapes when the caller has them already."""
    expected = _leaf_shapes(_variable_shapes(net)) if expected is None else expected
    found = _leaf_shapes(variables)
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    shapes = [
        f"{k}: expected {expected[k]}, found {found[k]}"
        for k in sorted(expected)
        if k in found and expected[k] != found[k]
    ]
    if missing or unexpected or shapes:
        raise ModelFormatError(
            f"{where}: variables do not fit the network: missing {_listed(missing)}, "
            f"unexpected {_listed(unexpected)}, shape mismatches {_listed(shapes)}"
        )


def adapt_image_channels(net, variables, channels: int, where: str):
    """`variables` of a network like `net` but for another number of image channels, made to fit
    `net`: the variables' network has `channels` image channels, `net` net.model.in_channels. The
    convolutions that read the image (a kernel's input axis) and write it (a kernel's
    output axis and its bias) adapted, everything else copied.

    From C to k C channels (gray -> RGB: k = 3) an input kernel is repeated k times over its
    input axis and divided by k, an output kernel and bias repeated over their output axis, so
    that the new network maps the image repeated k times to its own output repeated k times:
    a gray prior starts as a prior of gray colour images. From k C to C the input kernels are
    summed and the outputs averaged over the k copies. Raises ModelFormatError (as
    check_variables) for any other difference.
    """
    expected = _leaf_shapes(_variable_shapes(net))
    flat, treedef = jax.tree_util.tree_flatten_with_path(variables)
    adapted = []
    for path, value in flat:
        value = np.asarray(value)
        want = expected.get("/".join(str(getattr(k, "key", k)) for k in path))
        if want is not None and len(want) == value.ndim:
            value = _adapt_axis(value, want, channels, net.model.in_channels)
        adapted.append(value)
    variables = jax.tree_util.tree_unflatten(treedef, adapted)
    check_variables(net, variables, where, expected)
    return variables


def _adapt_axis(value: np.ndarray, want: tuple, have: int, need: int) -> np.ndarray:
    """value reshaped to `want` along the one axis where it has `have` image channels and want
    `need`: an input kernel axis (-2 of a 4-D kernel) repeated and divided, or summed; an output
    axis repeated, or averaged. Unchanged otherwise (check_variables names any other mismatch)."""
    differing = [a for a in range(value.ndim) if value.shape[a] != want[a]]
    if len(differing) != 1 or (value.shape[differing[0]], want[differing[0]]) != (have, need):
        return value
    axis = differing[0]
    input_axis = value.ndim == 4 and axis == value.ndim - 2
    if need % have == 0:
        repeated = np.concatenate([value] * (need // have), axis=axis)
        return repeated * (have / need) if input_axis else repeated
    if have % need == 0:
        copies = np.stack(np.split(value, have // need, axis=axis))
        return copies.sum(0) if input_axis else copies.mean(0)
    return value


def save_model(
    directory,
    network_kwargs: dict,
    variables,
    *,
    source: Mapping | None = None,
    overwrite: bool = False,
    kind: str = "prior",
) -> None:
    """Write `directory`/network.json and `directory`/variables.

    `network_kwargs`: build_network keyword arguments (precond, arch, img_resolution,
    img_channels, ...). `variables`: the Flax variables of that network (float32 is stored).
    `source`: free-form JSON metadata (e.g. the file converted from). Checks that the variables
    fit the network first. An existing model there is replaced only with `overwrite=True`.
    In a multi-process job every process calls it (the variables are written collectively by
    Orbax; network.json by process 0).
    `kind`: "prior" (build_network arguments) or "conditional" (build_conditional arguments).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    directory = pathlib.Path(os.fspath(directory)).expanduser().absolute()
    json_path = directory / NETWORK_FILE
    if json_path.exists() and not overwrite:
        raise FileExistsError(
            f"{json_path} exists; pass overwrite=True (convert_edm.py: --overwrite) to replace the model"
        )
    network = _json_value(dict(network_kwargs))
    net = KINDS[kind].build(**_network_kwargs(network, json_path, kind))
    check_variables(net, variables, str(directory))

    directory.mkdir(parents=True, exist_ok=True)
    variables = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float32), variables)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / VARIABLES_DIR, variables, force=True)  # ocp.args.StandardSave
        checkpointer.wait_until_finished()
    description = describe(network, kind=kind, source=source or {})
    # allow_nan: EDMPrecond's sigma_max defaults to inf (written as Infinity, read back by json).
    if jax.process_index() == 0:  # in a multi-process job every process saves (Orbax is collective)
        json_path.write_text(json.dumps(description, indent=2, allow_nan=True) + "\n")


def describe(network_kwargs: Mapping, *, kind: str = "prior", source: Mapping | None = None):
    """The network.json record of a network (JSON values): format, version, kind (written
    unless "prior", which older readers assume), network, and source when given."""
    description = {"format": FORMAT, "version": VERSION}
    if kind != "prior":
        description["kind"] = kind
    description["network"] = _json_value(dict(network_kwargs))
    if source is not None:
        description["source"] = _json_value(dict(source))
    return description


def _network_kwargs(network, json_path, kind: str = "prior") -> dict:
    if not isinstance(network, dict):
        raise ModelFormatError(
            f"{json_path}: field 'network' must be an object of build_network arguments"
        )
    kwargs = dict(network)
    for key in _TUPLE_FIELDS:
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    for key in KINDS[kind].required:
        if key not in kwargs:
            raise ModelFormatError(f"{json_path}: field 'network.{key}' is missing")
    return kwargs


def shipped_models() -> list[str]:
    """Names of the models that come with the package (``pdr_jax/models/*``)."""
    root = resources.files("pdr_jax.models")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / NETWORK_FILE).is_file())


def resolve_model(path_or_name) -> pathlib.Path:
    """The model directory meant by `path_or_name`: an existing path as given, else the name of
    a shipped model ("pdr-gray-default"; see shipped_models()). A path that does not exist and
    is no shipped name is returned unchanged, for the caller's "missing" error to name it."""
    path = pathlib.Path(os.fspath(path_or_name)).expanduser()
    if path.exists() or os.sep in str(path_or_name) or str(path_or_name) not in shipped_models():
        return path
    shipped = resources.files("pdr_jax.models") / str(path_or_name)
    if not isinstance(shipped, pathlib.Path):  # a zipped install: Orbax reads real files only
        raise ModelFormatError(
            f"shipped model {path_or_name!r} is inside an archive ({shipped}); install unzipped"
        )
    return shipped


def read_network_json(directory) -> dict:
    """The parsed and checked ``network.json`` of a model directory (or a shipped model's name)."""
    directory = resolve_model(directory)
    json_path = directory / NETWORK_FILE
    if not json_path.is_file():
        raise ModelFormatError(f"{json_path}: missing (is {directory} a pdr_jax model directory?)")
    try:
        description = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{json_path}: invalid JSON ({exc})") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        found = description.get("format") if isinstance(description, dict) else description
        raise ModelFormatError(f"{json_path}: field 'format' is {found!r}, expected {FORMAT!r}")
    if description.get("version") != VERSION:
        raise ModelFormatError(
            f"{json_path}: field 'version' is {description.get('version')!r}, expected {VERSION}"
        )
    kind = description.get("kind", "prior")
    if kind not in KINDS:
        raise ModelFormatError(
            f"{json_path}: field 'kind' is {kind!r}, expected one of {sorted(KINDS)}"
        )
    _network_kwargs(description.get("network"), json_path, kind)
    return description


def network_of(directory):
    """The network that a directory's ``network.json`` describes (a model directory, or a
    training workdir, which has one too), built by its kind's builder; ModelFormatError names
    the file and field when it does not build."""
    directory = resolve_model(directory).absolute()
    json_path = directory / NETWORK_FILE
    description = read_network_json(directory)
    kind = description.get("kind", "prior")
    kwargs = _network_kwargs(description["network"], json_path, kind)
    try:
        return KINDS[kind].build(**kwargs)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFormatError(
            f"{json_path}: field 'network' does not build a network ({exc})"
        ) from None


def load_model(directory):
    """(net, variables) from a directory written by `save_model` (or tools/convert_edm.py), or
    from a shipped model by name: ``load_model("pdr-gray-default")`` (see shipped_models()).

    Rebuilds the network with pdr_jax.precond.build_network (kind "prior") or
    pdr_jax.conditional.build_conditional (kind "conditional"; `net.betas()` and
    `net.parameterization` then describe its sampler) and restores the variables
    (float32 arrays) against jax.eval_shape of the network's init as the target. Raises
    ModelFormatError naming network.json and the field when the description is missing or bad.
    Only model directories are read; a training workdir's checkpoints are read by
    pdr_jax.train.checkpoint.load_training_run.
    """
    directory = resolve_model(directory).absolute()
    net = network_of(directory)
    target = _variable_shapes(net)
    if not (directory / VARIABLES_DIR).is_dir():
        raise ModelFormatError(
            f"{directory / VARIABLES_DIR}: missing (the Orbax checkpoint of the variables)"
        )
    with ocp.StandardCheckpointer() as checkpointer:
        variables = checkpointer.restore(
            directory / VARIABLES_DIR, target
        )  # ocp.args.StandardRestore
    return net, variables
