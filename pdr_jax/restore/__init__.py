"""pdr_jax.restore: likelihood-guided restoration (guided.py) and tiling for large images
(tiling.py, whose `tiled_denoiser` plugs into `restore_with_denoiser`)."""

from pdr_jax.restore.guided import prepare_measurement, restore_image, restore_with_denoiser

__all__ = ["prepare_measurement", "restore_image", "restore_with_denoiser"]
