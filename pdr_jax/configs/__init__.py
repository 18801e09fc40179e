"""Training configs (ml_collections): `base`, `progressive`, `corpus`, `conditional`.

The checkout's `configs/` is this folder, so `--config configs/progressive.py:cpu` names these
files; an installed package keeps them at
`python -c "import pdr_jax.configs as c, os; print(os.path.dirname(c.__file__))"`.
Copy one to edit it: its imports (`from pdr_jax.configs import base`) work from anywhere.
"""
