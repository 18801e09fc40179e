"""`pdr-evaluate` from the checkout: the program is pdr_jax.cli.evaluate (`--help` there)."""

import sys

from pdr_jax.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
