"""pdr_jax.nn."""
