"""EDM's preconditioners (Karras et al. 2022, Table 1): a U-Net as a denoiser D(x; sigma, labels).

    D(x; sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x; c_noise(sigma), labels)

Precision boundary: the preconditioner works in float32; the inner U-Net computes in its own
`dtype` (float32 or bfloat16). `c_in * x` is cast to that dtype once on the way in and F is
cast back to float32 once on the way out, as EDMPrecond.forward does with use_fp16.

Call: ``net.apply(variables, x, sigma, class_labels=None, augment_labels=None, train=False,
rngs={"dropout": key})`` with x [B, H, W, C] float32, sigma [B] or a scalar, class_labels
[B, label_dim] (one-hot classes or any continuous vector, e.g. the 6-D conditioning vector).
"""

from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pdr_jax.nn.unets import UNETS
from pdr_jax.presets import NETWORKS

Array = jax.Array


def _prepare(model: nn.Module, x, sigma, class_labels):
    """Float32 x, per-sample sigma [B, 1, 1, 1] and labels [B, label_dim] (zeros when absent)."""
    chex.assert_rank(x, 4)
    x = jnp.asarray(x, jnp.float32)
    batch = x.shape[0]
    sigma = jnp.broadcast_to(jnp.reshape(jnp.asarray(sigma, jnp.float32), (-1,)), (batch,))
    if model.label_dim == 0:
        labels = None
    elif class_labels is None:
        labels = jnp.zeros((batch, model.label_dim), jnp.float32)
    else:
        labels = jnp.reshape(jnp.asarray(class_labels, jnp.float32), (-1, model.label_dim))
        labels = jnp.broadcast_to(labels, (batch, model.label_dim))
    return x, sigma[:, None, None, None], labels


def _run_model(model, x, sigma4, labels, c_in, c_noise, augment_labels, train):
    """F(c_in x; c_noise, labels) with one cast into the model dtype and one back to float32."""
    x_in = (c_in * x).astype(model.dtype)
    c_noise = jnp.broadcast_to(jnp.reshape(c_noise, (-1,)), (x.shape[0],))
    F_x = model(x_in, c_noise, labels, augment_labels=augment_labels, train=train)
    return F_x.astype(jnp.float32)


class EDMPrecond(nn.Module):
    """EDM preconditioning (Karras et al. 2022, Table 1, 'Ours')."""

    model: nn.Module
    sigma_min: float = 0.0
    sigma_max: float = float("inf")
    sigma_data: float = 0.5

    def round_sigma(self, sigma):
        return jnp.asarray(sigma)

    def __call__(self, x, sigma, class_labels=None, augment_labels=None, train: bool = False):
        x, sigma, labels = _prepare(self.model, x, sigma, class_labels)
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / jnp.sqrt(sigma**2 + sd**2)
        c_in = 1 / jnp.sqrt(sd**2 + sigma**2)
        c_noise = jnp.log(sigma) / 4
        F_x = _run_model(self.model, x, sigma, labels, c_in, c_noise, augment_labels, train)
        return c_skip * x + c_out * F_x


def vp_sigma(t, beta_d: float, beta_min: float):
    """VP noise level sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) (Table 1, VP)."""
    return jnp.sqrt(jnp.exp(0.5 * beta_d * t**2 + beta_min * t) - 1)


def vp_sigma_inv(sigma, beta_d: float, beta_min: float):
    """Inverse of `vp_sigma`."""
    return (jnp.sqrt(beta_min**2 + 2 * beta_d * jnp.log(1 + sigma**2)) - beta_min) / beta_d


def _vp_sigma_f32(t: float, beta_d: float, beta_min: float) -> float:
    # EDM evaluates sigma_min/max in float32 torch: exp(1e-6) rounds to 1 + 8 ulps, so
    # sigma_min is 0.0009765625, not 0.001. Reproduce it so the sampler clamps identically
    # (exp in float64 then rounded: numpy's float32 exp can be 1 ulp off here).
    t = np.float32(t)
    arg = np.float32(0.5 * beta_d) * (t * t) + np.float32(beta_min) * t
    return float(np.sqrt(np.float32(np.exp(np.float64(arg))) - np.float32(1)))


