"""The conditioning vector that enters the U-Net through EDM's label input.

    c = [domain one-hot (D), scaled log10(s), r / s, b / s]        (D = 3 by default: 6-D)

`s` is the photon scale (electrons per unit clean intensity), `r` the read noise and `b` the
background, both in electrons. log10(s) is mapped linearly from `log10_scale_range` (default
[-1, 4], i.e. 0.1 to 10^4 electrons) to [-1, 1] and clipped. r/s and b/s put the read noise and
background in units of the signal. New domains are added by configuration: pass a
`ConditioningSpec` with more names (the vector grows by one per domain).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

DOMAINS = ("photography", "microscopy", "astronomy")


@dataclasses.dataclass(frozen=True)
class ConditioningSpec:
    """What the conditioning vector encodes: the domain names and the log10(s) range."""

    domains: tuple[str, ...] = DOMAINS
    log10_scale_range: tuple[float, float] = (-1.0, 4.0)

    @property
    def dim(self) -> int:
        return len(self.domains) + 3

    def domain_index(self, domain: str | int) -> int:
        if isinstance(domain, (int, np.integer)):
            if not 0 <= domain < len(self.domains):
                raise ValueError(f"domain index {domain} outside 0..{len(self.domains) - 1}")
            return int(domain)
        if domain not in self.domains:
            raise ValueError(f"unknown domain {domain!r}; expected one of {self.domains}")
        return self.domains.index(domain)


DEFAULT_SPEC = ConditioningSpec()


def scaled_log_scale(s, spec: ConditioningSpec = DEFAULT_SPEC):
    """log10(s) mapped linearly from spec.log10_scale_range to [-1, 1], clipped."""
    lo, hi = spec.log10_scale_range
    return jnp.clip(2 * (jnp.log10(s) - lo) / (hi - lo) - 1, -1.0, 1.0)


def conditioning_vector(domain, s, r, b, spec: ConditioningSpec = DEFAULT_SPEC):
    """Conditioning vectors [..., spec.dim] float32.

    domain: a name, or an int index / int array [...] into spec.domains.
    s, r, b: photon scale, read noise and background (electrons), arrays broadcastable to [...].
    Example: ``conditioning_vector("microscopy", 10.0, 2.0, 0.5)`` -> [6];
    ``conditioning_vector(jnp.array([0, 2]), s, r, b)`` with s, r, b of shape [2] -> [2, 6].
    """
    if isinstance(domain, str) or isinstance(domain, (int, np.integer)):
        domain = spec.domain_index(domain)
    s = jnp.asarray(s, jnp.float32)
    r = jnp.asarray(r, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    domain = jnp.asarray(domain, jnp.int32)
    shape = jnp.broadcast_shapes(domain.shape, s.shape, r.shape, b.shape)
    one_hot = jax.nn.one_hot(jnp.broadcast_to(domain, shape), len(spec.domains), dtype=jnp.float32)
    s, r, b = (jnp.broadcast_to(v, shape) for v in (s, r, b))
    physics = jnp.stack([scaled_log_scale(s, spec), r / s, b / s], axis=-1)
    c = jnp.concatenate([one_hot, physics], axis=-1)
    chex.assert_shape(c, (*shape, spec.dim))
    return c


def unconditional(batch: int, spec: ConditioningSpec = DEFAULT_SPEC):
    """All-zero conditioning [batch, dim]: what label dropout trains the model to handle."""
    return jnp.zeros((batch, spec.dim), jnp.float32)


def describe(c: Sequence[float], spec: ConditioningSpec = DEFAULT_SPEC) -> dict:
    """Invert one vector to {domain, s, r, b} (s from the clipped log-scale feature)."""
    c = np.asarray(c, np.float64)
    if c.shape != (spec.dim,):
        raise ValueError(f"conditioning vector must have shape ({spec.dim},), got {c.shape}")
    lo, hi = spec.log10_scale_range
    s = 10 ** ((c[-3] + 1) / 2 * (hi - lo) + lo)
    n = len(spec.domains)
    domain = spec.domains[int(np.argmax(c[:n]))] if c[:n].any() else None
    return {"domain": domain, "s": float(s), "r": float(c[-2] * s), "b": float(c[-1] * s)}
