"""U-Nets and named networks: EDM parameter counts, shapes, jit, bf16, dropout, remat."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from edm_fixtures import nchw_to_nhwc, network_from_case
from tiny_models import tiny_prior_kwargs

from pdr_jax import precond
from pdr_jax.nn import unets

# Counted with PyTorch EDM (training/networks.py at 008a4e5) by sum(p.numel() for p in net.parameters()).
EDM_PARAM_COUNTS = {
    "edm-cifar10-ddpmpp": 55_735_299,
    "edm-cifar10-ncsnpp": 56_400_643,
    "edm-ffhq64-ddpmpp": 61_805_571,
    "edm-imagenet64-adm": 295_899_267,
    "pdr-gray128": 9_862_913,
    "pdr-gray128-small": 1_770_273,
}


@pytest.mark.parametrize("name", sorted(EDM_PARAM_COUNTS))
def test_param_count_equals_edm(name):
    assert precond.param_count(precond.build_network(name)) == EDM_PARAM_COUNTS[name]


def test_iddpm_adm_param_count_equals_edm():
    net = precond.build_network("edm-imagenet64-adm", precond="iddpm")
    assert precond.param_count(net) == 295_904_454


def _make_tiny_model(**overrides):
    return precond.build_network(**tiny_prior_kwargs(**{"dropout": 0.1, **overrides}))


TINY_VARIANTS = {
    "ddpmpp": {},
    "ncsnpp": dict(arch="ncsnpp", model_channels=8, channel_mult=(1, 2)),
    "skip": dict(
        arch="songunet", encoder_type="skip", decoder_type="skip", resample_filter=(1, 3, 3, 1)
    ),
    "adm": dict(arch="adm", model_channels=8, channel_mult=(1, 2), attn_resolutions=(8,)),
    "vp": dict(precond="vp"),
    "ve": dict(precond="ve", label_dim=0),
    "iddpm": dict(precond="iddpm", arch="adm", model_channels=8, channel_mult=(1, 2)),
}


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
def test_shapes_dtypes_and_jit(variant):
    net = _make_tiny_model(**TINY_VARIANTS[variant])
    variables = precond.init_variables(net, jax.random.key(0), batch=2)
    x = jax.random.normal(jax.random.key(1), (3, 16, 16, 1))
    labels = (
        jax.nn.one_hot(jnp.array([0, 1, 2]), net.model.label_dim) if net.model.label_dim else None
    )
    fn = lambda v, x: net.apply(v, x, jnp.array([0.1, 1.0, 10.0]), labels)
    D = fn(variables, x)
    chex.assert_shape(D, x.shape)
    assert D.dtype == jnp.float32
    chex.assert_tree_all_finite(D)
    chex.assert_trees_all_close(jax.jit(fn)(variables, x), D, atol=1e-5, rtol=1e-5)


def test_fully_convolutional_other_resolution():
    """The network built for 16x16 runs at 32x32 and 8x8 with the same parameters."""
    net = _make_tiny_model()
    variables = precond.init_variables(net, jax.random.key(0))
    apply = jax.jit(net.apply)
    for res in (8, 32):
        D = apply(variables, jnp.ones((1, res, res, 1)), 1.0)
        chex.assert_shape(D, (1, res, res, 1))


def test_bf16_inner_network_close_to_float32():
    """bf16 U-Net body (float32 preconditioning) on the EDM fixture: within 2% of max|D|."""
    net32, variables, arrays = network_from_case("ddpmpp_cond6_gray64")
    net16, _, _ = network_from_case("ddpmpp_cond6_gray64", dtype=jnp.bfloat16)
    x = jnp.asarray(nchw_to_nhwc(arrays["x"]))
    args = (x, jnp.asarray(arrays["sigma"]), jnp.asarray(arrays["class_labels"]))
    D32 = jax.jit(net32.apply)(variables, *args)
    D16 = jax.jit(net16.apply)(variables, *args)
    assert D16.dtype == jnp.float32
    rel = float(jnp.max(jnp.abs(D16 - D32)) / jnp.max(jnp.abs(D32)))
    assert rel < 2e-2, rel


def _perturbed_variables(net, key=0):
    """Fresh variables plus 0.02 N(0, 1) on every parameter, so zero-initialised outputs act."""
    variables = precond.init_variables(net, jax.random.key(key))
    leaves, treedef = jax.tree_util.tree_flatten(variables["params"])
    keys = jax.random.split(jax.random.key(key + 1), len(leaves))
    noisy = [p + 0.02 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
    return {**variables, "params": jax.tree_util.tree_unflatten(treedef, noisy)}


def test_dropout_and_label_dropout_only_in_training():
    net = _make_tiny_model(label_dropout=0.5)
    variables = _perturbed_variables(net)
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 1))
    labels = jnp.ones((4, 6))
    apply = jax.jit(net.apply, static_argnames="train")
    eval_a = apply(variables, x, 1.0, labels)
    eval_b = apply(variables, x, 1.0, labels)
    chex.assert_trees_all_equal(eval_a, eval_b)
    train = lambda k: apply(
        variables, x, 1.0, labels, train=True, rngs={"dropout": jax.random.key(k)}
    )
    assert float(jnp.max(jnp.abs(train(0) - train(1)))) > 1e-4
    assert float(jnp.max(jnp.abs(train(0) - eval_a))) > 1e-4


def test_label_dropout_zeroes_whole_rows():
    """With label_dropout=1 every label row is dropped: equal to zero labels."""
    net = _make_tiny_model(label_dropout=1.0, dropout=0.0)
    variables = _perturbed_variables(net)
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
    train = net.apply(
        variables, x, 1.0, jnp.ones((2, 6)), train=True, rngs={"dropout": jax.random.key(0)}
    )
    np.testing.assert_allclose(train, net.apply(variables, x, 1.0, jnp.zeros((2, 6))), atol=1e-6)


def test_remat_gives_same_values_and_gradients():
    net = _make_tiny_model(dropout=0.0)
    net_remat = _make_tiny_model(dropout=0.0, remat=True)
    variables = _perturbed_variables(net)
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
    loss = lambda n, p: jnp.mean(n.apply({"params": p}, x, 1.0, jnp.ones((2, 6))) ** 2)
    g = jax.jit(jax.grad(functools.partial(loss, net)))(variables["params"])
    g_remat = jax.jit(jax.grad(functools.partial(loss, net_remat)))(variables["params"])
    chex.assert_trees_all_close(g, g_remat, atol=1e-6, rtol=1e-5)


def test_layouts_list_edm_keys():
    enc, dec = unets.songunet_layout(32, 3, 3, 16, (1, 2, 2), 1, (16,), "residual", "standard")
    names = [s.name for s in enc]
    assert names[:4] == ["32x32_conv", "32x32_block0", "16x16_down", "16x16_aux_residual"]
    assert [s.name for s in dec][-3:] == ["32x32_block1", "32x32_aux_norm", "32x32_aux_conv"]


def test_invalid_arguments_are_named():
    with pytest.raises(KeyError, match="unknown network 'nope'"):
        precond.build_network("nope")
    with pytest.raises(ValueError, match="encoder_type"):
        _make_tiny_model(arch="songunet", encoder_type="bogus").init(
            jax.random.key(0), jnp.ones((1, 16, 16, 1)), 1.0
        )
