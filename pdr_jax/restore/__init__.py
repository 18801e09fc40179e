"""pdr_jax.restore: one restoration path (restoration.py: `restore(prior, y, physics=...)`) and
tiling for images of any size (tiling.py), denoisers made of a prior (composite.py: colour from
a grayscale prior, self-ensembles); the settings records are pdr_jax.settings'."""

from pdr_jax.restore.composite import (
    COLOUR_MODES,
    LumaChromaPrior,
    OpponentPrior,
    SelfEnsemble,
    colour_denoiser,
)
from pdr_jax.restore.restoration import Denoiser, Physics, Prior, Restoration, restore
from pdr_jax.settings import (
    COLOUR_ENSEMBLE,
    COLOUR_SAMPLER,
    CONDITIONAL_SETTINGS,
    DECONVOLUTION_GUIDANCE,
    MOSAIC_SAMPLER,
    GuidanceSettings,
    SamplerSettings,
    TilingSettings,
    auto_kappa,
    parse_kappa,
)

__all__ = [
    "COLOUR_ENSEMBLE",
    "COLOUR_MODES",
    "COLOUR_SAMPLER",
    "CONDITIONAL_SETTINGS",
    "DECONVOLUTION_GUIDANCE",
    "MOSAIC_SAMPLER",
    "Denoiser",
    "GuidanceSettings",
    "LumaChromaPrior",
    "OpponentPrior",
    "Physics",
    "Prior",
    "Restoration",
    "SamplerSettings",
    "SelfEnsemble",
    "TilingSettings",
    "auto_kappa",
    "colour_denoiser",
    "parse_kappa",
    "restore",
]
