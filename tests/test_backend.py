"""pdr_jax.backend: CPU compiler options are applied, change nothing but speed, and jit keeps its API."""

import re

import jax
import jax.numpy as jnp
import numpy as np

from pdr_jax import backend


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
    if backend._cpu_options_supported():
        assert backend.compiler_options() == backend.CPU_COMPILER_OPTIONS
        # XLA's defaults hand this layer's forward and weight-gradient convolutions to YNNPACK;
        # with the options they stay XLA (Eigen) convolutions.
        plain = jax.jit(jax.grad(_conv_loss)).lower(*_args()).compile().as_text()
        text = backend.jit(jax.grad(_conv_loss)).lower(*_args()).compile().as_text()
        assert _library_convolutions(plain) >= 1
        assert _library_convolutions(text) == 0 and " convolution(" in text
    else:
        assert backend.compiler_options() is None


def test_results_equal_plain_jit():
    w, x = _args()
    fast = backend.jit(jax.value_and_grad(_conv_loss))(w, x)
    plain = jax.jit(jax.value_and_grad(_conv_loss))(w, x)
    for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_decorator_form_with_static_arguments():
    @backend.jit(static_argnames=("power",))
    def f(x, *, power):
        return x**power

    assert f.__name__ == "f"
    np.testing.assert_allclose(f(jnp.arange(4.0), power=3), [0.0, 1.0, 8.0, 27.0])
    assert f.lower(jnp.arange(4.0), power=2).compile()(jnp.arange(4.0))[3] == 9.0


def test_nested_inside_another_jit():
    """JAX refuses compiler options on a nested jit: there the wrapper is a plain jax.jit."""
    inner = backend.jit(lambda w, x: _conv_loss(w, x) * 2.0)
    w, x = _args()
    outer = jax.jit(lambda w, x: inner(w, x) + 1.0)
    np.testing.assert_allclose(outer(w, x), 2.0 * _conv_loss(w, x) + 1.0, rtol=1e-5)
