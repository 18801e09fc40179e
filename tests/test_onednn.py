"""oneDNN convolutions (pdr_jax.cpu.onednn) against lax.conv_general_dilated: values, gradients.

The whole-network check against PyTorch EDM with oneDNN convolutions is in tests/test_precond.py
(`cpu_conv` parametrisation).
"""

import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdr_jax.cpu import onednn

pytestmark = pytest.mark.skipif(
    not onednn.available()
    and not (platform.system() == "Linux" and platform.machine() == "x86_64"),
    reason="oneDNN (onednn-cpu-gomp) is a dependency on Linux x86-64 only",
)

# (batch, size, in, out, kernel, padding): EDM's 3x3 and 1x1 convolutions, a fused-resample
# padding (output larger than input), and a single input channel (the first layer of gray nets).
SHAPES = [(2, 8, 3, 5, 3, 1), (2, 9, 4, 6, 1, 0), (1, 6, 8, 4, 3, 2), (2, 7, 1, 16, 3, 1)]


def _lax_conv(x, w, padding):
    return jax.lax.conv_general_dilated(
        x,
        w,
        (1, 1),
        ((padding, padding),) * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )


def _operands(shape, seed=0):
    b, size, ci, co, k, p = shape
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((b, size, size, ci)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, ci, co)) / np.sqrt(k * k * ci), jnp.float32)
    out = size + 2 * p - k + 1
    dy = jnp.asarray(rng.standard_normal((b, out, out, co)), jnp.float32)
    return x, w, dy, p


def _value_and_grads(conv, x, w, dy):
    y, vjp = jax.jit(lambda x, w: jax.vjp(conv, x, w))(x, w)
    return (y, *vjp(dy))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}s{}c{}-{}k{}p{}".format(*s))
def test_f32_values_and_gradients_equal_lax(shape):
    x, w, dy, p = _operands(shape)
    got = _value_and_grads(lambda x, w: onednn.conv2d(x, w, p), x, w, dy)
    want = _value_and_grads(lambda x, w: _lax_conv(x, w, p), x, w, dy)
    for name, a, b in zip(("y", "dx", "dw"), got, want):
        assert a.shape == b.shape and a.dtype == jnp.float32, name
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(a, b, atol=2e-6 * scale, rtol=0, err_msg=name)


@pytest.mark.parametrize("native", [True, False], ids=["native", "widened"])
@pytest.mark.parametrize("shape", SHAPES[:2], ids=lambda s: "b{}s{}c{}-{}k{}p{}".format(*s))
def test_bf16_is_float32_arithmetic_on_bfloat16_rounded_operands(shape, native, monkeypatch):
    """bf16 mode = lax in float32 on bf16-rounded x, w (and dy for the gradients): tight.

    Against unrounded float32 it is off by ~bf16's 2^-9 relative rounding, which shows the
    rounding really happens. "widened" is the path of CPUs without oneDNN bf16 convolutions
    (bf16 operands widened to float32); "native" is this CPU's (the same where it has none).
    """
    if not native:
        monkeypatch.setattr(onednn, "native_bf16", lambda: False)
    x, w, dy, p = _operands(shape, seed=1)
    r = lambda v: v.astype(jnp.bfloat16).astype(jnp.float32)
    got = _value_and_grads(lambda x, w: onednn.conv2d(x, w, p, bf16=True), x, w, dy)
    rounded = _value_and_grads(lambda x, w: _lax_conv(x, w, p), r(x), r(w), r(dy))
    exact = _value_and_grads(lambda x, w: _lax_conv(x, w, p), x, w, dy)
    for name, a, b, c in zip(("y", "dx", "dw"), got, rounded, exact):
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(a, b, atol=2e-6 * scale, rtol=0, err_msg=name)
        assert 1e-4 * scale < float(jnp.max(jnp.abs(a - c))) < 1e-2 * scale, name


