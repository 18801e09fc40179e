"""A pdr_jax.restore.Denoiser made of a plain function, for tests whose prior has a denoiser in
closed form (tests/restore): fn(x [B, H, W, C] model space, sigma scalar | [B]) -> D(x)."""

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
from jax.tree_util import Partial


def shrinkage(x, sigma, *, mean: float, var: float):
    """The exact denoiser of the per-pixel Gaussian prior N(mean, var)."""
    sigma = jnp.reshape(jnp.asarray(sigma, jnp.float32), (-1, 1, 1, 1))
    return mean + var / (var + jnp.square(sigma)) * (x - mean)


@dataclasses.dataclass(frozen=True)
class FunctionPrior:
    """fn as a Denoiser of img_channels channels (a module-level function or a Partial)."""

    fn: Callable
    img_channels: int = 1
    img_resolution: int = 16
    downsampling: int = 1
    model_channels: int = 1

    def sampler_args(self, physics, rows):
        del physics, rows
        return {
            "denoise_fn": Partial(self.fn),
            "sigma_min": 0.002,
            "sigma_max": 80.0,
            "round_sigma": None,
        }

    def conditioning_image(self, y, physics):
        del y, physics
