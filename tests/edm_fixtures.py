"""Loading the golden EDM fixtures (tests/fixtures/edm, copied from PyTorch EDM runs)."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from pdr_jax.convert.edm_pickle import edm_network_kwargs
from pdr_jax.convert.names import state_dict_to_variables
from pdr_jax.precond import build_network

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "edm"
NETWORK_CASES = [
    "ddpmpp_cond6_gray64",
    "ddpmpp_aug_rgb32",
    "ncsnpp_uncond_rgb32",
    "songunet_skip_rgb32",
    "adm_cond_rgb32",
    "vp_ddpmpp_rgb32",
    "ve_ncsnpp_rgb32",
    "iddpm_adm_rgb32",
]


def nchw_to_nhwc(a):
    return np.transpose(a, (0, 2, 3, 1)) if np.ndim(a) == 4 else a


def load_case(case: str):
    """(meta json, npz arrays) of a fixture case."""
    meta = json.loads((FIXTURES / f"{case}.json").read_text())
    return meta, dict(np.load(FIXTURES / f"{case}.npz"))


def network_from_case(case: str, **overrides):
    """(net, variables, arrays) for a fixture case, weights from its `state/*` entries."""
    meta, arrays = load_case(case)
    kwargs = edm_network_kwargs(
        meta["precond_class"], meta["constructor_kwargs"], model_class=meta["model_class"]
    )
    net = build_network(**{**kwargs, **overrides})
    state = {k[len("state/") :]: v for k, v in arrays.items() if k.startswith("state/")}
    return net, state_dict_to_variables(net, state), arrays
