"""EDM's published sampler settings as named presets for `pdr_jax.samplers.edm_sampler`.

    images = sample_with_preset(net, variables, latents, labels, key=key,
                                preset="edm-imagenet64-stochastic")

The values are those that NVlabs/edm `example.py` passes for its pre-trained networks (and its
README's generate.py commands). Every preset keeps EDM's defaults sigma_min 0.002,
sigma_max 80 and rho 7 (clamped to the network's range) and the Heun solver; pass them as
overrides to change them.
"""

from __future__ import annotations

import jax

from pdr_jax import samplers
from pdr_jax.presets import SAMPLER_PRESETS


def sample_with_preset(
    net,
    variables,
    latents,
    class_labels=None,
    *,
    key=None,
    preset: str = "edm-default",
    **overrides,
) -> jax.Array:
    """EDM's sampler with a named preset's settings; `overrides` replace single settings.

    Args:
      net, variables: a `pdr_jax.precond` network and its variables.
      latents: [B, H, W, C] float32 standard normal.
      class_labels: [B, label_dim] float32 or None.
      key: PRNG key for the churn noise (needed when the preset has S_churn > 0).
      preset: a key of SAMPLER_PRESETS.
      overrides: any `edm_sampler` keyword, e.g. num_steps=8 for a quick look.

    Returns:
      [B, H, W, C] float32 samples.
    """
    if preset not in SAMPLER_PRESETS:
        raise KeyError(f"unknown sampler preset {preset!r}; known: {sorted(SAMPLER_PRESETS)}")
    settings = {**SAMPLER_PRESETS[preset], **overrides}
    network_args = samplers.network_sampler_args(
        net,
        variables,
        class_labels,
        sigma_min=settings.pop("sigma_min", 0.002),
        sigma_max=settings.pop("sigma_max", 80.0),
    )
    return samplers.edm_sampler(latents=latents, key=key, **network_args, **settings)
