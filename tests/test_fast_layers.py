"""CPU layers (pdr_jax.cpu.fast_layers: resampling, GroupNorm) against the plain lax path.

Values and gradients. The fast path is the one `PDR_CPU_CONV=xla` gives on CPU (XLA's
convolutions, fast layers); the reference is the same module traced under `pdr_jax.cpu.NONE`,
the path GPUs/TPUs take. Every Conv2d variant the U-Nets use is covered: kernel 1/3, up/down
resampling with [1,1] and [1,3,3,1], fused resampling, resample-only (kernel 0), wide layers,
and a bfloat16 layer.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_models import tiny_prior

from pdr_jax import cpu
from pdr_jax.cpu import fast_layers
from pdr_jax.nn import layers


@pytest.fixture(autouse=True)
def _fast_layers_with_xla_convolutions(monkeypatch):
    monkeypatch.setenv("PDR_CPU_CONV", "xla")


def _grads(module, variables, x):
    """(y, d loss / d params, d loss / d x) for a loss that weights every output element."""

    def loss(params, x):
        y = module.apply({"params": params}, x).astype(jnp.float32)
        return jnp.sum(jnp.sin(y) * jnp.linspace(0.5, 1.5, y.size).reshape(y.shape))

    y = module.apply(variables, x)
    g_params, g_x = jax.grad(loss, argnums=(0, 1))(variables.get("params", {}), x)
    return y, g_params, g_x


def _assert_close(fast, plain, tol):
    """Leaf by leaf: |fast - plain| <= tol (|plain| + max |plain|).

    The leaf's largest entry sets the absolute part: a weight gradient sums up to 512 products, so
    its entries near 0 carry the rounding error of the large ones (elementwise tolerances put
    k3_up_fir's weight gradient at 0.70 of 1e-5 on AVX-512, 0.20 with XLA limited to AVX2, and
    up to 1.37 with oneDNN's convolutions).
    """
    chex.assert_trees_all_equal_shapes_and_dtypes(fast, plain)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(fast), jax.tree_util.tree_leaves(plain), strict=True
    ):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        scale = float(np.max(np.abs(b)))
        np.testing.assert_allclose(
            a, b, rtol=tol, atol=tol * scale, err_msg=jax.tree_util.keystr(path)
        )


CONV_VARIANTS = {
    "k3": {"out_channels": 8, "kernel": 3},
    "k1": {"out_channels": 8, "kernel": 1},
    "k3_wide_out": {"out_channels": 131, "kernel": 3},
    "k1_wide_out": {"out_channels": 65, "kernel": 1},
    "k3_up": {"out_channels": 8, "kernel": 3, "up": True},
    "k3_down": {"out_channels": 8, "kernel": 3, "down": True},
    "k1_down_fir": {"out_channels": 8, "kernel": 1, "down": True, "resample_filter": (1, 3, 3, 1)},
    "k3_up_fir": {"out_channels": 8, "kernel": 3, "up": True, "resample_filter": (1, 3, 3, 1)},
    "k0_up": {"out_channels": 6, "kernel": 0, "up": True},
    "k0_down_fir": {"out_channels": 6, "kernel": 0, "down": True, "resample_filter": (1, 3, 3, 1)},
    "fused_up": {"out_channels": 8, "kernel": 3, "up": True, "fused_resample": True},
    "fused_down": {"out_channels": 8, "kernel": 3, "down": True, "fused_resample": True},
    "fused_up_fir": {
        "out_channels": 8,
        "kernel": 3,
        "up": True,
        "fused_resample": True,
        "resample_filter": (1, 3, 3, 1),
    },
    "fused_down_fir": {
        "out_channels": 8,
        "kernel": 3,
        "down": True,
        "fused_resample": True,
        "resample_filter": (1, 3, 3, 1),
    },
    "fused_down_fir_k1": {
        "out_channels": 8,
        "kernel": 1,
        "down": True,
        "fused_resample": True,
        "resample_filter": (1, 3, 3, 1),
    },
}


@pytest.mark.parametrize("name", sorted(CONV_VARIANTS))
def test_conv2d_matches_plain_lax(name):
    assert cpu.current().fast_layers, "these tests compare the CPU layers; run them on CPU"
    module = layers.Conv2d(**CONV_VARIANTS[name], init_bias=0.5, init_mode="kaiming_uniform")
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 6))
    variables = module.init(jax.random.key(1), x)
    fast = jax.jit(lambda v, x: _grads(module, v, x))(variables, x)
    with cpu.using(cpu.NONE):
        plain = jax.jit(lambda v, x: _grads(module, v, x))(variables, x)
    # Measured (6 keys, every variant): <= 0.03 of this (XLA, AVX-512 or AVX2), <= 0.09 with
    # oneDNN's float32 convolutions.
    _assert_close(fast, plain, 1e-5)


def test_bfloat16_conv_matches_plain_lax():
    module = layers.Conv2d(out_channels=69, kernel=3, down=True, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    variables = module.init(jax.random.key(1), x)
    fast = _grads(module, variables, x)
    with cpu.using(cpu.NONE):
        plain = _grads(module, variables, x)
    assert fast[0].dtype == jnp.bfloat16
    # bfloat16 sums differ by an ulp or two of the leaf's scale: <= 0.24 of this over 6 keys
    # (elementwise 2e-2 put the weight gradient at 0.71-0.86).
    _assert_close(fast, plain, 2e-2)


def _depthwise_reference(x, kernel2d, *, stride, padding, lhs_dilation=1):
    channels = x.shape[-1]
    kernel = jnp.broadcast_to(
        jnp.asarray(kernel2d, x.dtype)[:, :, None, None], (*kernel2d.shape, 1, channels)
    )
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (stride, stride),
        ((padding, padding),) * 2,
        lhs_dilation=(lhs_dilation,) * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
    )


@pytest.mark.parametrize("resample_filter", [(1, 1), (1, 3, 3, 1), (1, 2, 1)])
@pytest.mark.parametrize(
    "conv",
    [
        {"stride": 2, "padding": 0},
        {"stride": 2, "padding": 1},
        {"stride": 1, "padding": 1, "lhs_dilation": 2},
        {"stride": 1, "padding": 2, "lhs_dilation": 2},
        {"stride": 1, "padding": 0, "lhs_dilation": 2},
    ],
)
def test_separable_depthwise_matches_grouped_conv(resample_filter, conv):
    kernel2d = layers.resample_kernel(resample_filter)
    taps = fast_layers.separable_taps(kernel2d)
    x = jax.random.normal(jax.random.key(0), (2, 8, 10, 3))
    fast = lambda x: fast_layers.separable_depthwise(x, taps, **conv)
    plain = lambda x: _depthwise_reference(x, kernel2d, **conv)
    np.testing.assert_allclose(fast(x), plain(x), atol=1e-6)
    loss = lambda f: lambda x: jnp.sum(jnp.sin(f(x)))
    np.testing.assert_allclose(jax.grad(loss(fast))(x), jax.grad(loss(plain))(x), atol=1e-6)


def test_separable_taps():
    np.testing.assert_allclose(
        fast_layers.separable_taps(layers.resample_kernel((1, 3, 3, 1))),
        [1 / 8, 3 / 8, 3 / 8, 1 / 8],
    )
    assert fast_layers.separable_taps(np.array([[1.0, 0.0], [0.0, 1.0]])) is None


def _jaxpr_text(module, x):
    """The forward pass and the gradient's jaxprs, as text."""
    variables = module.init(jax.random.key(1), x)
    forward = jax.make_jaxpr(module.apply)(variables, x)
    grad = jax.make_jaxpr(jax.grad(lambda v: jnp.sum(module.apply(v, x))))(variables)
    return f"{forward}\n{grad}"


def test_paths_are_chosen_by_the_record():
    """CPU: no grouped conv (separable resampling); the plain path (GPU/TPU) is the grouped lax conv."""
    module = layers.Conv2d(out_channels=8, kernel=3, up=True)
    x = jnp.ones((1, 4, 4, 3))
    fast = _jaxpr_text(module, x)
    assert "conv_general_dilated" in fast and "feature_group_count=3" not in fast
    with cpu.using(cpu.NONE):
        plain = _jaxpr_text(module, x)
    assert "feature_group_count=3" in plain


def test_unet_gradients_match_plain_path():
    """A whole (tiny) DDPM++ U-Net: loss and parameter gradients agree with the plain path."""
    net, variables = tiny_prior(model_channels=16)
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
    labels = jax.random.uniform(jax.random.key(2), (2, 6))

    def loss(params):
        D = net.apply({**variables, "params": params}, x, jnp.array([0.5, 2.0]), labels)
        return jnp.mean(jnp.square(D - x))

    fast = jax.jit(jax.value_and_grad(loss))(variables["params"])
    with cpu.using(cpu.NONE):
        plain = jax.jit(jax.value_and_grad(loss))(variables["params"])
    chex.assert_trees_all_close(fast, plain, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shape", [(2, 8, 8, 64), (1, 4, 6, 12), (2, 5, 5, 256)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_group_norm_matches_plain_path(shape, dtype):
    """GroupNorm's CPU form (per-channel scale and shift, no transposes): values and gradients."""
    norm = layers.GroupNorm(eps=1e-6, dtype=dtype)
    x = (3 * jax.random.normal(jax.random.key(0), shape) + 1).astype(dtype)
    variables = norm.init(jax.random.key(1), x)
    keys = jax.random.split(jax.random.key(2), 2)
    variables = {
        "params": {
            "weight": jax.random.normal(keys[0], shape[-1:]),
            "bias": jax.random.normal(keys[1], shape[-1:]),
        }
    }

    def run(variables, x):
        loss = lambda v, x: jnp.sum(jax.nn.silu(norm.apply(v, x).astype(jnp.float32)) * jnp.cos(x))
        return norm.apply(variables, x), jax.grad(loss, argnums=(0, 1))(variables, x)

    fast = run(variables, x)
    with cpu.using(cpu.NONE):
        plain = run(variables, x)
    chex.assert_trees_all_equal_shapes_and_dtypes(fast, plain)
    tol = 1e-4 if dtype == jnp.float32 else 5e-2
    chex.assert_trees_all_close(fast, plain, atol=tol, rtol=tol)


def test_group_norm_cpu_form_is_stable_for_large_means():
    """The CPU form's one-pass sums are shifted: mean 30, std 1 stays within 2e-5 of float64.

    Unshifted sums of x and x^2 lose ~1e-3 here (E[x^2] - E[x]^2 cancels).
    """
    shape, groups, eps = (2, 16, 16, 64), 16, 1e-5
    x = 30.0 + jax.random.normal(jax.random.key(0), shape)
    y = fast_layers.group_norm_nhwc(x, jnp.ones(shape[-1]), jnp.zeros(shape[-1]), groups, eps)
    xg = np.asarray(x, np.float64).reshape(2, -1, groups, shape[-1] // groups)
    mean, var = xg.mean(axis=(1, 3), keepdims=True), xg.var(axis=(1, 3), keepdims=True)
    expected = ((xg - mean) / np.sqrt(var + eps)).reshape(shape)
    np.testing.assert_allclose(np.asarray(y), expected, atol=2e-5)
