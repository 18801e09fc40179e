"""pdr_jax.activations (named activations), pdr_jax.samplers.sample_with_preset and
tools/inspect_activations.py."""

import csv
import functools
import importlib.util
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from edm_fixtures import FIXTURES, load_case, nchw_to_nhwc
from PIL import Image
from tiny_models import tiny_prior_kwargs

from pdr_jax import activations, cpu, model_io, precond, samplers
from pdr_jax.convert import load_edm_pickle
from pdr_jax.presets import SAMPLER_PRESETS

inspect_tool = importlib.import_module("pdr_jax.cli.inspect")

TINY = tiny_prior_kwargs(img_resolution=8, attn_resolutions=(4,))

# Stable names whose EDM module the fixtures hooked (act/model.<path>), per case.
FIXTURE_NAMES = {
    "adm_cond_rgb32": {
        "encoder_block_1": "enc.32x32_block0",
        "encoder_block_3": "enc.16x16_block0",
        "encoder_bottleneck": "enc.16x16_block0",
        "decoder_block_4": "dec.32x32_block1",
    },
    "ddpmpp_cond6_gray64": {
        "encoder_block_1": "enc.64x64_block0",
        "encoder_block_5": "enc.16x16_block0",
        "encoder_bottleneck": "enc.16x16_block0",
        "decoder_block_7": "dec.64x64_block1",
    },
}


def _random_variables(net, scale=0.1, seed=0):
    """Normal(0, scale) variables of the shapes init would make, without compiling init."""
    shapes = jax.eval_shape(lambda: precond.init_variables(net, jax.random.key(0)))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.normal(0, scale, s.shape), s.dtype), shapes
    )


# Every stable name plus a few EDM paths. Tests that capture the tiny net use this set and a
# batch of 2, so that they all share one compiled program (the tool test included).
TINY_EXTRA = ["dec.4x4_in0", "dec.4x4_in0.qkv", "map_layer1", "dec.8x8_aux_conv"]


@pytest.fixture(scope="module")
def tiny():
    net = precond.build_network(**TINY)
    return net, _random_variables(net)


def _tiny_names(net):
    return [info.name for info in activations.list_layers(net)] + TINY_EXTRA


def _tiny_inputs(batch=2):
    x = jax.random.normal(jax.random.key(1), (batch, 8, 8, 1))
    sigma = jnp.asarray([0.1, 10.0, 1.0][:batch])
    labels = jax.random.uniform(jax.random.key(2), (batch, 6))
    return x, sigma, labels


@pytest.fixture(scope="module")
def tiny_capture(tiny):
    net, variables = tiny
    x, sigma, labels = _tiny_inputs()
    acts, D = activations.capture_activations(
        net, variables, x, sigma, labels, _tiny_names(net), return_output=True
    )
    return (x, sigma, labels), acts, D


# ----------------------------------------------------------------------------------------------
# Names.


def test_list_layers_order_and_edm_keys(tiny):
    net, _ = tiny
    layers = activations.list_layers(net)
    assert [(info.name, info.path, info.resolution, info.channels) for info in layers] == [
        ("encoder_block_0", "enc.8x8_conv", 8, 8),
        ("encoder_block_1", "enc.8x8_block0", 8, 8),
        ("encoder_block_2", "enc.4x4_down", 4, 8),
        ("encoder_block_3", "enc.4x4_block0", 4, 16),
        ("encoder_bottleneck", "enc.4x4_block0", 4, 16),
        ("midblock", "dec.4x4_in1", 4, 16),
        ("decoder_block_0", "dec.4x4_block0", 4, 16),
        ("decoder_block_1", "dec.4x4_block1", 4, 16),
        ("decoder_block_2", "dec.8x8_up", 8, 16),
        ("decoder_block_3", "dec.8x8_block0", 8, 8),
        ("decoder_block_4", "dec.8x8_block1", 8, 8),
    ]


@pytest.mark.parametrize(
    "name, encoder, decoder", [("edm-ffhq64-ddpmpp", 20, 23), ("edm-imagenet64-adm", 16, 19)]
)
def test_layer_counts_of_published_configs(name, encoder, decoder):
    """Counts from the architecture: 1 conv + blocks + a down block per lower level; decoder
    num_blocks + 1 per level plus an up block per higher level. No parameters are made."""
    names = [info.name for info in activations.list_layers(precond.build_network(name))]
    assert sum(n.startswith("encoder_block_") for n in names) == encoder
    assert sum(n.startswith("decoder_block_") for n in names) == decoder


