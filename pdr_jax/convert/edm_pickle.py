"""EDM network files -> pdr_jax networks: snapshots (.pkl), training states and state_dicts (.pt/.pth).

    net, variables = load_edm_pickle("network-snapshot-200000.pkl")   # or an https:// URL
    D = net.apply(variables, x, sigma, class_labels)                   # x [B, H, W, C] float32

The file is read by `torch_pickle` (no torch, nothing executed). A snapshot names its
preconditioner class and records the constructor arguments (``_init_kwargs``), which
`edm_network_kwargs` maps to `pdr_jax.precond.build_network` arguments. A plain state_dict
has no architecture: give a `pdr_jax.precond.NETWORKS` name and/or keyword arguments.
Weights go through `names.state_dict_to_variables`, which lists missing, unexpected and
misshaped entries by name.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import flax
import jax
import numpy as np

from pdr_jax import precond
from pdr_jax.convert import download, torch_pickle
from pdr_jax.convert.names import ConversionError, state_dict_to_variables, torch_shape
from pdr_jax.convert.torch_pickle import PickledModule
from pdr_jax.nn import unets

# EDM class names (training/networks.py) -> build_network's `precond` and `arch`.
EDM_PRECONDS = {"EDMPrecond": "edm", "VPPrecond": "vp", "VEPrecond": "ve", "iDDPMPrecond": "iddpm"}
EDM_MODELS = {"SongUNet": "songunet", "DhariwalUNet": "dhariwalunet"}
# EDM's `model_type` default per preconditioner class.
_DEFAULT_MODEL_TYPE = {
    "EDMPrecond": "DhariwalUNet",
    "VPPrecond": "SongUNet",
    "VEPrecond": "SongUNet",
    "iDDPMPrecond": "DhariwalUNet",
}
# The positional order of every EDM preconditioner constructor.
_EDM_POSITIONAL = ("img_resolution", "img_channels", "label_dim", "use_fp16")
# U-Net fields that build_network derives or that are pdr_jax-only.
_DERIVED_FIELDS = {"parent", "name", "in_channels", "out_channels", "dtype", "remat"}


@dataclasses.dataclass(frozen=True)
class ConvertedNetwork:
    """A network read from an EDM/PyTorch file."""

    net: Any  # pdr_jax preconditioner module, build_network(**network_kwargs)
    network_kwargs: dict  # build_network keyword arguments (precond, arch, img_resolution, ...)
    variables: dict  # Flax variables ("params", and "buffers" for Fourier freqs / iDDPM u), float32
    source: dict  # where it came from: file, key, EDM class names


def _short(class_name) -> str:
    return str(class_name).rsplit(".", 1)[-1]


def _plain(value):
    """JSON-friendly Python values: numpy scalars -> numbers, lists -> tuples."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _accepted_kwargs(precond_name: str, arch: str) -> set[str]:
    unet_fields = {f.name for f in dataclasses.fields(unets.UNETS[arch])} - _DERIVED_FIELDS
    precond_fields = {f.name for f in dataclasses.fields(precond.PRECONDS[precond_name])}
    return unet_fields | (precond_fields - {"model", "parent", "name"}) | {"img_channels"}


def edm_network_kwargs(
    class_name: str, init_kwargs: Mapping, init_args=(), model_class: str | None = None
) -> dict:
    """build_network keyword arguments for an EDM preconditioner and its constructor arguments.

    `class_name`: "EDMPrecond", "VPPrecond", "VEPrecond" or "iDDPMPrecond" (a module prefix such
    as "training.networks." is ignored). `init_kwargs`/`init_args`: the recorded constructor
    arguments (``_init_kwargs``/``_init_args`` in EDM pickles). `model_class`: the class of the
    pickled inner model, checked against ``model_type``. ``use_fp16`` is dropped (pdr_jax picks
    the compute dtype at build time). Raises ConversionError naming an unknown class or argument.
    """
    class_name = _short(class_name)
    if class_name not in EDM_PRECONDS:
        raise ConversionError(
            f"unknown network class {class_name!r}: pdr_jax converts {sorted(EDM_PRECONDS)}"
        )
    if len(init_args) > len(_EDM_POSITIONAL):
        raise ConversionError(
            f"{class_name}: {len(init_args)} positional arguments, expected at most 4"
        )
    kwargs = _plain({**dict(zip(_EDM_POSITIONAL, init_args)), **init_kwargs})
    kwargs.pop("use_fp16", None)
    model_type = _short(kwargs.pop("model_type", _DEFAULT_MODEL_TYPE[class_name]))
    if model_class is not None and _short(model_class) != model_type:
        raise ConversionError(
            f"{class_name}: model_type {model_type!r} but the pickled model is {_short(model_class)!r}"
        )
    if model_type not in EDM_MODELS:
        raise ConversionError(
            f"unknown network class {model_type!r} (model_type of {class_name}): "
            f"pdr_jax converts {sorted(EDM_MODELS)}"
        )
    precond_name, arch = EDM_PRECONDS[class_name], EDM_MODELS[model_type]
    accepted = _accepted_kwargs(precond_name, arch)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConversionError(
            f"{class_name}(model_type={model_type!r}): constructor argument(s) {unknown} have no "
            f"pdr_jax counterpart; known: {sorted(accepted)}"
        )
    missing = sorted({"img_resolution", "img_channels"} - set(kwargs))
    if missing:
        raise ConversionError(f"{class_name}: constructor arguments lack {missing}")
    return {"precond": precond_name, "arch": arch, **kwargs}


