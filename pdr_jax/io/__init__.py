"""pdr_jax.io: files in and out. The image file readers (readers.py, tiff.py, meta.py)."""
