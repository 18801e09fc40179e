"""pdr_jax.physics."""
