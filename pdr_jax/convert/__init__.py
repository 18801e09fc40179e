"""pdr_jax.convert: PyTorch EDM files -> pdr_jax networks, without torch.

* `load_edm_pickle(path_or_url, key="ema")` -> (net, variables): EDM snapshots (.pkl),
  training states and state_dicts (.pt/.pth); `convert_edm` also returns the build arguments.
* `load_edm_training_state(path)`: the training net plus torch Adam's moments.
* `torch_pickle.load(path)`: the restricted, torch-free reader underneath.
* `names`: EDM state_dict names <-> Flax variables.
"""

import importlib

# Imported on first use (PEP 562): `pdr_jax.convert.torch_pickle` and the programs' --help need
# no jax, edm_pickle (the network builder) does.
_WHERE = {
    "DownloadError": "download",
    "ConvertedNetwork": "edm_pickle",
    "convert_edm": "edm_pickle",
    "edm_network_kwargs": "edm_pickle",
    "load_edm_pickle": "edm_pickle",
    "load_edm_training_state": "edm_pickle",
    "ConversionError": "names",
    "TorchFileError": "torch_pickle",
    "UnsafePickleError": "torch_pickle",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'pdr_jax.convert' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pdr_jax.convert.{_WHERE[name]}"), name)


__all__ = [
    "ConversionError",
    "ConvertedNetwork",
    "DownloadError",
    "TorchFileError",
    "UnsafePickleError",
    "convert_edm",
    "edm_network_kwargs",
    "load_edm_pickle",
    "load_edm_training_state",
]