class VPPrecond(nn.Module):
    """Variance-preserving preconditioning (Song et al. 2021; Karras et al. 2022, Table 1, VP)."""

    model: nn.Module
    beta_d: float = 19.9
    beta_min: float = 0.1
    M: int = 1000
    epsilon_t: float = 1e-5

    @property
    def sigma_min(self) -> float:
        return _vp_sigma_f32(self.epsilon_t, self.beta_d, self.beta_min)

    @property
    def sigma_max(self) -> float:
        return _vp_sigma_f32(1.0, self.beta_d, self.beta_min)

    def round_sigma(self, sigma):
        return jnp.asarray(sigma)

    def __call__(self, x, sigma, class_labels=None, augment_labels=None, train: bool = False):
        x, sigma, labels = _prepare(self.model, x, sigma, class_labels)
        c_skip = 1
        c_out = -sigma
        c_in = 1 / jnp.sqrt(sigma**2 + 1)
        c_noise = (self.M - 1) * vp_sigma_inv(sigma, self.beta_d, self.beta_min)
        F_x = _run_model(self.model, x, sigma, labels, c_in, c_noise, augment_labels, train)
        return c_skip * x + c_out * F_x


class VEPrecond(nn.Module):
    """Variance-exploding preconditioning (Song et al. 2021; Karras et al. 2022, Table 1, VE)."""

    model: nn.Module
    sigma_min: float = 0.02
    sigma_max: float = 100.0

    def round_sigma(self, sigma):
        return jnp.asarray(sigma)

    def __call__(self, x, sigma, class_labels=None, augment_labels=None, train: bool = False):
        x, sigma, labels = _prepare(self.model, x, sigma, class_labels)
        c_skip = 1
        c_out = sigma
        c_in = 1
        c_noise = jnp.log(0.5 * sigma)
        F_x = _run_model(self.model, x, sigma, labels, c_in, c_noise, augment_labels, train)
        return c_skip * x + c_out * F_x


@functools.lru_cache(maxsize=8)
def iddpm_u(M: int = 1000, C_1: float = 0.001, C_2: float = 0.008) -> np.ndarray:
    """iDDPM's discrete noise levels u_0 > ... > u_M = 0, [M + 1] float32 as EDM computes them."""

    def alpha_bar(j):
        return (
            np.sin(np.float32(0.5 * np.pi) * np.float32(j) / np.float32(M) / np.float32(C_2 + 1))
            ** 2
        )

    u = np.zeros(M + 1, np.float32)
    for j in range(M, 0, -1):
        ratio = np.maximum(alpha_bar(j - 1) / alpha_bar(j), np.float32(C_1))
        u[j - 1] = np.sqrt((u[j] ** 2 + 1) / ratio - 1)
    return u


