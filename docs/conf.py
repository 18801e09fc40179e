"""Sphinx configuration of the pdr_jax documentation.

Build: python -m sphinx -W --keep-going docs docs/_build/html (from the checkout). The guide
and results pages are Markdown (myst-parser); the API reference is generated from the
docstrings (autodoc + autosummary; docs/api.md lists the modules). The Python examples of the
guide run under the doctest builder: python -m sphinx -b doctest docs docs/_build/doctest.
"""

import os
import pathlib
import re
import sys

from sphinx import addnodes

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's pdr_jax, also where another one is installed

# Fast compiles of the doctests' small programs, as in the test suite (tests/conftest.py).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import pdr_jax  # noqa: E402

project = "pdr_jax"
author = "the pdr_jax authors"
release = version = pdr_jax.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Markdown: $...$ maths, heading anchors for links such as results.md#colour-photographs.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 4

# The docstrings are plain text: `name` is code, not a cross-reference to resolve.
default_role = "literal"

# API reference: one generated page per module listed in api.md (into docs/_api, not committed).
autosummary_generate = True
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "description"
autodoc_class_signature = "separated"
# Type names that annotations leave unresolved and that a package re-exports, so the API pages
# document them twice (pdr_jax.restore.Physics and pdr_jax.restore.restoration.Physics) and a
# link to the bare name has two targets: canonical_type_targets below points it at the defining
# module. Unresolved: imported under TYPE_CHECKING (Physics), or in a class with another such
# annotation, whose annotations autodoc then all shows as written (ImageMeta in Measurement).
CANONICAL_TYPES = {
    "Physics": "pdr_jax.restore.restoration.Physics",
    "ImageMeta": "pdr_jax.io.meta.ImageMeta",
}

# The doctest builder runs the guide's ```{testcode}``` blocks from the checkout's root.
doctest_global_setup = f"""
import os
os.chdir({str(ROOT)!r})
"""

html_theme = "alabaster"
html_title = f"pdr_jax {release}"
html_static_path = []


LIST_ITEM = re.compile(r"^([-*+]|\d+\.|#\.)\s")


def literal_blocks(app, what, name, obj, options, lines):
    """Show the indented blocks of the plain-text docstrings (commands, formulas, aligned
    tables) as literal blocks: each one that follows an unindented line that is not a list
    item, with or without a blank line before it, gets a "::" of its own (removed from the
    output) and blank lines around it."""
    out, in_block, previous = [], False, ""
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if in_block and line.strip() and indent == 0:
            in_block = False
            if out and out[-1].strip():
                out.append("")
        starts_block = (
            not in_block
            and line.strip()
            and indent > 0
            and previous
            and not previous.startswith(" ")
            and not LIST_ITEM.match(previous)
            and not previous.rstrip().endswith("::")
        )
        if starts_block:
            if out and out[-1].strip():
                out.append("")
            out.extend(["::", ""])
            in_block = True
        out.append(line)
        if line.strip():
            previous = line
    lines[:] = out


def canonical_type_targets(app, doctree):
    """Point the Python cross-references to a name of CANONICAL_TYPES at its defining module
    (the shown text stays as written)."""
    for node in doctree.findall(addnodes.pending_xref):
        if node.get("refdomain") == "py" and node.get("reftarget") in CANONICAL_TYPES:
            node["reftarget"] = CANONICAL_TYPES[node["reftarget"]]


def setup(app):
    app.connect("autodoc-process-docstring", literal_blocks)
    app.connect("doctree-read", canonical_type_targets)
