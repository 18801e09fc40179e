"""`pdr-sample` from the checkout: the program is pdr_jax.cli.sample (`--help` there)."""

import sys

from pdr_jax.cli.sample import main

if __name__ == "__main__":
    sys.exit(main())
