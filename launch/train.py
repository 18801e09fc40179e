"""`pdr-train` from the checkout: the program is pdr_jax.cli.train (`--help` there)."""

from pdr_jax.cli.train import run

if __name__ == "__main__":
    run()
