"""`pdr-corpus` from the checkout: the program is pdr_jax.cli.prepare_corpus (`--help` there)."""

import sys

from pdr_jax.cli.prepare_corpus import main

if __name__ == "__main__":
    sys.exit(main())