def test_raw_paths_and_unknown_names(tiny):
    net, variables = tiny
    resolved = activations.resolve_layers(
        net, ["midblock", "model.dec.4x4_in0", "enc.4x4_block0.conv0", "map_label"]
    )
    assert resolved == {
        "midblock": "dec.4x4_in1",
        "model.dec.4x4_in0": "dec.4x4_in0",
        "enc.4x4_block0.conv0": "enc.4x4_block0.conv0",
        "map_label": "map_label",
    }
    with pytest.raises(KeyError, match="decoder_block_9.*stable names"):
        activations.resolve_layers(net, ["decoder_block_9"])
    with pytest.raises(KeyError, match="enc.16x16_block0"):
        activations.resolve_layers(net, ["enc.16x16_block0"])
    x, sigma, labels = _tiny_inputs()
    with pytest.raises(KeyError, match="no module at 'model.enc.8x8_block0.qkv'"):
        activations.capture_activations(net, variables, x, sigma, labels, ["enc.8x8_block0.qkv"])


# ----------------------------------------------------------------------------------------------
# Capture.


def test_capture_leaves_the_output_bit_identical(tiny, tiny_capture):
    """D of the jitted capture (every stable layer and some sub-modules) equals jitted D
    (both compiled as pdr_jax compiles: pdr_jax.cpu.jit, the same record)."""
    net, variables = tiny
    (x, sigma, labels), acts, D = tiny_capture
    D_plain = cpu.jit(net.apply)(variables, x, sigma, labels)
    np.testing.assert_array_equal(np.asarray(D), np.asarray(D_plain))
    assert D.dtype == jnp.float32 and list(acts) == _tiny_names(net)
    assert acts["midblock"].shape == (2, 4, 4, 16) and acts["map_layer1"].shape == (2, 32)
    assert acts["dec.4x4_in0.qkv"].shape == (2, 4, 4, 48)
    assert acts["dec.8x8_aux_conv"].shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(acts["encoder_bottleneck"], acts["encoder_block_3"])


def test_names_are_the_tensors_the_unet_passes_on(tiny, tiny_capture):
    """midblock is what the first decoder block continues from, concatenated with the last skip
    (encoder_bottleneck); the encoder blocks are the skips; in1 reads in0's output."""
    net, variables = tiny
    (x, sigma, labels), acts, _ = tiny_capture
    inputs = {}

    def record(next_fn, args, kwargs, context):
        if context.method_name == "__call__" and context.module.name:
            inputs[context.module.name] = args[0]
        return next_fn(*args, **kwargs)

    with nn.intercept_methods(record):
        net.apply(variables, x, sigma, labels)
    close = functools.partial(np.testing.assert_allclose, atol=1e-6)
    close(inputs["dec.4x4_in1"], acts["dec.4x4_in0"])
    block0_in = inputs["dec.4x4_block0"]  # decoder_block_0's input
    close(block0_in[..., :16], acts["midblock"])
    close(block0_in[..., 16:], acts["encoder_bottleneck"])
    # At 8x8: [decoder_block_2 (the up block), encoder_block_1], then [.., encoder_block_0].
    close(inputs["dec.8x8_block0"][..., :16], acts["decoder_block_2"])
    close(inputs["dec.8x8_block0"][..., 16:], acts["encoder_block_1"])
    close(inputs["dec.8x8_block1"][..., 8:], acts["encoder_block_0"])


@pytest.mark.parametrize("case", sorted(FIXTURE_NAMES))
def test_converted_fixture_activations_match_edm(case):
    """Stable names and raw EDM paths of a converted EDM pickle give EDM's hooked activations."""
    net, variables = load_edm_pickle(FIXTURES / f"{case}.pkl")
    _, arrays = load_case(case)
    stable = FIXTURE_NAMES[case]
    assert {info.name: info.path for info in activations.list_layers(net)}.items() >= stable.items()
    raw = [key[len("act/") :] for key in arrays if key.startswith("act/")]  # "model.enc..."
    acts = activations.capture_activations(
        net,
        variables,
        nchw_to_nhwc(arrays["x"]),
        arrays["sigma"],
        arrays.get("class_labels"),
        [*stable, *raw],
    )
    errors = {}
    for name in [*stable, *raw]:
        ref = arrays["act/model." + stable.get(name, name.removeprefix("model."))]
        got = np.asarray(acts[name])
        if ref.ndim == 4:  # sample 0 only, NCHW
            got, ref = got[:1], nchw_to_nhwc(ref)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0, err_msg=f"{case}: {name}")
        errors[name] = float(np.max(np.abs(got - ref)))
    # Measured on CPU: block outputs <= 3.1e-6, out_norm 4.7e-6, embeddings <= 3.6e-7.
    assert max(errors.values()) < 2e-5, errors


