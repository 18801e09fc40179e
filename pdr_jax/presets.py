"""Named presets, plain data without jax: the programs' --help lists them without importing it.

NETWORKS: `pdr_jax.precond.build_network` arguments by name. SAMPLER_PRESETS: EDM's published
sampler settings for `pdr_jax.samplers.sample_with_preset` (NVlabs/edm `example.py` and
its README's generate.py commands).
"""

from __future__ import annotations

from typing import Any

# The shipped models (pdr_jax/models, model_io.resolve_model), the programs' defaults: the
# grayscale prior, the colour prior (3-channel inputs and Bayer mosaics) and the model
# conditioned on the measurement.
DEFAULT_CHECKPOINT = "pdr-gray-default"
DEFAULT_RGB_CHECKPOINT = "pdr-rgb-default"
DEFAULT_CONDITIONAL_CHECKPOINT = "conditional-gray-default"

# Named networks: preconditioner, U-Net variant and its arguments (EDM's train.py presets and
# this project's grayscale 6-D-conditioned priors). `pdr_jax.precond.build_network(name, **overrides)` builds them.
NETWORKS: dict[str, dict[str, Any]] = {
    # EDM CIFAR-10 32x32 (Table 2, config F): DDPM++ ("vp") and NCSN++ ("ve") architectures.
    "edm-cifar10-ddpmpp": dict(
        precond="edm",
        arch="ddpmpp",
        img_resolution=32,
        img_channels=3,
        label_dim=10,
        augment_dim=9,
        dropout=0.13,
    ),
    "edm-cifar10-ncsnpp": dict(
        precond="edm",
        arch="ncsnpp",
        img_resolution=32,
        img_channels=3,
        label_dim=10,
        augment_dim=9,
        dropout=0.13,
    ),
    # EDM FFHQ / AFHQv2 64x64, unconditional DDPM++ with cres 1,2,2,2.
    "edm-ffhq64-ddpmpp": dict(
        precond="edm",
        arch="ddpmpp",
        img_resolution=64,
        img_channels=3,
        channel_mult=(1, 2, 2, 2),
        augment_dim=9,
        dropout=0.05,
    ),
    "edm-afhqv2-64-ddpmpp": dict(
        precond="edm",
        arch="ddpmpp",
        img_resolution=64,
        img_channels=3,
        channel_mult=(1, 2, 2, 2),
        augment_dim=9,
        dropout=0.25,
    ),
    # EDM ImageNet 64x64, class-conditional ADM.
    "edm-imagenet64-adm": dict(
        precond="edm",
        arch="adm",
        img_resolution=64,
        img_channels=3,
        label_dim=1000,
        dropout=0.10,
    ),
    # This project: grayscale priors conditioned on the 6-D physics vector.
    "pdr-gray128": dict(
        precond="edm",
        arch="ddpmpp",
        img_resolution=128,
        img_channels=1,
        label_dim=6,
        model_channels=64,
        channel_mult=(1, 2, 2, 2),
        num_blocks=2,
        attn_resolutions=(16,),
        dropout=0.10,
    ),
    "pdr-gray128-small": dict(
        precond="edm",
        arch="ddpmpp",
        img_resolution=128,
        img_channels=1,
        label_dim=6,
        model_channels=32,
        channel_mult=(1, 2, 2, 2),
        num_blocks=1,
        attn_resolutions=(16,),
        dropout=0.0,
    ),
}


SAMPLER_PRESETS: dict[str, dict] = {
    # Deterministic 18 steps (35 evaluations): EDM's generate.py default, CIFAR-10 32x32.
    "edm-default": dict(num_steps=18),
    # Deterministic 40 steps (79 evaluations): FFHQ and AFHQv2 64x64.
    "edm-ffhq64": dict(num_steps=40),
    # Stochastic, 256 steps (511 evaluations): ImageNet-64 ADM, FID 1.36.
    "edm-imagenet64-stochastic": dict(
        num_steps=256, S_churn=40.0, S_min=0.05, S_max=50.0, S_noise=1.003
    ),
}
