"""EDM state_dict <-> Flax variables: a name lookup plus NCHW -> NHWC kernel transposes.

Every Flax leaf path joined with "." is the EDM state_dict key (see pdr_jax/nn/unets.py):
``params/model/enc.64x64_block0/conv0/weight`` <-> ``model.enc.64x64_block0.conv0.weight``.
EDM's ``resample_filter`` buffers are derived from the configuration in pdr_jax; they are
checked against it rather than stored. Other buffers (NCSN++'s Fourier ``freqs``, iDDPM's ``u``)
live in the Flax "buffers" collection under the same names.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax
import jax
import numpy as np

from pdr_jax.nn.layers import resample_kernel


class ConversionError(ValueError):
    """A state_dict does not fit the network: the message names every offending entry."""


def _to_jax_layout(name: str, value: np.ndarray, target_rank: int) -> np.ndarray:
    if value.ndim == 4 and target_rank == 4:  # conv [out, in, kh, kw] -> [kh, kw, in, out]
        return np.transpose(value, (2, 3, 1, 0))
    if value.ndim == 2 and target_rank == 2:  # linear [out, in] -> [in, out]
        return value.T
    return value


def _to_torch_layout(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:
        return np.transpose(value, (3, 2, 0, 1))
    if value.ndim == 2:
        return value.T
    return value


def torch_shape(flax_shape) -> tuple[int, ...]:
    """The torch-layout shape of a Flax leaf shape (conv [kh, kw, in, out] -> [out, in, kh, kw])."""
    flax_shape = tuple(flax_shape)
    if len(flax_shape) == 4:
        return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
    if len(flax_shape) == 2:
        return flax_shape[::-1]
    return flax_shape


def flax_to_torch_names(variables) -> dict[str, tuple[str, ...]]:
    """{EDM key: Flax path (collection first)} for every leaf of `variables`."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
    return {".".join(path[1:]): path for path in flat}


def state_dict_to_variables(
    net, state: Mapping[str, np.ndarray], template=None, *, check_buffers: bool = True
) -> dict:
    """Flax variables for `net` from an EDM state_dict (names as EDM's, torch layout).

    `template`: the variables (or their shapes, e.g. from jax.eval_shape) that give the
    expected names and shapes; by default computed with jax.eval_shape at the net's resolution.
    Raises ConversionError listing missing and unexpected names and shape mismatches.
    """
    if template is None:
        from pdr_jax.precond import init_variables

        template = jax.eval_shape(lambda: init_variables(net, jax.random.key(0)))
    wanted = flax_to_torch_names(template)
    flat_template = flax.traverse_util.flatten_dict(flax.core.unfreeze(template))

    missing = sorted(set(wanted) - set(state))
    unexpected, problems = [], []
    for name in state:
        if name in wanted:
            continue
        if not name.endswith("resample_filter"):  # checked below
            unexpected.append(name)
    if missing or unexpected:
        raise ConversionError(
            "state_dict does not match the network: "
            + (f"missing {len(missing)} parameter(s): {missing}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected {len(unexpected)} entr(y/ies): {unexpected}" if unexpected else "")
        )

    flat = {}
    for name, path in wanted.items():
        expected = tuple(flat_template[path].shape)
        value = _to_jax_layout(name, np.asarray(state[name], np.float32), len(expected))
        if tuple(value.shape) != expected:
            problems.append(
                f"{name}: expected shape {torch_shape(expected)} (torch layout; {expected} in Flax), "
                f"found {tuple(np.shape(state[name]))}"
            )
        flat[path] = value
    if problems:
        raise ConversionError("shape mismatch: " + "; ".join(problems))

    if check_buffers:
        _check_resample_filters(net, state)
    return flax.traverse_util.unflatten_dict(flat)


def _check_resample_filters(net, state) -> None:
    model = getattr(net, "model", net)
    filt = tuple(getattr(model, "resample_filter", (1, 1)))
    for name, value in state.items():
        if name.endswith("resample_filter"):
            # EDM gives every up/down layer of a network the same filter.
            value, expected = np.asarray(value), resample_kernel(filt)[None, None]
            if value.shape != expected.shape or not np.allclose(value, expected):
                raise ConversionError(
                    f"{name}: resample filter {value.shape} differs from outer(f, f)/sum(f)^2 of {filt}"
                )


def variables_to_state_dict(variables) -> dict[str, np.ndarray]:
    """The inverse of state_dict_to_variables (without the derived resample filters), torch layout."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
    return {".".join(path[1:]): _to_torch_layout(np.asarray(v)) for path, v in flat.items()}
