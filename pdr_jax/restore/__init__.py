"""pdr_jax.restore: one restoration path (restoration.py: `restore(prior, y, physics=...)`) and
tiling for images of any size (tiling.py); the settings records are pdr_jax.settings'."""

from pdr_jax.restore.restoration import Denoiser, Physics, Prior, Restoration, restore
from pdr_jax.settings import (
    CONDITIONAL_SETTINGS,
    DECONVOLUTION_GUIDANCE,
    GuidanceSettings,
    SamplerSettings,
    TilingSettings,
    auto_kappa,
    parse_kappa,
)

__all__ = [
    "CONDITIONAL_SETTINGS",
    "DECONVOLUTION_GUIDANCE",
    "Denoiser",
    "GuidanceSettings",
    "Physics",
    "Prior",
    "Restoration",
    "SamplerSettings",
    "TilingSettings",
    "auto_kappa",
    "parse_kappa",
    "restore",
]
