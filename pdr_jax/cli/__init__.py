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
Every program has `--help` with an example and `--version`. Nothing here imports jax: a
program that imports it only once its arguments are parsed answers --help at once.
"""

from __future__ import annotations

import argparse

import numpy as np

import pdr_jax
from pdr_jax.settings import DOMAINS


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


def add_label_arguments(parser) -> None:
    """The command-line label options shared by pdr-sample and pdr-inspect: --labels | --class |
    --domain (exclusive), with --scale/--read-noise/--background for --domain.
    `label_batch_from_args` turns them into labels."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--labels", help="comma-separated label vector for every image")
    group.add_argument("--class", dest="classes", help="class index or comma-separated indices")
    group.add_argument("--domain", help=f"domain name(s), comma-separated, of {', '.join(DOMAINS)}")
    parser.add_argument("--scale", type=float, default=100.0, help="--domain: photon scale s (e-)")
    parser.add_argument("--read-noise", type=float, default=2.0, help="--domain: read noise r (e-)")
    parser.add_argument("--background", type=float, default=0.0, help="--domain: background b (e-)")


def label_batch_from_args(args, label_dim: int, num: int) -> np.ndarray | None:
    """pdr_jax.physics.conditioning.label_batch from the options of `add_label_arguments` (and
    args.seed)."""
    from pdr_jax.physics.conditioning import label_batch

    return label_batch(
        label_dim,
        num,
        labels=args.labels,
        classes=args.classes,
        domains=args.domain,
        scale=args.scale,
        read_noise=args.read_noise,
        background=args.background,
        seed=args.seed,
    )
