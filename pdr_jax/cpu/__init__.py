"""pdr_jax on CPUs: one options record, `CpuOptions`, steers everything CPU-specific.

XLA:CPU (jaxlib 0.10) is slow where a diffusion U-Net spends its time, so on CPU pdr_jax swaps
in faster formulations; each is one field of the record:

- ``conv``: the dense convolutions of `pdr_jax.nn.layers` run through oneDNN
  (`pdr_jax.cpu.onednn`) in float32 (``"f32"``), with bfloat16 operands (``"bf16"``), or as
  XLA's own (``"xla"``). A custom call has no SPMD partitioning rule, so programs over several
  CPU devices keep XLA's.
- ``fast_layers``: EDM's resampling as separable 1-D passes and GroupNorm as one scale and
  shift (`pdr_jax.cpu.fast_layers`) instead of grouped convolutions and group reshapes.
- ``compiler_options``: XLA:CPU hands every convolution (and every convolution gradient) to
  YNNPACK by default, which runs 64-channel layers and gradients on one core; the options keep
  YNNPACK for reductions only (Eigen's multi-threaded convolutions for the rest). Measured on a
  2-core AVX-512 CPU with the `bench-64` DDPM++ (tools/bench.py): training step 2.98 s ->
  2.43 s, weight gradients of four 64-channel 3x3 layers 287 -> 197 ms.

The record is chosen in one place, `options(mode)`, from a mode: the argument, else
``$PDR_CPU_CONV``, else ``auto``. A training run takes its mode from ``config.cpu_conv``
(`resolve_mode`: ``$PDR_CPU_CONV``, when set, overrides it) and records `mode_name` of the
record it got:

=========  =============================================================================
``auto``   ``f32`` in a single-device CPU process, else ``xla``; fast layers and options on
``f32``    oneDNN float32 convolutions; fast layers and options on
``bf16``   oneDNN convolutions with bfloat16 operands (~2x on CPUs with AVX512-BF16)
``xla``    XLA's convolutions; fast layers and options on
``plain``  XLA's defaults everywhere (`NONE`): the "before" of benchmarks, what GPUs/TPUs run
=========  =============================================================================

On GPU/TPU, and where oneDNN is missing (``conv`` falls back to ``xla``) or this jaxlib does
not know the compiler options, the record says so. `jit` compiles a program per record: the
record is part of its cache key (a program traced for one record is never reused for
another), the compiler options go to the compiler, and the layers read it while the program is
traced (`current()`). Changing ``$PDR_CPU_CONV`` between calls therefore compiles a new program
rather than silently reusing the old one. `using(record)` traces code under an explicit record
(tests and benchmarks compare paths that way).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import os

import jax
import jax.numpy as jnp

from pdr_jax.cpu import onednn

ENV = "PDR_CPU_CONV"
MODES = ("auto", "f32", "bf16", "xla", "plain")
CONVS = ("f32", "bf16", "xla")
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


@dataclasses.dataclass(frozen=True)
class CpuOptions:
    """How CPU programs are built (hashable: a compile cache key). The defaults are `NONE`."""

    conv: str = "xla"
    fast_layers: bool = False
    compiler_options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if self.conv not in CONVS:
            raise ValueError(f"CpuOptions.conv={self.conv!r}: expected one of {', '.join(CONVS)}")

    def compiler_options_dict(self) -> dict | None:
        return dict(self.compiler_options) or None


NONE = CpuOptions()  # XLA's defaults: GPU/TPU, and PDR_CPU_CONV=plain on CPU


@functools.cache
def _compiler_options_supported() -> bool:
    try:
        jax.jit(lambda x: x + 1).lower(jnp.float32(0)).compile(
            compiler_options=CPU_COMPILER_OPTIONS
        )
    except (RuntimeError, ValueError, TypeError):  # this jaxlib does not know the option
        return False
    return True


def options(mode: str | None = None) -> CpuOptions:
    """The record for programs of the default backend now, for `mode` (else $PDR_CPU_CONV, else
    "auto"; case-insensitive). A ValueError names the variable and the modes for a bad value."""
    source = "mode" if mode is not None else ENV
    value = (mode if mode is not None else os.environ.get(ENV, "")).strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{source}={value!r}: expected one of {', '.join(MODES)}")
    if value == "plain" or jax.default_backend() != "cpu":
        return NONE
    conv = ("f32" if jax.device_count() == 1 else "xla") if value == "auto" else value
    if not onednn.available():
        conv = "xla"
    compiler = tuple(CPU_COMPILER_OPTIONS.items()) if _compiler_options_supported() else ()
    return CpuOptions(conv=conv, fast_layers=True, compiler_options=compiler)


def resolve_mode(configured: str | None = None) -> str:
    """The mode of a run: $PDR_CPU_CONV when set (an override), else `configured` (e.g.
    config.cpu_conv), else "auto"; lower-case. A ValueError names the source of a bad value."""
    override = os.environ.get(ENV, "").strip()
    source, value = (ENV, override) if override else ("config.cpu_conv", configured or "")
    value = value.strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{source}={value!r}: expected one of {', '.join(MODES)}")
    return value


def mode_name(record: CpuOptions) -> str:
    """The mode that gives `record` here, with "auto" and fallbacks resolved: "plain" for
    `NONE` (and off CPU), else its convolutions ("f32", "bf16" or "xla")."""
    return "plain" if record == NONE else record.conv


_ACTIVE: contextvars.ContextVar[CpuOptions | None] = contextvars.ContextVar(
    "pdr_jax_cpu_options", default=None
)


def current() -> CpuOptions:
    """The record of the code being traced: the enclosing `jit`'s or `using`'s, else options()."""
    active = _ACTIVE.get()
    return options() if active is None else active


@contextlib.contextmanager
def using(record: CpuOptions):
    """Trace under `record`. `jit` programs called inside compile for it (and cache by it); a
    plain `jax.jit` traced inside uses it too, but its cache does not know (call it here only)."""
    token = _ACTIVE.set(record)
    try:
        yield record
    finally:
        _ACTIVE.reset(token)


def jit(fun=None, *, cpu: CpuOptions | None = None, **jit_kwargs):
    """`jax.jit(fun, **jit_kwargs)`, one program per `CpuOptions` record.

    The record is `cpu` if given, else `current()` at each call (inside another program: the
    outer program's, and no compiler options, which JAX refuses on a nested jit). It is traced
    under `using(record)` and compiled with the record's compiler options. Use as `jit(f,
    static_argnames=...)` or as a decorator `@jit(static_argnames=...)`; the wrapper keeps
    `lower` (compile-time and memory inspection) and `clear_cache`.
    """
    if fun is None:
        return functools.partial(jit, cpu=cpu, **jit_kwargs)
    programs = {}

    def program(record: CpuOptions, nested: bool):
        if (record, nested) not in programs:

            @functools.wraps(fun)
            def traced(*args, **kwargs):
                with using(record):
                    return fun(*args, **kwargs)

            compiler = None if nested else record.compiler_options_dict()
            programs[record, nested] = jax.jit(traced, compiler_options=compiler, **jit_kwargs)
        return programs[record, nested]

    @functools.wraps(fun)
    def wrapper(*args, **kwargs):
        leaves = jax.tree_util.tree_leaves((args, kwargs))
        nested = any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)
        return program(cpu or current(), nested)(*args, **kwargs)

    def clear_cache():
        for compiled in programs.values():
            compiled.clear_cache()

    wrapper.lower = lambda *args, **kwargs: program(cpu or current(), False).lower(*args, **kwargs)
    wrapper.clear_cache = clear_cache
    return wrapper


__all__ = [
    "CONVS",
    "CPU_COMPILER_OPTIONS",
    "ENV",
    "MODES",
    "NONE",
    "CpuOptions",
    "current",
    "jit",
    "mode_name",
    "options",
    "resolve_mode",
    "using",
]
