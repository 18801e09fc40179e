"""Test-wide JAX settings.

Eight host CPU devices exist in every test process so that sharded code can be checked
in-process; unsharded code still runs on device 0. Most XLA optimisations are disabled, and
XLA:CPU's older loop emitter stands in for its fusion emitters (below): compiles get much faster
and the small test programs barely notice. A persistent compilation cache (shared by xdist
workers and by the subprocesses that tests start, through the environment) compiles each
identical program once per run.
"""

import os
import pathlib
import subprocess
import sys

_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax-compilation-cache"
# XLA:CPU's fusion emitters (jaxlib 0.10's default) compile the tests' small programs about twice
# as slowly as its older loop emitter (the tiny prior's train step: 5-7 s against 3.5 s on 2
# cores; tests/nn and tests/restore/test_restoration.py: 124 s against 83 s). An XLA that does
# not know the flag aborts the process, so it is tried once, in a subprocess; the answer goes
# down the environment to xdist workers and to the subprocesses of tests, which read it when
# they set XLA_FLAGS of their own.
COMPILE_FLAGS_ENV = "PDR_TESTS_XLA_COMPILE_FLAGS"
if COMPILE_FLAGS_ENV not in os.environ:
    _flag = "--xla_cpu_use_fusion_emitters=false"
    _probe = subprocess.run(
        [sys.executable, "-c", "import jax; jax.devices()"],
        env={**os.environ, "XLA_FLAGS": _flag},
        capture_output=True,
    )
    os.environ[COMPILE_FLAGS_ENV] = _flag if _probe.returncode == 0 else ""
os.environ["XLA_FLAGS"] = " ".join(
    [
        os.environ.get("XLA_FLAGS", ""),
        os.environ[COMPILE_FLAGS_ENV],
        "--xla_force_host_platform_device_count=8",
    ]
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