# Bounds on a described network, checked before anything is built: EDM's largest networks have
# 4 levels, 4 blocks per level and 256 channels at 512 px; these are several times that.
MAX_LEVELS, MAX_BLOCKS, MAX_CHANNELS, MAX_RESOLUTION = 8, 16, 2048, 4096


def checked_network(kwargs: Mapping, max_bytes: int, where: str):
    """`build_network(**kwargs)`, checked before its parameters exist: levels (len(channel_mult)), blocks, channels and resolution within the
    bounds above, then the parameter count by jax.eval_shape (no arrays) within max_bytes.
    Returns the network; raises ConversionError naming the file and the field."""
    levels = len(kwargs.get("channel_mult") or (1, 2, 2, 2))
    fields = {
        "len(channel_mult)": (levels, MAX_LEVELS),
        "num_blocks": (kwargs.get("num_blocks", 4), MAX_BLOCKS),
        "model_channels": (kwargs.get("model_channels", 128), MAX_CHANNELS),
        "img_resolution": (kwargs.get("img_resolution"), MAX_RESOLUTION),
        "img_channels": (kwargs.get("img_channels"), MAX_CHANNELS),
        "max(channel_mult)": (max(kwargs.get("channel_mult") or (1,)), 64),
    }
    for name, (value, bound) in fields.items():
        if not isinstance(value, (int, np.integer)) or not 0 < value <= bound:
            raise ConversionError(
                f"{where}: {name} = {value!r} is not a positive integer up to {bound}: not a "
                "network pdr_jax builds (refused before building it)"
            )
    net = precond.build_network(**kwargs)
    shapes = jax.eval_shape(lambda: precond.init_variables(net, jax.random.key(0)))
    nbytes = sum(math.prod(leaf.shape) * 4 for leaf in jax.tree_util.tree_leaves(shapes))
    if nbytes > max_bytes:
        raise ConversionError(
            f"{where}: the network its arguments describe has {nbytes // 4:,} parameters "
            f"({nbytes:,} bytes), beyond the budget of {max_bytes:,} bytes (--max-bytes)"
        )
    return net


def _walk(module: PickledModule, prefix: str = ""):
    """(kind, EDM name, array) in torch's order: own parameters, own buffers, then children."""
    state = module.state or {}
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            yield "param", prefix + name, value
    skip = state.get("_non_persistent_buffers_set") or set()
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in skip:
            yield "buffer", prefix + name, value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PickledModule):
            raise ConversionError(
                f"{prefix}{name}: a {type(child).__name__} where a module was expected"
            )
        yield from _walk(child, f"{prefix}{name}.")


def module_state_dict(module: PickledModule) -> dict[str, np.ndarray]:
    """The module's state_dict (EDM names, torch layout), as torch's `state_dict()` orders it."""
    return {name: value for _, name, value in _walk(module)}


def module_parameter_names(module: PickledModule) -> list[str]:
    """EDM names in `module.parameters()` order: the indices of torch optimizer states."""
    # Parameters are interleaved with buffers per module in a state_dict; parameters() visits
    # modules in the same pre-order, so filtering keeps the optimizer's order.
    return [name for kind, name, _ in _walk(module) if kind == "param"]


def _local_file(path, cache_dir, sha256) -> pathlib.Path:
    if download.is_url(path):
        return download.download(path, cache_dir=cache_dir, sha256=sha256)
    path = pathlib.Path(os.fspath(path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return path


def _is_state_dict(obj) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())
    )


def _select(obj, key: str, where: str):
    """(entry, key used) of the file's top-level object."""
    if isinstance(obj, PickledModule) or _is_state_dict(obj):
        return obj, None
    if not isinstance(obj, Mapping):
        raise ConversionError(
            f"{where}: holds a {type(obj).__name__}, expected a dict or a network"
        )
    if key in obj:
        entry, used = obj[key], key
    elif key == "ema" and "net" in obj and "optimizer_state" in obj:  # a training-state file
        entry, used = obj["net"], "net"
    else:
        raise ConversionError(f"{where}: no entry {key!r}; available keys: {list(obj)}")
    if not (isinstance(entry, PickledModule) or _is_state_dict(entry)):
        raise ConversionError(
            f"{where}: entry {used!r} is a {type(entry).__name__}, not a network or a state_dict; "
            f"available keys: {list(obj)}"
        )
    return entry, used


