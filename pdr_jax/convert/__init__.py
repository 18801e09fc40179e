"""pdr_jax.convert."""
