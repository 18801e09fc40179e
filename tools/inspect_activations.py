"""`pdr-inspect` from the checkout: the program is pdr_jax.cli.inspect (`--help` there)."""

import sys

from pdr_jax.cli.inspect import main

if __name__ == "__main__":
    sys.exit(main())
