"""pdr_jax: physics-guided diffusion restoration of low-light images in JAX/Flax."""

__version__ = "0.1.0"