def test_imagenet64_adm_with_1000_class_labels():
    """The full EDM ImageNet-64 ADM config (296M parameters) as shapes only, and a narrow copy
    (model_channels 16, one block per level, attention at 8x8) run with one-hot 1000-D labels."""
    net = precond.build_network("edm-imagenet64-adm")
    layers = {info.name: info for info in activations.list_layers(net)}
    assert layers["encoder_block_0"][1:] == ("enc.64x64_conv", 64, 192)
    assert layers["encoder_bottleneck"][1:] == ("enc.8x8_block2", 8, 768)
    assert layers["midblock"][1:] == ("dec.8x8_in1", 8, 768)
    assert layers["decoder_block_18"][1:] == ("dec.64x64_block3", 64, 192)
    shapes = jax.eval_shape(lambda: precond.init_variables(net, jax.random.key(0)))
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((2, 1000), jnp.float32)
    captured = jax.eval_shape(
        lambda v, x, c: activations.capture_activations(
            net, v, x, jnp.ones(2), c, ["midblock", "map_label"]
        ),
        shapes,
        x,
        labels,
    )
    assert captured["midblock"].shape == (2, 8, 8, 768) and captured["map_label"].shape == (2, 768)

    small = precond.build_network("edm-imagenet64-adm", model_channels=16, num_blocks=1)
    variables = _random_variables(small, scale=0.05)
    assert variables["params"]["model"]["map_label"]["weight"].shape == (1000, 64)
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    one_hot = jax.nn.one_hot(jnp.array([7, 999]), 1000)
    names = ["encoder_block_0", "midblock", "decoder_block_10", "dec.8x8_in0.qkv", "map_label"]
    acts, D = activations.capture_activations(
        small, variables, x, jnp.array([0.5, 20.0]), one_hot, names, return_output=True
    )
    shapes = {name: a.shape for name, a in acts.items()}
    assert shapes == {
        "encoder_block_0": (2, 64, 64, 16),
        "midblock": (2, 8, 8, 64),
        "decoder_block_10": (2, 64, 64, 16),
        "dec.8x8_in0.qkv": (2, 8, 8, 192),
        "map_label": (2, 64),
    }
    # The label embedding is the one-hot's row of the weight (ADM's map_label has no bias).
    weight = variables["params"]["model"]["map_label"]["weight"]
    np.testing.assert_allclose(acts["map_label"], weight[jnp.array([7, 999])], atol=1e-6)
    assert D.shape == x.shape and np.isfinite(np.asarray(D)).all()


# ----------------------------------------------------------------------------------------------
# Statistics.


