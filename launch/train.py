"""Train a pdr_jax diffusion prior.

    python launch/train.py --config configs/progressive.py:cpu --workdir runs/demo
    python launch/train.py --config configs/progressive.py --config.optim.lr=2e-4 --workdir runs/x

    # one of 2 processes (run the same command with --process_id=1 on the other host):
    python launch/train.py --config configs/progressive.py --workdir /shared/runs/x \\
        --coordinator_address=host0:12345 --num_processes=2 --process_id=0

Kept short on purpose: flags in, `pdr_jax.train.loop.train(config, workdir)` out. Rerunning the
same command resumes from the workdir's latest checkpoint. A multi-process job can also be
described by JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID or by a cluster that
JAX detects (SLURM): see pdr_jax.train.distributed.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/

from absl import app, flags, logging
from ml_collections import config_flags

from pdr_jax.train import distributed, loop

config_flags.DEFINE_config_file(
    "config",
    None,
    "Training config file, optionally with a preset: configs/progressive.py:cpu",
    lock_config=True,
)
flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics, TensorBoard events and sample grids."
)
flags.DEFINE_string(
    "coordinator_address", None, "Multi-process: host:port of process 0 (all processes alike)."
)
flags.DEFINE_integer("num_processes", None, "Multi-process: the number of processes in the job.")
flags.DEFINE_integer(
    "process_id", None, "Multi-process: this process's id, 0 .. num_processes - 1."
)
flags.DEFINE_float(
    "distributed_timeout", 300.0, "Multi-process: seconds to wait for every process to connect."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # progress is printed by the loop; library INFO is noise
    FLAGS = flags.FLAGS
    distributed.initialize(
        FLAGS.coordinator_address,
        FLAGS.num_processes,
        FLAGS.process_id,
        timeout_s=FLAGS.distributed_timeout,
    )
    loop.train(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