def _strip_prefix(state: Mapping, prefix: str | None, where: str) -> dict:
    if not prefix:
        return dict(state)
    if not any(k.startswith(prefix) for k in state):
        raise ConversionError(
            f"{where}: no state_dict key starts with prefix {prefix!r}; keys: {list(state)[:5]}..."
        )
    return {k.removeprefix(prefix): v for k, v in state.items()}


def _prefix_hint(state: Mapping) -> str:
    heads = {k.split(".", 1)[0] + "." for k in state}
    if len(heads) == 1 and heads != {"model."} and all("." in k for k in state):
        (head,) = heads
        return f" (every key starts with {head!r}: pass prefix={head!r})"
    return ""


def _variables(net, state: Mapping, where: str) -> dict:
    try:
        return state_dict_to_variables(net, state)
    except ConversionError as exc:
        raise ConversionError(f"{where}: {exc}{_prefix_hint(state)}") from None


def _network_from_module(module: PickledModule, overrides: Mapping, where: str, max_bytes: int):
    state = module.state or {}
    model = (state.get("_modules") or {}).get("model")
    try:
        kwargs = edm_network_kwargs(
            module.class_name,
            state.get("_init_kwargs") or {},
            state.get("_init_args") or (),
            model_class=model.class_name if isinstance(model, PickledModule) else None,
        )
    except ConversionError as exc:
        raise ConversionError(f"{where}: {exc}") from None
    kwargs = {**kwargs, **overrides}
    net = checked_network(kwargs, max_bytes, where)
    return net, kwargs, _variables(net, module_state_dict(module), where)


def convert_edm(
    path,
    key: str = "ema",
    *,
    config: str | None = None,
    prefix: str | None = None,
    cache_dir=None,
    sha256: str | None = None,
    max_bytes: int = torch_pickle.DEFAULT_MAX_BYTES,
    **network_kwargs,
) -> ConvertedNetwork:
    """Read an EDM snapshot, training state or PyTorch state_dict as a pdr_jax network.

    `path`: a file, or an http(s) URL downloaded once into the cache (`cache_dir`, else
    $PDR_JAX_CACHE, else ~/.cache/pdr_jax; `sha256` checks it). `key`: the entry of a
    snapshot dict ("ema"; a training-state file's "net" is used when "ema" is absent) or of a
    dict wrapping a state_dict; ignored for a bare state_dict. Snapshots record their
    architecture, and `network_kwargs` override single arguments of it (e.g. dropout).
    State_dicts need `config` (a pdr_jax.precond.NETWORKS name) and/or `network_kwargs`;
    `prefix` (e.g. "module." or "edm_model.") is stripped from their keys first. `max_bytes`
    bounds what the file may allocate (torch_pickle.load). Every failure is a ValueError naming
    the file: TorchFileError for the file itself, ConversionError for its contents.
    """
    where = str(path)
    obj = torch_pickle.load(_local_file(path, cache_dir, sha256), max_bytes=max_bytes)
    try:
        return _convert(obj, key, where, config, prefix, network_kwargs, max_bytes)
    except ConversionError:
        raise
    except (Exception, RecursionError) as exc:
        # A field of the wrong type (img_resolution a string, _init_kwargs a list, ...), a
        # self-containing structure (RecursionError), a backend refusing a shape (RuntimeError).
        raise ConversionError(
            f"{where}: not an EDM network of the expected structure ({type(exc).__name__}: "
            f"{str(exc)[:300]})"
        ) from exc


def _convert(obj, key, where, config, prefix, network_kwargs, max_bytes) -> ConvertedNetwork:
    """convert_edm after the file is read."""
    entry, used_key = _select(obj, key, where)
    source = {"file": where, "key": used_key}
    if isinstance(entry, PickledModule):
        if config is not None or prefix:
            raise ValueError(
                f"{where}: config/prefix apply to state_dict files; this file records its network "
                f"({entry.class_name}); pass keyword arguments to override single arguments"
            )
        net, kwargs, variables = _network_from_module(entry, network_kwargs, where, max_bytes)
        model = entry.state["_modules"]["model"]  # present: the weights converted
        source.update(edm_class=entry.class_name, edm_model_class=model.class_name)
    else:
        if config is None and not network_kwargs:
            raise ConversionError(
                f"{where}: a state_dict records no architecture; pass config=<one of "
                f"{sorted(precond.NETWORKS)}> and/or network keyword arguments"
            )
        if config is not None and config not in precond.NETWORKS:
            raise ConversionError(
                f"{where}: unknown config {config!r}; known: {sorted(precond.NETWORKS)}"
            )
        kwargs = {**(precond.NETWORKS[config] if config else {}), **network_kwargs}
        kwargs = _plain(kwargs)
        net = checked_network(kwargs, max_bytes, where)
        variables = _variables(net, _strip_prefix(entry, prefix, where), where)
        source.update(config=config, prefix=prefix)
    return ConvertedNetwork(net=net, network_kwargs=kwargs, variables=variables, source=source)


