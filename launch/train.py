"""Train a pdr_jax diffusion prior.

    python launch/train.py --config configs/progressive.py:cpu --workdir runs/demo
    python launch/train.py --config configs/progressive.py --config.optim.lr=2e-4 --workdir runs/x

Kept short on purpose: flags in, `pdr_jax.train.loop.train(config, workdir)` out. Rerunning the
same command resumes from the workdir's latest checkpoint.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from pdr_jax.train import loop  # noqa: E402

config_flags.DEFINE_config_file(
    "config", None, "Training config file, optionally with a preset: configs/progressive.py:cpu", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, TensorBoard events and sample grids.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # progress is printed by the loop; library INFO is noise
    loop.train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
