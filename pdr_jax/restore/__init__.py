"""pdr_jax.restore: one restoration path (restoration.py: `restore(prior, y, physics=...)`) and
tiling for images of any size (tiling.py), denoisers made of a prior (composite.py: colour from
a grayscale prior, self-ensembles); the settings records are pdr_jax.settings'."""

from pdr_jax.restore.composite import OpponentPrior, SelfEnsemble
from pdr_jax.restore.restoration import Denoiser, Physics, Prior, Restoration, restore
from pdr_jax.settings import (
    COLOUR_ENSEMBLE,
    COLOUR_SAMPLER,
    CONDITIONAL_SETTINGS,
    DECONVOLUTION_GUIDANCE,
    GuidanceSettings,
    SamplerSettings,
    TilingSettings,
    auto_kappa,
    parse_kappa,
)

__all__ = [
    "COLOUR_ENSEMBLE",
    "COLOUR_SAMPLER",
    "CONDITIONAL_SETTINGS",
    "DECONVOLUTION_GUIDANCE",
    "Denoiser",
    "GuidanceSettings",
    "OpponentPrior",
    "Physics",
    "Prior",
    "Restoration",
    "SamplerSettings",
    "SelfEnsemble",
    "TilingSettings",
    "auto_kappa",
    "parse_kappa",
    "restore",
]
