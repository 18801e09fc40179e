"""The command-line programs, installed as console scripts (pyproject.toml, [project.scripts]).

    pdr-train     pdr_jax.cli.train           train a prior (or a conditional model) from a config
    pdr-restore   pdr_jax.cli.restore         restore noisy images (TIFF, FITS, PNG, RAW, .npy)
    pdr-convert   pdr_jax.cli.convert         EDM pickle -> pdr_jax model directory
    pdr-sample    pdr_jax.cli.sample          samples of a model or a training run
    pdr-evaluate  pdr_jax.cli.evaluate        the benchmark against GAT+BM3D and NLM
    pdr-inspect   pdr_jax.cli.inspect         named U-Net activations
    pdr-bench     pdr_jax.cli.bench           speed and memory figures
    pdr-corpus    pdr_jax.cli.prepare_corpus  build the offline training corpus

`tools/*.py` and `launch/train.py` in the checkout are the same programs (thin entry points).
Every program has `--help` with an example and `--version`.
"""

from __future__ import annotations

import argparse

import pdr_jax


def finish_parser(parser: argparse.ArgumentParser, *examples: str) -> argparse.ArgumentParser:
    """Name the program after its console script (the first word of the first example), and add
    `--version` and an "examples" epilog (kept verbatim) to its parser."""
    parser.prog = examples[0].split()[0]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    parser.epilog = f"{parser.epilog}\n\n{epilog}" if parser.epilog else epilog
    parser.add_argument(
        "--version", action="version", version=f"{parser.prog} (pdr_jax) {pdr_jax.__version__}"
    )
    return parser