class iDDPMPrecond(nn.Module):
    """Improved DDPM preconditioning (Nichol & Dhariwal 2021; Karras et al. 2022, Table 1).

    The model predicts 2*C channels (mean and variance in iDDPM); only the first C are used.
    The noise levels `u` live in the "buffers" collection: a checkpoint's stored `u` is
    authoritative (float32 sin differs between CPUs by ulps, and so would a recomputed `u`).
    `round_sigma` therefore needs the variables:
    ``net.apply(variables, sigma, method=net.round_sigma)``.
    """

    model: nn.Module
    C_1: float = 0.001
    C_2: float = 0.008
    M: int = 1000

    def setup(self):
        self.u = self.variable(
            "buffers", "u", lambda: jnp.asarray(iddpm_u(self.M, self.C_1, self.C_2))
        )

    @property
    def sigma_min(self) -> float:
        return float(iddpm_u(self.M, self.C_1, self.C_2)[self.M - 1])

    @property
    def sigma_max(self) -> float:
        return float(iddpm_u(self.M, self.C_1, self.C_2)[0])

    def round_sigma_index(self, sigma):
        """Index of the nearest u_j (first wins ties), computed in float32 as EDM does."""
        sigma = jnp.asarray(sigma, jnp.float32)
        return jnp.argmin(jnp.abs(sigma[..., None] - self.u.value), axis=-1)

    def round_sigma(self, sigma):
        sigma = jnp.asarray(sigma)
        return self.u.value[self.round_sigma_index(sigma)].astype(sigma.dtype)

    def __call__(self, x, sigma, class_labels=None, augment_labels=None, train: bool = False):
        img_channels = x.shape[-1]
        x, sigma, labels = _prepare(self.model, x, sigma, class_labels)
        c_skip = 1
        c_out = -sigma
        c_in = 1 / jnp.sqrt(sigma**2 + 1)
        c_noise = self.M - 1 - self.round_sigma_index(sigma).astype(jnp.float32)
        F_x = _run_model(self.model, x, sigma, labels, c_in, c_noise, augment_labels, train)
        return c_skip * x + c_out * F_x[..., :img_channels]


PRECONDS = {"edm": EDMPrecond, "vp": VPPrecond, "ve": VEPrecond, "iddpm": iDDPMPrecond}

_PRECOND_FIELDS = {
    "edm": ("sigma_min", "sigma_max", "sigma_data"),
    "vp": ("beta_d", "beta_min", "M", "epsilon_t"),
    "ve": ("sigma_min", "sigma_max"),
    "iddpm": ("C_1", "C_2", "M"),
}


def build_network(name: str | None = None, *, dtype=jnp.float32, **kwargs) -> nn.Module:
    """A preconditioned denoiser from a NETWORKS name and/or explicit arguments.

    Arguments: precond ("edm", "vp", "ve", "iddpm"), arch (a key of UNETS), img_resolution,
    img_channels, label_dim, any U-Net field, and the preconditioner's own fields (e.g.
    sigma_data). Explicit arguments override the named configuration.
    """
    if name is not None:
        if name not in NETWORKS:
            raise KeyError(f"unknown network {name!r}; known: {sorted(NETWORKS)}")
        kwargs = {**NETWORKS[name], **kwargs}
    kwargs = dict(kwargs)
    precond = kwargs.pop("precond", "edm")
    arch = kwargs.pop("arch", "ddpmpp")
    if precond not in PRECONDS:
        raise KeyError(f"unknown precond {precond!r}; known: {sorted(PRECONDS)}")
    if arch not in UNETS:
        raise KeyError(f"unknown arch {arch!r}; known: {sorted(UNETS)}")
    img_channels = kwargs.pop("img_channels")
    precond_kwargs = {k: kwargs.pop(k) for k in _PRECOND_FIELDS[precond] if k in kwargs}
    out_channels = img_channels * (2 if precond == "iddpm" else 1)
    model = UNETS[arch](in_channels=img_channels, out_channels=out_channels, dtype=dtype, **kwargs)
    return PRECONDS[precond](model=model, **precond_kwargs)


def init_variables(net: nn.Module, key, batch: int = 1, resolution: int | None = None):
    """Variables of `net` for a [batch, res, res, C] input (C from the U-Net)."""
    model = net.model
    res = resolution or model.img_resolution
    x = jnp.zeros((batch, res, res, model.in_channels), jnp.float32)
    sigma = jnp.ones((batch,), jnp.float32)
    labels = jnp.zeros((batch, model.label_dim), jnp.float32) if model.label_dim else None
    aug = jnp.zeros((batch, model.augment_dim), jnp.float32) if model.augment_dim else None
    return net.init({"params": key}, x, sigma, labels, augment_labels=aug)


def param_count(net: nn.Module) -> int:
    """Number of trainable parameters, from shapes only (jax.eval_shape: nothing is allocated)."""
    shapes = jax.eval_shape(lambda: init_variables(net, jax.random.key(0)))
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes["params"])))
