"""pdr_jax.train."""