@pytest.mark.parametrize("native", [True, False], ids=["native", "widened"])
def test_bfloat16_activations_stay_bfloat16(native, monkeypatch):
    """A bfloat16 network: y and dx in bfloat16 (straight from oneDNN where native), dw float32."""
    if not native:
        monkeypatch.setattr(onednn, "native_bf16", lambda: False)
    x, w, dy, p = _operands(SHAPES[0], seed=2)
    xb, dyb = x.astype(jnp.bfloat16), dy.astype(jnp.bfloat16)
    y, dx, dw = _value_and_grads(lambda x, w: onednn.conv2d(x, w, p), xb, w, dyb)
    assert (y.dtype, dx.dtype, dw.dtype) == (jnp.bfloat16, jnp.bfloat16, jnp.float32)
    r = lambda v: v.astype(jnp.bfloat16).astype(jnp.float32)
    want = _value_and_grads(lambda x, w: _lax_conv(x, w, p), r(x), r(w), r(dy))
    for name, a, b in zip(("y", "dx", "dw"), (y, dx, dw), want):
        scale = float(jnp.max(jnp.abs(b)))
        # y, dx: one round-to-nearest bfloat16 rounding of the float32 result, at most half an
        # ulp (2^-8 |b|; truncation errs by up to 2^-7 |b|), which the largest errors reach by
        # construction; the 2e-6 scale covers float32 summation order (oneDNN vs lax, the f32
        # test): 4 shapes x 10 seeds never exceeded 2^-8 |b| (AVX-512-BF16, AVX-512, AVX2).
        rtol = 2**-8 if name != "dw" else 0
        np.testing.assert_allclose(np.float32(a), b, atol=2e-6 * scale, rtol=rtol, err_msg=name)


def test_errors_in_the_handler_reach_python(monkeypatch):
    x, w, _, p = _operands(SHAPES[0])
    # A failure inside the handler becomes an XLA error with the convolution named, not a crash.
    plan = onednn._plan(onednn._key("fwd", x, w, p, jnp.float32))

    def fail(frame):
        raise RuntimeError("injected")

    monkeypatch.setattr(plan, "_execute", fail)
    with pytest.raises(Exception, match=r"oneDNN convolution .*kind='fwd'.*RuntimeError: injected"):
        jax.block_until_ready(jax.jit(lambda x, w: onednn.conv2d(x, w, p))(x, w))


def test_buffers_other_than_the_plan_are_refused_by_name():
    """The handler checks every buffer's dtype and shape against its plan before oneDNN runs:
    a call built by hand with a wrong operand is a named error, not a read out of bounds."""
    x, w, _, p = _operands(SHAPES[0])
    plan = onednn._plan(onednn._key("fwd", x, w, p, jnp.float32))
    operands, results = plan.buffer_specs()
    assert [s for _, s in operands] == [x.shape, w.shape]
    shapes = [jax.ShapeDtypeStruct(s, {6: jnp.uint8, 11: jnp.float32}[d]) for d, s in results]
    call = jax.ffi.ffi_call(plan.target, shapes)
    with pytest.raises(
        Exception,
        match=r"BufferMismatchError: operand 0 is float32\[2, 8, 8, 2\], the plan expects float32\[2, 8, 8, 3\]",
    ):
        jax.block_until_ready(jax.jit(call)(x[..., :2], w))
    with pytest.raises(Exception, match=r"BufferMismatchError: operand 1 is bfloat16"):
        jax.block_until_ready(jax.jit(call)(x, w.astype(jnp.bfloat16)))
    y = jax.jit(call)(x, w)[0]  # the planned buffers: runs
    np.testing.assert_allclose(y, _lax_conv(x, w, p), atol=2e-5, rtol=0)


def test_vmap_runs_the_batch_one_call_after_another():
    """The tiled restore vmaps the network over images; each image is its own oneDNN call."""
    x, w, _, p = _operands(SHAPES[0], seed=3)
    stacked = jnp.stack([x, 2 * x])
    got = jax.jit(jax.vmap(lambda x: onednn.conv2d(x, w, p)))(stacked)
    want = jnp.stack([_lax_conv(x, w, p), _lax_conv(2 * x, w, p)])
    np.testing.assert_allclose(got, want, atol=2e-6 * float(jnp.max(jnp.abs(want))), rtol=0)
