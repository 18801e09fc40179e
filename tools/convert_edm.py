"""`pdr-convert` from the checkout: the program is pdr_jax.cli.convert (`--help` there)."""

import sys

from pdr_jax.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
