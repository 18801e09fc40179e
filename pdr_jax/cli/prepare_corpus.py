"""Build the training corpus from Debian packages and simulators (pdr_jax.data.corpus_build).

    pdr-corpus                         # -> ~/.cache/pdr_jax/corpus
    pdr-corpus --root /data/corpus --summary

Fetches the packages with apt-get download + dpkg -x into ROOT/packages (nothing installed),
writes ROOT/images/<domain>/*.npy and ROOT/manifest.json (package, path, sha256, licence,
pixels, processing and split of every image). Rerunning skips finished work. A missing package
or an unreadable, reserved or duplicate file is named, skipped and counted.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import time

from tqdm import tqdm

from pdr_jax.cli import finish_parser
from pdr_jax.data import corpus, corpus_build


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--root",
        type=pathlib.Path,
        default=corpus.DEFAULT_ROOT,
        help=f"corpus folder (default {corpus.DEFAULT_ROOT}; $PDR_JAX_CACHE/corpus)",
    )
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.add_argument(
        "--summary", action="store_true", help="print the summary of a built corpus"
    )
    finish_parser(parser, "pdr-corpus", "pdr-corpus --root /data/corpus --summary")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.summary:
        print(corpus.summary_markdown(corpus.load(args.root)))
        return 0
    start = time.perf_counter()
    manifest = corpus_build.build(
        args.root, seed=args.seed, progress=lambda items: tqdm(items, desc="images", unit="file")
    )
    print(corpus.summary_markdown(manifest))
    for item in manifest["skipped"]:
        print(f"  skipped {item['package']} {item['path']}: {item['reason']}")
    print(
        f"corpus at {args.root}: {len(manifest['images'])} images, "
        f"built in {time.perf_counter() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
