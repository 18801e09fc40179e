"""pdr_jax.cpu: the options record is chosen in one place, keys the compiled programs, its
compiler options change nothing but speed, and jit keeps jax.jit's API."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdr_jax import cpu
from pdr_jax.cpu import onednn
from pdr_jax.nn import layers


def _conv_loss(w, x):
    y = jax.lax.conv_general_dilated(
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jnp.sum(jnp.sin(y) * jnp.mean(y, axis=(0, 1, 2)))


def _args():
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 32))
    w = 0.1 * jax.random.normal(jax.random.key(1), (3, 3, 32, 32))
    return w, x


def _library_convolutions(text: str) -> int:
    """Convolutions that XLA:CPU handed to a library fusion (kind=kCustom) in compiled HLO text."""
    bodies = {}
    for block in text.split("\n\n"):
        head = re.match(r"%?([\w.\-]+) ", block.strip().split("\n", 1)[0])
        if head:
            bodies[head.group(1)] = block
    return sum(
        "convolution(" in bodies.get(n, "")
        for n in re.findall(r"kind=kCustom, calls=%([\w.\-]+)", text)
    )


def test_cpu_options_are_used_when_this_jaxlib_knows_them():
    assert jax.default_backend() == "cpu"
    if cpu._compiler_options_supported():
        assert cpu.options().compiler_options_dict() == cpu.CPU_COMPILER_OPTIONS
        # XLA's defaults hand this layer's forward and weight-gradient convolutions to YNNPACK;
        # with the options they stay XLA (Eigen) convolutions.
        plain = jax.jit(jax.grad(_conv_loss)).lower(*_args()).compile().as_text()
        text = cpu.jit(jax.grad(_conv_loss)).lower(*_args()).compile().as_text()
        assert _library_convolutions(plain) >= 1
        assert _library_convolutions(text) == 0 and " convolution(" in text
    else:
        assert cpu.options().compiler_options_dict() is None


def test_results_equal_plain_jit():
    w, x = _args()
    fast = cpu.jit(jax.value_and_grad(_conv_loss))(w, x)
    plain = jax.jit(jax.value_and_grad(_conv_loss))(w, x)
    for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_decorator_form_with_static_arguments():
    @cpu.jit(static_argnames=("power",))
    def f(x, *, power):
        return x**power

    assert f.__name__ == "f"
    np.testing.assert_allclose(f(jnp.arange(4.0), power=3), [0.0, 1.0, 8.0, 27.0])
    assert f.lower(jnp.arange(4.0), power=2).compile()(jnp.arange(4.0))[3] == 9.0


def test_nested_inside_another_jit():
    """JAX refuses compiler options on a nested jit: there the wrapper is a plain jax.jit."""
    inner = cpu.jit(lambda w, x: _conv_loss(w, x) * 2.0)
    w, x = _args()
    outer = jax.jit(lambda w, x: inner(w, x) + 1.0)
    np.testing.assert_allclose(outer(w, x), 2.0 * _conv_loss(w, x) + 1.0, rtol=1e-5)


def test_a_runs_mode_is_the_environment_else_the_config_else_auto(monkeypatch):
    """config.cpu_conv picks a training run's mode; $PDR_CPU_CONV, when set, overrides it."""
    monkeypatch.delenv("PDR_CPU_CONV", raising=False)
    assert cpu.resolve_mode() == cpu.resolve_mode("") == "auto"
    assert cpu.resolve_mode("BF16") == "bf16"
    with pytest.raises(ValueError, match=r"config.cpu_conv='fast': expected one of auto, f32"):
        cpu.resolve_mode("fast")
    monkeypatch.setenv("PDR_CPU_CONV", " xla ")
    assert cpu.resolve_mode("bf16") == "xla"
    monkeypatch.setenv("PDR_CPU_CONV", "")  # set but empty: as if unset
    assert cpu.resolve_mode("bf16") == "bf16"
    # The recorded name: the mode with "auto" and fallbacks resolved.
    assert cpu.mode_name(cpu.NONE) == "plain"
    assert (
        cpu.mode_name(cpu.options("f32")) == "f32" and cpu.mode_name(cpu.options("auto")) == "xla"
    )


def test_the_record_follows_the_mode_and_environment(monkeypatch):
    assert onednn.available(), "onednn-cpu-gomp is installed with pdr_jax on Linux x86-64"
    monkeypatch.setenv("PDR_CPU_CONV", "auto")
    assert jax.device_count() == 8  # tests/conftest.py: auto keeps XLA's convolutions here
    assert cpu.options().conv == "xla" and cpu.options().fast_layers
    for value in ("f32", "bf16", "xla"):
        monkeypatch.setenv("PDR_CPU_CONV", value.upper())
        assert cpu.options().conv == value
        assert cpu.options("plain") is cpu.NONE  # an explicit mode wins over the variable
    monkeypatch.setenv("PDR_CPU_CONV", "plain")
    assert cpu.options() == cpu.CpuOptions(conv="xla", fast_layers=False, compiler_options=())
    monkeypatch.setenv("PDR_CPU_CONV", "fp16")
    with pytest.raises(
        ValueError, match=r"PDR_CPU_CONV='fp16': expected one of auto, f32, bf16, xla, plain"
    ):
        cpu.options()
    with pytest.raises(ValueError, match=r"mode='fast': expected one of"):
        cpu.options("fast")
    with pytest.raises(ValueError, match=r"CpuOptions.conv='f16': expected one of f32, bf16, xla"):
        cpu.CpuOptions(conv="f16")


def _conv_layer():
    module = layers.Conv2d(out_channels=8, kernel=3)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    return module, module.init(jax.random.key(1), x), x


def test_the_record_is_part_of_the_cache_key(monkeypatch):
    """A program compiled under one mode is not reused under another: changing PDR_CPU_CONV
    between calls compiles the oneDNN custom call in or out; results agree to float rounding."""
    module, variables, x = _conv_layer()
    apply = cpu.jit(module.apply)
    outputs = {}
    for mode in ("xla", "f32", "xla", "plain"):
        monkeypatch.setenv("PDR_CPU_CONV", mode)
        text = apply.lower(variables, x).as_text()
        assert ("pdr_onednn_conv" in text) == (mode == "f32"), mode
        outputs[mode] = apply(variables, x)
    np.testing.assert_allclose(outputs["f32"], outputs["xla"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outputs["plain"], outputs["xla"], rtol=1e-5, atol=1e-5)
    # An explicit record wins over the environment, and using() sets it for a block.
    monkeypatch.setenv("PDR_CPU_CONV", "xla")
    f32 = cpu.options("f32")
    assert "pdr_onednn_conv" in cpu.jit(module.apply, cpu=f32).lower(variables, x).as_text()
    with cpu.using(f32):
        assert cpu.current() is f32
        assert "pdr_onednn_conv" in apply.lower(variables, x).as_text()
    assert cpu.current() == cpu.options("xla")


def test_a_nested_program_uses_the_outer_record(monkeypatch):
    module, variables, x = _conv_layer()
    inner = cpu.jit(module.apply)
    monkeypatch.setenv("PDR_CPU_CONV", "xla")
    outer = cpu.jit(lambda v, x: inner(v, x) * 2.0, cpu=cpu.options("f32"))
    assert "pdr_onednn_conv" in outer.lower(variables, x).as_text()
