"""Compiler options for the project's compiled programs, chosen by backend when first called.

XLA:CPU (jaxlib 0.10) hands several kinds of fusion to the YNNPACK library by default, among
them every convolution, and YNNPACK runs a convolution of 64 or fewer channels, and every
convolution gradient it is given, on a single core. Its reductions are fast, though, and
XLA's own (Eigen) reductions are slow. So on CPU the hot programs (training step, samplers)
are compiled with `CPU_COMPILER_OPTIONS`: YNNPACK for reductions only, Eigen's multi-threaded
convolutions for the rest. Measured on a 2-core AVX-512 CPU with the `bench-64` DDPM++
(tools/bench.py): training step 2.98 s -> 2.43 s, convolution weight gradients 287 -> 197 ms
for four 64-channel 3x3 layers. Results are the same up to float rounding (tested). (In a
single-device CPU process the dense convolutions themselves go to oneDNN instead:
`pdr_jax.nn.onednn`.)

On GPU/TPU, or where this jaxlib does not know the option (checked once by compiling a tiny
program), no options are passed. `jit` is a drop-in for `jax.jit` (also as a decorator with
keyword arguments) that applies them; inside another jitted function the outer program's
options govern, as for any nested jit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def _cpu_options_supported() -> bool:
    try:
        jax.jit(lambda x: x + 1).lower(jnp.float32(0)).compile(
            compiler_options=CPU_COMPILER_OPTIONS
        )
    except (RuntimeError, ValueError, TypeError):  # this jaxlib does not know the option
        return False
    return True


def compiler_options() -> dict | None:
    """The options for programs compiled for the default backend now (None: XLA's defaults)."""
    if jax.default_backend() != "cpu" or not _cpu_options_supported():
        return None
    return dict(CPU_COMPILER_OPTIONS)


def jit(fun=None, **jit_kwargs):
    """`jax.jit(fun, **jit_kwargs)` with `compiler_options()` of the backend at call time.

    Called with traced arguments (inside another jit, where JAX refuses compiler options) it is
    a plain `jax.jit`. Use as `jit(f, static_argnames=...)` or as a decorator `@jit(static_argnames=...)`. The
    wrapped function keeps `jax.jit`'s `lower` (for compile-time and memory inspection) and
    `clear_cache`.
    """
    if fun is None:
        return functools.partial(jit, **jit_kwargs)
    jitted = {}

    def get():
        backend = jax.default_backend()
        if backend not in jitted:
            jitted[backend] = jax.jit(fun, compiler_options=compiler_options(), **jit_kwargs)
        return jitted[backend]

    nested = jax.jit(fun, **jit_kwargs)

    @functools.wraps(fun)
    def wrapper(*args, **kwargs):
        if any(
            isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((args, kwargs))
        ):
            return nested(*args, **kwargs)  # inside another jit: options are the outer program's
        return get()(*args, **kwargs)

    def clear_cache():
        nested.clear_cache()
        for compiled in jitted.values():
            compiled.clear_cache()

    wrapper.lower = lambda *args, **kwargs: get().lower(*args, **kwargs)
    wrapper.clear_cache = clear_cache
    return wrapper
