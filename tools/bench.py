"""`pdr-bench` from the checkout: the program is pdr_jax.cli.bench (`--help` there)."""

import sys

from pdr_jax.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
