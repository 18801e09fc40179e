"""`pdr-restore` from the checkout: the program is pdr_jax.cli.restore (`--help` there)."""

import sys

from pdr_jax.cli.restore import main

if __name__ == "__main__":
    sys.exit(main())