def load_edm_pickle(path, key: str = "ema", **kwargs):
    """(net, variables) of an EDM snapshot/training state/state_dict; see `convert_edm`.

    ``net.apply(variables, x, sigma, class_labels)`` with x [B, H, W, C] float32 (NHWC),
    sigma [B] or scalar, class_labels [B, label_dim] gives EDM's D(x; sigma) as [B, H, W, C].
    """
    converted = convert_edm(path, key, **kwargs)
    return converted.net, converted.variables


def _flax_tree(net, state: Mapping[str, np.ndarray], template) -> dict:
    """A params-shaped tree from EDM-named arrays (entries absent from `state` are zeros)."""
    params_template = {"params": template["params"]}
    full = {}
    for path, leaf in flax.traverse_util.flatten_dict(flax.core.unfreeze(params_template)).items():
        name = ".".join(path[1:])
        full[name] = state[name] if name in state else np.zeros(torch_shape(leaf.shape), np.float32)
    return state_dict_to_variables(net, full, params_template, check_buffers=False)["params"]


def load_edm_training_state(
    path,
    *,
    cache_dir=None,
    sha256: str | None = None,
    max_bytes: int = 4 * torch_pickle.DEFAULT_MAX_BYTES,
) -> dict:
    """An EDM ``training-state-*.pt``: the training net and torch Adam's state (`max_bytes`:
    the load's budget, by default 4x a snapshot's: the net, Adam's two moments, their copies).

    Returns a dict with
      "net", "variables", "network_kwargs": the network, as `convert_edm` gives it;
      "param_names": EDM names in ``net.parameters()`` order (the optimizer's indices);
      "optimizer_state": torch's state_dict with names: {"state": {name: {"step": float,
          "exp_avg": array, "exp_avg_sq": array}} (torch layout), "param_groups": [dict with
          "params" as names, lr, betas, eps, ...]};
      "adam": {"step": int, "mu": tree, "nu": tree}: the moments as Flax params trees (zeros
          where a parameter has no state), e.g. for optax.ScaleByAdamState(count, mu, nu).
    """
    where = str(path)
    obj = torch_pickle.load(_local_file(path, cache_dir, sha256), max_bytes=max_bytes)
    if not (isinstance(obj, Mapping) and {"net", "optimizer_state"} <= set(obj)):
        found = list(obj) if isinstance(obj, Mapping) else type(obj).__name__
        raise ConversionError(
            f"{where}: not an EDM training state (keys 'net', 'optimizer_state'); found {found}"
        )
    module, optimizer = obj["net"], obj["optimizer_state"]
    if not isinstance(module, PickledModule):
        raise ConversionError(f"{where}: entry 'net' is a {type(module).__name__}, not a network")
    net, kwargs, variables = _network_from_module(module, {}, where, max_bytes)
    names = module_parameter_names(module)

    def name_of(index):
        if not isinstance(index, int) or not 0 <= index < len(names):
            raise ConversionError(
                f"{where}: optimizer state for parameter index {index!r}; the net has {len(names)}"
            )
        return names[index]

    try:
        per_param = {name_of(i): dict(s) for i, s in optimizer["state"].items()}
        groups = [
            {**g, "params": [name_of(i) for i in g["params"]]} for g in optimizer["param_groups"]
        ]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConversionError(
            f"{where}: optimizer_state is not a torch optimizer state_dict ({exc!r})"
        ) from None
    template = jax.eval_shape(lambda: precond.init_variables(net, jax.random.key(0)))
    moments = {
        m: _flax_tree(net, {n: s[m] for n, s in per_param.items() if m in s}, template)
        for m in ("exp_avg", "exp_avg_sq")
    }
    steps = [float(np.asarray(s["step"])) for s in per_param.values() if "step" in s]
    return {
        "net": net,
        "variables": variables,
        "network_kwargs": kwargs,
        "param_names": names,
        "optimizer_state": {"state": per_param, "param_groups": groups},
        "adam": {
            "step": int(max(steps, default=0)),
            "mu": moments["exp_avg"],
            "nu": moments["exp_avg_sq"],
        },
    }
