"""The shipped models, as package data: ``pdr_jax.model_io.load_model("pdr-gray-default")``.

Each folder is a model directory (network.json + variables/, see pdr_jax.model_io); its name is
what `load_model`, `--checkpoint` and `train.init_from` accept in place of a path.
"""
