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
from collections.abc import Sequence

import chex
import jax.numpy as jnp
import numpy as np

from pdr_jax.settings import DOMAINS


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


def scaled_log_scale(s, spec: ConditioningSpec = DEFAULT_SPEC, *, xp=jnp):
    """log10(s) mapped linearly from spec.log10_scale_range to [-1, 1], clipped."""
    lo, hi = spec.log10_scale_range
    return xp.clip(2 * (xp.log10(s) - lo) / (hi - lo) - 1, -1.0, 1.0)


def conditioning_vector(domain, s, r, b, spec: ConditioningSpec = DEFAULT_SPEC, *, xp=jnp):
    """Conditioning vectors [..., spec.dim] float32.

    domain: a name, or an int index / int array [...] into spec.domains.
    s, r, b: photon scale, read noise and background (electrons), arrays broadcastable to [...].
    xp: the array namespace the formula is computed in: jax.numpy (the default; traceable), or
      numpy for a numpy result on the host without a jax backend (the Grain workers of
      pdr_jax.data.transforms). Both give the same float32 numbers.
    Example: ``conditioning_vector("microscopy", 10.0, 2.0, 0.5)`` -> [6];
    ``conditioning_vector(jnp.array([0, 2]), s, r, b)`` with s, r, b of shape [2] -> [2, 6].
    """
    if isinstance(domain, (str, int, np.integer)):
        domain = spec.domain_index(domain)
    s, r, b = (xp.asarray(v, xp.float32) for v in (s, r, b))
    domain = xp.asarray(domain, xp.int32)
    shape = xp.broadcast_shapes(domain.shape, s.shape, r.shape, b.shape)
    # One-hot as jax.nn.one_hot writes it: an index outside the domains gives zeros.
    domain = xp.broadcast_to(domain, shape)[..., None]
    one_hot = (domain == xp.arange(len(spec.domains))).astype(xp.float32)
    s, r, b = (xp.broadcast_to(v, shape) for v in (s, r, b))
    physics = xp.stack([scaled_log_scale(s, spec, xp=xp), r / s, b / s], axis=-1)
    c = xp.concatenate([one_hot, physics], axis=-1)
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


def label_batch(
    label_dim: int,
    num: int,
    *,
    labels: str | None = None,
    classes: str | None = None,
    domains: str | None = None,
    scale: float = 100.0,
    read_noise: float = 2.0,
    background: float = 0.0,
    seed: int = 0,
    spec: ConditioningSpec = DEFAULT_SPEC,
):
    """[num, label_dim] float32 labels from command-line style options, or None (label_dim 0).

    labels: "v1,v2,..." one explicit vector for all; classes: "3,7" one-hot classes cycled
    (random classes as EDM's generate.py when nothing is given to a class-conditional net);
    domains: "microscopy,astronomy" cycled, with scale/read_noise/background, for networks
    whose labels are the conditioning vector (the default for them: every domain in turn).
    """
    given = labels or classes or domains
    if label_dim == 0:
        if given:
            raise ValueError("the network is unconditional (label_dim 0): drop the label options")
        return None
    cycle = lambda values: [values[i % len(values)] for i in range(num)]
    if labels:
        vector = [float(v) for v in labels.split(",")]
        if len(vector) != label_dim:
            raise ValueError(f"--labels has {len(vector)} values, the network wants {label_dim}")
        return np.tile(np.asarray(vector, np.float32), (num, 1))
    if domains or (not given and label_dim == spec.dim):
        if label_dim != spec.dim:
            raise ValueError(f"--domain needs a {spec.dim}-D label, the network has {label_dim}")
        names = domains.split(",") if domains else list(spec.domains)
        index = np.array([spec.domain_index(d) for d in cycle(names)])
        return np.asarray(
            conditioning_vector(index, scale, read_noise, background, spec), np.float32
        )
    if classes:
        chosen = np.array(cycle([int(c) for c in classes.split(",")]))
    else:
        chosen = np.random.default_rng(seed).integers(0, label_dim, num)
    if np.any((chosen < 0) | (chosen >= label_dim)):
        raise ValueError(f"--class must be in 0..{label_dim - 1}")
    return np.eye(label_dim, dtype=np.float32)[chosen]
