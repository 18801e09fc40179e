"""A colour prior whose exact denoiser is known, for the mosaic tests (tests/restore), and
its luminance (L = (R + G + B) / 3) as a grayscale prior of the same form.

Every image is one colour u ~ N(m, S) plus small independent pixel deviations, x = u + e,
e ~ N(0, eps^2 I) per pixel and channel (model space). Given x_t = x + sigma n over N pixels,
E[u | x_t] = m + S (S + v / N I)^-1 (mean(x_t) - m) with v = eps^2 + sigma^2, and
D(x_t) = E[u | x_t] + eps^2 / v (x_t - E[u | x_t]).
"""

import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

MEAN = np.array([0.0, 0.0, 0.0], np.float32)  # model space
COV = np.array([[0.4, 0.1, 0.0], [0.1, 0.4, 0.1], [0.0, 0.1, 0.4]], np.float32)
EPS = 0.02


def _denoiser(mean, cov, eps, x, sigma):
    sigma = jnp.reshape(jnp.asarray(sigma, jnp.float32), (-1, 1, 1, 1))
    v = eps**2 + jnp.square(sigma)
    n = x.shape[1] * x.shape[2]
    x_bar = jnp.mean(x, axis=(1, 2))  # [B, 3]
    eye = jnp.eye(cov.shape[0])
    gain = cov @ jnp.linalg.inv(cov[None] + (v[:, :, 0, 0] / n)[:, :, None] * eye)
    u = mean + jnp.einsum("bij,bj->bi", gain, x_bar - mean)
    u = u[:, None, None, :]
    return u + eps**2 / v * (x - u)


class ColourPrior:
    """The one-colour Gaussian prior's exact denoiser as a pdr_jax.restore.Denoiser."""

    img_resolution, img_channels, downsampling, model_channels = 8, 3, 1, 1
    mean, cov, eps = MEAN, COV, EPS

    def sampler_args(self, physics, rows):
        del physics, rows
        return {
            "denoise_fn": Partial(
                _denoiser, jnp.asarray(self.mean), jnp.asarray(self.cov), self.eps
            ),
            "sigma_min": 0.002,
            "sigma_max": 80.0,
            "round_sigma": None,
        }

    def conditioning_image(self, y, physics):
        del y, physics


LUMINANCE = np.full((1, 3), 1 / 3, np.float32)


class LuminancePrior(ColourPrior):
    """The same images' luminance: one level u_L ~ N(w m, w S w^T) plus deviations of std
    EPS / sqrt(3), w = (1/3, 1/3, 1/3)."""

    img_channels = 1
    mean, cov, eps = LUMINANCE @ MEAN, LUMINANCE @ COV @ LUMINANCE.T, EPS / np.sqrt(3)
