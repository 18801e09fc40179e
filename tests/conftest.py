"""Test-wide JAX settings.

Eight host CPU devices exist in every test process so that sharded code can be checked
in-process; unsharded code still runs on device 0. Most XLA optimisations are disabled:
compiles get much faster and the small test programs barely notice.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)
jax.config.update("jax_default_matmul_precision", "float32")