def test_channel_statistics_merge_batches_and_count_dead_channels():
    rng = np.random.default_rng(0)
    a = rng.normal(2.0, 3.0, (5, 4, 4, 6)).astype(np.float32)
    a[..., 1] = 0.0  # dead
    a[..., 4] = 5e-7  # dead at the default threshold 1e-6
    a[2, 0, 0, 5] = 0.0  # one zero is not a dead channel
    merged = None
    for part in (a[:2], a[2:3], a[3:]):
        merged = activations.merge_summaries(merged, jax.jit(activations.channel_summary)(part))
    stats = activations.layer_statistics(merged)
    assert stats["mean"] == pytest.approx(a.mean(dtype=np.float64), rel=1e-6)
    assert stats["std"] == pytest.approx(a.std(dtype=np.float64), rel=1e-6)
    assert (stats["min"], stats["max"]) == (a.min(), a.max())
    np.testing.assert_allclose(
        stats["channel_std"], a.std(axis=(0, 1, 2), dtype=np.float64), rtol=1e-5, atol=1e-6
    )
    assert stats["dead_channels"] == [1, 4] and stats["dead_fraction"] == pytest.approx(2 / 6)
    assert activations.layer_statistics(merged, dead_threshold=1e-7)["dead_channels"] == [1]
    # Embedding layers [B, c]: the same, without positions.
    emb = rng.normal(size=(7, 3)).astype(np.float32)
    emb_stats = activations.layer_statistics(
        activations.merge_summaries(None, activations.channel_summary(emb))
    )
    assert emb_stats["std"] == pytest.approx(emb.std(dtype=np.float64), rel=1e-6)
    np.testing.assert_allclose(activations.pool_activations(a), a.mean(axis=(1, 2)), rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Sampler presets.


def test_sampler_presets(tiny):
    assert SAMPLER_PRESETS["edm-imagenet64-stochastic"] == dict(
        num_steps=256, S_churn=40, S_min=0.05, S_max=50, S_noise=1.003
    )
    assert SAMPLER_PRESETS["edm-default"] == dict(num_steps=18)
    net, variables = tiny
    latents = jax.random.normal(jax.random.key(3), (2, 8, 8, 1))
    labels = jnp.zeros((2, 6))
    key = jax.random.key(4)
    got = samplers.sample_with_preset(
        net, variables, latents, labels, key=key, preset="edm-imagenet64-stochastic", num_steps=3
    )
    expected = samplers.edm_sampler(
        latents=latents,
        key=key,
        num_steps=3,
        S_churn=40,
        S_min=0.05,
        S_max=50,
        S_noise=1.003,
        **samplers.network_sampler_args(net, variables, labels),
    )
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    with pytest.raises(KeyError, match="edm-imagenet64-stochastic"):
        samplers.sample_with_preset(net, variables, latents, preset="imagenet")


# ----------------------------------------------------------------------------------------------
# The tool.


def test_tool_help_and_list(capsys):
    with pytest.raises(SystemExit) as exit_info:
        inspect_tool.main(["--help"])
    assert exit_info.value.code == 0
    assert "dead" in capsys.readouterr().out
    assert inspect_tool.main(["--checkpoint", str(FIXTURES / "adm_cond_rgb32.pkl"), "--list"]) == 0
    out = capsys.readouterr().out
    assert "midblock               dec.16x16_in1" in out and "label_dim 10" in out


def _batched_capture(net, variables, x, sigma, labels, names, batch=2):
    """capture_activations in batches of `batch` (the last one padded), concatenated."""
    parts = []
    for start in range(0, x.shape[0], batch):
        index = np.minimum(np.arange(start, start + batch), x.shape[0] - 1)
        acts = activations.capture_activations(
            net, variables, x[index], sigma[index], labels[index], names
        )
        parts.append({name: np.asarray(a[: x.shape[0] - start]) for name, a in acts.items()})
    return {name: np.concatenate([p[name] for p in parts]) for name in names}


def test_tool_on_a_tiny_model_directory(tiny, tmp_path, capsys):
    """5 images in batches of 2 (the last one padded), domain labels; channel 3 of
    encoder_block_0 (the 8x8 conv) is zeroed so that it is dead. The written numbers equal a
    direct capture. A second run draws the clean images with the ImageNet-64 preset (3 steps)."""
    net, variables = tiny
    variables = jax.tree_util.tree_map(np.array, variables)
    conv = variables["params"]["model"]["enc.8x8_conv"]
    conv["weight"][..., 3] = 0
    conv["bias"][3] = 0
    directory = tmp_path / "model"
    model_io.save_model(directory, TINY, variables, overwrite=True)
    names = _tiny_names(net)
    out = tmp_path / "out"
    argv = ["--checkpoint", str(directory), "--out", str(out), "--layers", ",".join(names)]
    argv += ["--num", "5", "--batch", "2", "--sigma", "0.5,4", "--domain", "microscopy,astronomy"]
    assert inspect_tool.main([*argv, "--max-channels", "9"]) == 0
    log = capsys.readouterr().out
    assert "batch 3/3" in log and "1 dead channels in total" in log

    report = json.loads((out / "layer_stats.json").read_text())
    assert [layer["name"] for layer in report["layers"]] == names
    stats = {layer["name"]: layer for layer in report["layers"]}
    assert stats["encoder_block_0"]["dead_channels"] == [3]
    assert stats["encoder_block_0"]["dead_fraction"] == pytest.approx(1 / 8)
    assert stats["midblock"]["shape"] == [4, 4, 16] and stats["midblock"]["dead_channels"] == []
    assert stats["midblock"]["path"] == "dec.4x4_in1"

    with np.load(out / "inputs.npz") as inputs:
        x, sigma, labels = inputs["x"], inputs["sigma"], inputs["labels"]
    np.testing.assert_array_equal(sigma, [0.5, 4, 0.5, 4, 0.5])
    np.testing.assert_array_equal(labels[:, :3].argmax(1), [1, 2, 1, 2, 1])
    acts = _batched_capture(net, variables, x, sigma, labels, names)
    for name in ("encoder_block_3", "midblock", "decoder_block_4", "map_layer1"):
        a = acts[name].astype(np.float64)
        assert stats[name]["mean"] == pytest.approx(a.mean(), rel=1e-5, abs=1e-7)
        assert stats[name]["std"] == pytest.approx(a.std(), rel=1e-5)
        assert stats[name]["max"] == a.max()

    with open(out / "layer_stats.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["layer"] for row in rows] == names
    assert rows[0]["path"] == "enc.8x8_conv" and rows[0]["dead_channels"] == "1"
    assert float(rows[0]["std"]) == pytest.approx(stats["encoder_block_0"]["std"])

    with open(out / "pooled.csv") as f:
        header, *body = list(csv.reader(f))
    assert header[:4] == ["image", "sigma", "label", "encoder_block_0/0"]
    assert len(header) == 3 + sum(a.shape[-1] for a in acts.values())
    assert len(body) == 5 and body[1][1] == "4" and body[1][2] == "0 0 1 0.2 0.02 0"
    column = header.index("midblock/5")
    expected = acts["midblock"].mean(axis=(1, 2))[:, 5]
    np.testing.assert_allclose([float(row[column]) for row in body], expected, rtol=1e-5, atol=1e-7)

    montage = Image.open(out / "montage_midblock.png")
    # 9 channels of 4x4 maps zoomed to 32 px: a 3x3 grid with 2-px gaps under a 14-px title.
    assert montage.size == (3 * 34 + 2, 14 + 3 * 34 + 2) and montage.mode == "RGB"
    assert len(list(out.glob("montage_*.png"))) == len(names) - 1  # not map_layer1

    sampled = tmp_path / "sampled"
    argv = ["--checkpoint", str(directory), "--out", str(sampled), "--layers", ",".join(names)]
    argv += ["--num", "2", "--sample-preset", "edm-imagenet64-stochastic", "--sample-steps", "3"]
    assert inspect_tool.main([*argv, "--sigma", "0.2"]) == 0
    assert "with edm-imagenet64-stochastic (3 steps)" in capsys.readouterr().out
    with np.load(sampled / "inputs.npz") as inputs:
        clean, x = inputs["clean"], inputs["x"]
    assert np.isfinite(clean).all() and np.abs(clean).max() > 0
    assert 0.1 < np.std(x - clean) < 0.3  # x = y + 0.2 n


def test_tool_on_an_edm_pickle_with_given_inputs(tmp_path):
    """EDM's own inputs as a given noisy .npy (NCHW): the pooled features equal the means of
    EDM's hooked activations (4-D ones: sample 0 only)."""
    _, arrays = load_case("adm_cond_rgb32")
    images = tmp_path / "x.npy"
    np.save(images, arrays["x"])  # [4, 3, 32, 32]
    sigma = ",".join(repr(float(s)) for s in arrays["sigma"])
    layers = [key[len("act/") :] for key in arrays if key.startswith("act/")]  # "model.enc..."
    out = tmp_path / "out"
    argv = ["--checkpoint", str(FIXTURES / "adm_cond_rgb32.pkl"), "--out", str(out)]
    argv += ["--input", str(images), "--input-is-noisy", "--sigma", sigma, "--class", "1,9,8,2"]
    assert inspect_tool.main([*argv, "--layers", ",".join(layers), "--batch", "4"]) == 0
    with open(out / "pooled.csv") as f:
        header, *body = list(csv.reader(f))
    assert [row[2] for row in body] == ["1", "9", "8", "2"]
    for name in layers:
        ref = arrays[f"act/{name}"]
        ref = ref[:1].mean(axis=(2, 3)) if ref.ndim == 4 else ref  # [rows, C]
        columns = [header.index(f"{name}/{c}") for c in range(ref.shape[1])]
        got = [[float(row[c]) for c in columns] for row in body[: len(ref)]]
        np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=name)
    assert (out / "montage_model.dec.16x16_in0.png").exists()
    assert not (out / "montage_model.map_label.png").exists()


def test_tool_errors(tiny, tmp_path, capsys):
    argv = ["--checkpoint", str(FIXTURES / "adm_cond_rgb32.pkl"), "--out", str(tmp_path)]
    assert inspect_tool.main([*argv, "--layers", "middle"]) == 1
    assert "unknown layer(s) ['middle']" in capsys.readouterr().err
    assert inspect_tool.main([*argv, "--domain", "astronomy"]) == 1
    assert inspect_tool.main(["--checkpoint", str(tmp_path), "--out", str(tmp_path)]) == 1
