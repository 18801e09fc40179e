"""Multi-process training: `jax.distributed` set up once, from flags, the environment or the cluster.

A job of N processes (one per host, or several on one machine) is described in one of three ways,
in this order of precedence:

1. explicit arguments (launch/train.py: `--coordinator_address`, `--num_processes`,
   `--process_id`);
2. the environment: `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES`,
   `JAX_PROCESS_ID`;
3. a cluster environment that JAX detects itself, recognised here by SLURM with more than one
   task or an Open MPI world of more than one (`SLURM_NTASKS`, `OMPI_COMM_WORLD_SIZE`):
   `jax.distributed.initialize()` with no arguments. Elsewhere (Kubernetes, TPU pods) use 1 or 2.

With none of them the run is a single process and nothing is initialised. On CPU the processes
exchange collectives over gloo (set before the backend starts). A coordinator whose peers never
connect, or a peer whose coordinator never answers, does not hang: after `timeout_s` seconds a
watchdog prints which address, count and id were waited on and ends the process with exit code
1 (JAX's own deadline, a C++ abort, is set later as a backstop). Other start-up failures (a port
that cannot be bound) raise a RuntimeError with the same facts.
"""

from __future__ import annotations

import os
import sys
import threading

import jax

ENV_ADDRESS, ENV_COUNT, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
TIMEOUT_EXIT_CODE = 1


def _cluster_detected() -> bool:
    """A multi-task job of a cluster manager JAX reads (SLURM, Open MPI)."""
    tasks = os.environ.get("SLURM_NTASKS") or os.environ.get("OMPI_COMM_WORLD_SIZE") or "1"
    return int(tasks) > 1


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}: expected an integer") from None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = 300,
) -> bool:
    """Start jax.distributed for this process when a multi-process job is described; True if so.

    Call before anything touches a device. Idempotent: a second call (or one after the user's
    own jax.distributed.initialize) does nothing and returns True.
    """
    if jax.distributed.is_initialized():
        return True
    address = coordinator_address or os.environ.get(ENV_ADDRESS) or None
    count = num_processes if num_processes is not None else _env_int(ENV_COUNT)
    index = process_id if process_id is not None else _env_int(ENV_ID)
    if address is None and count is None and index is None:
        if not _cluster_detected():
            return False
        kwargs = {}  # JAX reads the cluster's own variables
    else:
        missing = [
            n for n, v in ((ENV_ADDRESS, address), (ENV_COUNT, count), (ENV_ID, index)) if v is None
        ]
        if missing:
            raise ValueError(
                f"a multi-process job needs the coordinator address, the process count and this "
                f"process's id; missing: {', '.join(missing)} (flags --coordinator_address, "
                "--num_processes, --process_id or those environment variables)"
            )
        if not 0 <= index < count:
            raise ValueError(f"process id {index} outside 0..{count - 1} ({count} processes)")
        kwargs = {"coordinator_address": address, "num_processes": count, "process_id": index}
    where = (
        f"coordinator {address}, {count} processes, this is process {index}"
        if kwargs
        else "cluster-detected job"
    )
    advice = (
        "Check that every process was launched with the same address and count, that the port is "
        "free on the coordinator's host and reachable from the others."
    )

    def give_up():
        print(
            f"jax.distributed did not start within {timeout_s:g} s ({where}). {advice}",
            file=sys.stderr,
            flush=True,
        )
        os._exit(TIMEOUT_EXIT_CODE)  # the connecting thread holds no lock we could release

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used only by CPU devices
    watchdog = threading.Timer(timeout_s, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=int(timeout_s) + 30)
    except Exception as e:
        cause = " ".join(str(e).split())[:400]
        raise RuntimeError(f"jax.distributed did not start ({where}): {cause}. {advice}") from e
    finally:
        watchdog.cancel()
    return True
