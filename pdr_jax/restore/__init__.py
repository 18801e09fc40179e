"""pdr_jax.restore."""
