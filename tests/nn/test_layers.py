"""Building blocks: single UNetBlocks against EDM, resampling, GroupNorm, embeddings, init."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from edm_fixtures import FIXTURES, nchw_to_nhwc
from flax.core import FrozenDict

from pdr_jax.convert.names import state_dict_to_variables
from pdr_jax.nn import layers


def _block_from_fixture(name):
    meta = json.loads((FIXTURES / "blocks.json").read_text())["blocks"][name]
    arrays = np.load(FIXTURES / "blocks.npz")
    ctor = dict(meta["ctor"])
    ctor.pop("in_channels"), ctor.pop("emb_channels")
    for key, field in (
        ("init", "layer_init"),
        ("init_zero", "zero_init"),
        ("init_attn", "attn_init"),
    ):
        if key in ctor:
            ctor[field] = FrozenDict(ctor.pop(key))
    if "resample_filter" in ctor:
        ctor["resample_filter"] = tuple(ctor["resample_filter"])
    block = layers.UNetBlock(**ctor)
    x = jnp.asarray(nchw_to_nhwc(arrays[f"{name}/x"]))
    emb = jnp.asarray(arrays[f"{name}/emb"])
    state = {
        k.split("/state/")[1]: arrays[k] for k in arrays.files if k.startswith(f"{name}/state/")
    }
    template = jax.eval_shape(lambda: block.init(jax.random.key(0), x, emb))
    variables = state_dict_to_variables(block, state, template)
    return block, variables, x, emb, nchw_to_nhwc(arrays[f"{name}/y"]), meta


@pytest.mark.parametrize("name", ["mhattn", "songdown", "songup_noproj"])
def test_unet_block_matches_edm(name):
    """Multi-head ADM attention, Song down with [1,3,3,1] + 2 heads, up with a kernel-0 skip."""
    block, variables, x, emb, y_ref, meta = _block_from_fixture(name)
    assert block.heads == meta["num_heads"]
    y = block.apply(variables, x, emb)
    np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=1e-4)
    assert ("skip" in variables["params"]) == (
        meta["skip"]["kernel"] > 0 or "skip.resample_filter" in str(meta)
    )


def test_resampling_closed_forms():
    """[1,1] down = 2x2 mean, [1,1] up = nearest neighbour; [1,3,3,1] up of a constant is constant."""
    x = jax.random.normal(jax.random.key(0), (2, 8, 6, 3))
    box = layers.resample_kernel((1, 1))
    down = layers.downsample(x, box, padding=0)
    np.testing.assert_allclose(down, x.reshape(2, 4, 2, 3, 2, 3).mean(axis=(2, 4)), atol=1e-6)
    up = layers.upsample(x, box, padding=0)
    np.testing.assert_allclose(up, jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2), atol=1e-6)
    const = jnp.ones((1, 6, 6, 2))
    up = layers.upsample(const, layers.resample_kernel((1, 3, 3, 1)), padding=1)
    chex.assert_shape(up, (1, 12, 12, 2))
    np.testing.assert_allclose(up[:, 1:-1, 1:-1], 1.0, atol=1e-6)  # borders see the zero padding


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("mode", ["up", "down"])
def test_conv2d_shapes(mode, fused):
    conv = layers.Conv2d(5, 3, resample_filter=(1, 3, 3, 1), fused_resample=fused, **{mode: True})
    x = jnp.ones((2, 8, 8, 4))
    y, variables = conv.init_with_output(jax.random.key(0), x)
    chex.assert_shape(y, (2, 16 if mode == "up" else 4, 16 if mode == "up" else 4, 5))
    chex.assert_shape(variables["params"]["weight"], (3, 3, 4, 5))
    # kernel 0: resampling only, no parameters (EDM's aux_down/aux_up).
    assert layers.Conv2d(4, 0, down=True).init(jax.random.key(0), x) == {}


def test_group_norm_groups_and_statistics():
    """EDM: min(32, C // 4) contiguous groups, biased variance."""
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 16)) * 3 + 1
    y = layers.GroupNorm(eps=1e-6).apply(
        {"params": {"weight": jnp.ones(16), "bias": jnp.zeros(16)}}, x
    )
    # 16 channels -> 4 contiguous groups of 4 channels: [B, (H W), G, c] -> [B, G, (H W c)].
    groups = np.asarray(y).reshape(2, 4 * 4, 4, 4).transpose(0, 2, 1, 3).reshape(2, 4, -1)
    np.testing.assert_allclose(groups.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(groups.var(-1), 1, atol=1e-3)


def test_embeddings():
    x = jnp.array([0.0, 1.5])
    pos = layers.PositionalEmbedding(8, endpoint=True).apply({}, x)
    freqs = (1 / 10000) ** (np.arange(4) / 3)
    np.testing.assert_allclose(
        pos, np.concatenate([np.cos(np.outer(x, freqs)), np.sin(np.outer(x, freqs))], 1), atol=1e-6
    )
    fourier = layers.FourierEmbedding(8)
    variables = fourier.init(jax.random.key(0), x)
    freqs = variables["buffers"]["freqs"]
    chex.assert_shape(freqs, (4,))
    # N(0, 16^2) frequencies: |2 pi x f| reaches ~350, and its float32 rounding is what the
    # float64 reference sees: <= 1.5 |arg| 2^-24 over 40 keys (a fixed 1e-5 failed 2 in 12).
    arg = 2 * np.pi * np.outer(np.float64(x), np.float64(freqs))
    atol = 4 * np.max(np.abs(arg)) * 2**-24
    np.testing.assert_allclose(fourier.apply(variables, x)[:, 4:], np.sin(arg), atol=atol)
    np.testing.assert_allclose(fourier.apply(variables, x)[:, :4], np.cos(arg), atol=atol)


@pytest.mark.parametrize(
    "mode, fan, uniform",
    [
        ("xavier_uniform", "avg", True),
        ("kaiming_uniform", "in", True),
        ("kaiming_normal", "in", False),
        ("xavier_normal", "avg", False),
    ],
)
def test_init_statistics_match_edm(mode, fan, uniform):
    """EDM's weight_init: std sqrt(1/fan_in) (kaiming) or sqrt(2/(fan_in+fan_out)) (xavier), times init_weight."""
    conv = layers.Conv2d(96, 3, init_mode=mode, init_weight=0.5, init_bias=0.5)
    params = conv.init(jax.random.key(3), jnp.ones((1, 4, 4, 64)))["params"]
    fan_in, fan_out = 64 * 9, 96 * 9
    var = 1 / fan_in if fan == "in" else 2 / (fan_in + fan_out)
    std = 0.5 * np.sqrt(var)
    assert np.std(params["weight"]) == pytest.approx(std, rel=0.02)
    assert np.std(params["bias"]) == pytest.approx(std, rel=0.25)  # only 96 draws
    if uniform:
        assert np.max(np.abs(params["weight"])) <= 0.5 * np.sqrt(3 * var) + 1e-7
    zero_bias = layers.Conv2d(8, 3, init_mode=mode).init(jax.random.key(3), jnp.ones((1, 4, 4, 4)))
    np.testing.assert_array_equal(zero_bias["params"]["bias"], 0)
