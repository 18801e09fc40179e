"""pdr_jax.data."""
