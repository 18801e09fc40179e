"""Training configs (ml_collections): `base`, `progressive`, `corpus`, `conditional`.

The checkout's `configs/` is this folder, so `--config configs/progressive.py:cpu` names these
files; an installed package keeps them at
`python -c "import pdr_jax.configs as c, os; print(os.path.dirname(c.__file__))"`.
Copy one to edit it: its imports (`from pdr_jax.configs import base`) work from anywhere.
`resolve` is how pdr-train finds them by name (`--config progressive.py:cpu`).
"""

from __future__ import annotations

import os

FOLDER = os.path.dirname(os.path.abspath(__file__))


def resolve(spec: str) -> str:
    """A `--config` value -> the file it names, its preset (after a colon) kept.

    A path that exists is itself; otherwise a file of this package named by its last component
    (`progressive.py:cpu`, `configs/progressive.py:cpu`, `pdr_jax.configs/progressive.py:cpu` from
    any folder). FileNotFoundError, one line naming this folder, when neither exists.
    """
    path, colon, preset = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if os.path.sep in preset or preset.endswith(".py"):  # the colon was part of the path
        path, colon, preset = spec, "", ""
    if os.path.isfile(path):
        return spec
    names = sorted(n for n in os.listdir(FOLDER) if n.endswith(".py") and n != "__init__.py")
    if os.path.basename(path) in names:
        return os.path.join(FOLDER, os.path.basename(path)) + colon + preset
    raise FileNotFoundError(
        f"--config {spec}: no such file, and no config of that name in the installed configs "
        f"({FOLDER}: {', '.join(names)})"
    )
