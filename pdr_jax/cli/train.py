"""pdr-train: train a pdr_jax diffusion prior (or a conditional model) from a config.

examples:
  pdr-train --config progressive.py:cpu --workdir runs/demo     # or python launch/train.py
  pdr-train --config progressive.py --config.optim.lr=2e-4 --workdir runs/x
  pdr-train --config my_config.py:cpu --workdir runs/mine       # a copy of an installed config
  # one of 2 processes (the same command with --process_id=1 on the other host):
  pdr-train --config progressive.py --workdir /shared/runs/x \\
      --coordinator_address=host0:12345 --num_processes=2 --process_id=0

--config is a config file with an optional preset after a colon: a path, or the name of an
installed config (base.py, progressive.py, corpus.py, conditional.py: configs/ in the checkout,
$(python -c "import pdr_jax.configs as c, os; print(os.path.dirname(c.__file__))") installed).
Kept short on purpose: flags in, `pdr_jax.train.loop.train(config, workdir)` out. Rerunning the
same command resumes from the workdir's latest checkpoint. A multi-process job can also be
described by JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID or by a cluster that
JAX detects (SLURM): see pdr_jax.train.distributed.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import pdr_jax
from pdr_jax import configs

HELP_FLAGS = ("-h", "--help", "-?", "--helpshort")

config_flags.DEFINE_config_file(
    "config",
    None,
    "Training config file (a path, or an installed config by name), optionally with a preset: "
    "progressive.py:cpu",
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
flags.DEFINE_boolean("version", False, "Print the version and exit.")
_FLAGS_OF_THIS_PROGRAM = (
    "config",
    "workdir",
    "coordinator_address",
    "num_processes",
    "process_id",
    "distributed_timeout",
    "version",
)


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    if FLAGS.version:
        print(f"pdr-train (pdr_jax) {pdr_jax.__version__}")
        return
    missing = [f"--{name}" for name in ("config", "workdir") if FLAGS[name].value is None]
    if missing:
        raise app.UsageError(f"{' and '.join(missing)} required (pdr-train --help)")
    logging.set_verbosity(logging.WARNING)  # progress is printed by the loop; library INFO is noise
    from pdr_jax.train import distributed, loop  # here, not at the top: --help without jax

    distributed.initialize(
        FLAGS.coordinator_address,
        FLAGS.num_processes,
        FLAGS.process_id,
        timeout_s=FLAGS.distributed_timeout,
    )
    from pdr_jax.train.checkpoint import CheckpointsUnusable
    from pdr_jax.train.lock import WorkdirBusy

    try:
        loop.train(FLAGS.config, FLAGS.workdir)
    except (WorkdirBusy, CheckpointsUnusable) as err:  # one line; PDR_JAX_DEBUG=1: traceback
        if os.environ.get("PDR_JAX_DEBUG"):
            raise
        raise SystemExit(f"pdr-train: {err}") from None


def resolve_config_argument(argv: list[str]) -> list[str]:
    """argv with its --config value resolved by pdr_jax.configs.resolve (an installed config by
    name); SystemExit with resolve's one line when it names no file."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        try:
            if arg.startswith("--config="):
                argv[i] = "--config=" + configs.resolve(arg.split("=", 1)[1])
            elif arg == "--config" and i + 1 < len(argv):
                argv[i + 1] = configs.resolve(argv[i + 1])
        except FileNotFoundError as err:
            raise SystemExit(f"pdr-train: {err}") from None
    return argv


def run():
    """The console script: absl's --help prints the main module's docstring, so it is this one."""
    sys.modules["__main__"].__doc__ = __doc__
    for name in _FLAGS_OF_THIS_PROGRAM:  # --help lists the main module's flags: these
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
    if any(arg in HELP_FLAGS for arg in sys.argv[1:]):  # absl's own --help exits 1
        app.usage(shorthelp=True, writeto_stdout=True, exitcode=0)
    app.run(main, argv=resolve_config_argument(sys.argv))


if __name__ == "__main__":
    run()
