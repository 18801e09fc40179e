"""pdr_jax.convert: PyTorch EDM files -> pdr_jax networks, without torch.

* `load_edm_pickle(path_or_url, key="ema")` -> (net, variables): EDM snapshots (.pkl),
  training states and state_dicts (.pt/.pth); `convert_edm` also returns the build arguments.
* `load_edm_training_state(path)`: the training net plus torch Adam's moments.
* `torch_pickle.load(path)`: the restricted, torch-free reader underneath.
* `names`: EDM state_dict names <-> Flax variables.
"""

from pdr_jax.convert.download import DownloadError
from pdr_jax.convert.edm_pickle import (
    ConvertedNetwork,
    convert_edm,
    edm_network_kwargs,
    load_edm_pickle,
    load_edm_training_state,
)
from pdr_jax.convert.names import ConversionError
from pdr_jax.convert.torch_pickle import TorchFileError, UnsafePickleError

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
