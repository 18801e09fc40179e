"""Test-wide JAX settings.

Eight host CPU devices exist in every test process so that sharded code can be checked
in-process; unsharded code still runs on device 0. Most XLA optimisations are disabled:
compiles get much faster and the small test programs barely notice. A persistent compilation
cache (shared by xdist workers and by the subprocesses that tests start, through the
environment) compiles each identical program once per run.
"""

import os
import pathlib

_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax-compilation-cache"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
# Through the environment, so that subprocesses started by tests get the same settings.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "float32")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
# Every program, however quick to compile: the suite's subprocesses (multi-process, SIGKILL,
# single-device runs) compile the same small programs again (tests/train/test_loop.py on a cold
# cache: 394 s with a 1 s threshold, 368 s with none).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402

assert jax.config.read("jax_disable_most_optimizations"), (
    "JAX_DISABLE_MOST_OPTIMIZATIONS was not picked up"
)
