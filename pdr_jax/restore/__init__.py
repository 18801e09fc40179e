"""pdr_jax.restore: one restoration path (restoration.py: `restore(prior, y, physics=...)`) and
tiling for images of any size (tiling.py)."""

from pdr_jax.physics.guidance import GuidanceSettings
from pdr_jax.restore.restoration import (
    CONDITIONAL_SETTINGS,
    Denoiser,
    Physics,
    Prior,
    Restoration,
    SamplerSettings,
    TilingSettings,
    auto_kappa,
    parse_kappa,
    restore,
)

__all__ = [
    "CONDITIONAL_SETTINGS",
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
