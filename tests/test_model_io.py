"""Model directories: network.json + Orbax variables, and the errors for broken ones."""

import json
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from edm_fixtures import load_case, network_from_case
from tiny_models import tiny_prior, tiny_prior_kwargs

from pdr_jax import model_io, precond
from pdr_jax.convert import edm_network_kwargs


def _vp_model():
    meta, _ = load_case("vp_ddpmpp_rgb32")
    kwargs = edm_network_kwargs(meta["precond_class"], meta["constructor_kwargs"])
    net, variables, _ = network_from_case("vp_ddpmpp_rgb32")
    return kwargs, net, variables


def test_save_and_load_round_trip(tmp_path):
    kwargs, net, variables = _vp_model()
    model_io.save_model(tmp_path / "m", kwargs, variables, source={"file": "x.pkl"})
    description = json.loads((tmp_path / "m" / "network.json").read_text())
    assert description["format"] == "pdr_jax-model" and description["version"] == 1
    assert description["network"]["channel_mult"] == [1, 2, 2] and description["source"] == {
        "file": "x.pkl"
    }

    loaded_net, loaded = model_io.load_model(tmp_path / "m")
    assert loaded_net == net  # lists are tuples again
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(variables)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, variables)


def test_edm_sigma_max_infinity_round_trips(tmp_path):
    """EDMPrecond's default sigma_max is inf, which JSON writes as Infinity."""
    meta, _ = load_case("adm_cond_rgb32")
    kwargs = {
        **edm_network_kwargs(meta["precond_class"], meta["constructor_kwargs"]),
        "sigma_max": float("inf"),
    }
    _, variables, _ = network_from_case("adm_cond_rgb32")
    model_io.save_model(tmp_path, kwargs, variables)
    loaded_net, _ = model_io.load_model(tmp_path)
    assert loaded_net.sigma_max == float("inf")


def test_save_refuses_to_overwrite_and_checks_variables(tmp_path):
    kwargs, _, variables = _vp_model()
    model_io.save_model(tmp_path, kwargs, variables)
    with pytest.raises(FileExistsError, match="network.json exists"):
        model_io.save_model(tmp_path, kwargs, variables)
    model_io.save_model(tmp_path, kwargs, variables, overwrite=True)

    with pytest.raises(
        model_io.ModelFormatError,
        match=r"params/model/map_label/weight: expected \(6, 8\), found \(10, 8\)",
    ):
        model_io.save_model(tmp_path / "other", {**kwargs, "label_dim": 6}, variables)
    with pytest.raises(
        model_io.ModelFormatError, match=r"missing \['params/model/map_augment/weight'\]"
    ):
        model_io.save_model(tmp_path / "other", {**kwargs, "augment_dim": 9}, variables)


@pytest.mark.parametrize(
    "content, pattern",
    [
        (None, r"network\.json: missing"),
        ("{not json", r"network\.json: invalid JSON"),
        (
            {"format": "other", "version": 1, "network": {}},
            r"network\.json: field 'format' is 'other'",
        ),
        (
            {"format": "pdr_jax-model", "version": 7, "network": {}},
            r"field 'version' is 7, expected 1",
        ),
        ({"format": "pdr_jax-model", "version": 1}, r"field 'network' must be an object"),
        (
            {
                "format": "pdr_jax-model",
                "version": 1,
                "network": {"arch": "ddpmpp", "img_resolution": 8, "img_channels": 1},
            },
            r"field 'network\.precond' is missing",
        ),
        (
            {
                "format": "pdr_jax-model",
                "version": 1,
                "network": {
                    "precond": "edm",
                    "arch": "nope",
                    "img_resolution": 8,
                    "img_channels": 1,
                },
            },
            r"field 'network' does not build a network .*unknown arch 'nope'",
        ),
    ],
)
def test_bad_network_json_names_file_and_field(tmp_path, content, pattern):
    if content is not None:
        text = content if isinstance(content, str) else json.dumps(content)
        (tmp_path / "network.json").write_text(text)
    with pytest.raises(model_io.ModelFormatError, match=pattern) as info:
        model_io.load_model(tmp_path)
    assert str(tmp_path / "network.json") in str(info.value)


def test_missing_variables_are_reported(tmp_path):
    kwargs, _, variables = _vp_model()
    model_io.save_model(tmp_path, kwargs, variables)
    (tmp_path / "variables").rename(tmp_path / "moved")
    with pytest.raises(model_io.ModelFormatError, match=r"variables: missing"):
        model_io.load_model(tmp_path)


def test_shipped_models_load_by_name_from_the_package():
    """Package data (pdr_jax/models), found by importlib.resources, not by the checkout's layout."""
    shipped = {"pdr-gray-default", "pdr-rgb-default", "conditional-gray-default"}
    assert shipped <= set(model_io.shipped_models())
    path = model_io.resolve_model("pdr-gray-default")
    assert path.parent == pathlib.Path(model_io.__file__).parent / "models"
    net, variables = model_io.load_model("pdr-gray-default")
    assert net.model.label_dim == 6 and "params" in variables
    colour, _ = model_io.load_model("pdr-rgb-default")  # the gray prior's network, 3 channels
    assert colour.model.in_channels == 3 and colour.model.label_dim == 6
    assert colour.model.model_channels == net.model.model_channels
    assert model_io.resolve_model("no-such-model") == pathlib.Path("no-such-model")
    with pytest.raises(model_io.ModelFormatError, match="no-such-model"):
        model_io.load_model("no-such-model")


def test_no_code_refers_to_the_checkout_layout():
    """The package works installed (grep of issue 23): no parent.parent in pdr_jax, and the
    checkout's entry points do not edit sys.path."""
    root = pathlib.Path(__file__).resolve().parents[1]
    for path in (root / "pdr_jax").rglob("*.py"):
        assert "parent.parent" not in path.read_text(), path
    for path in [*(root / "tools").glob("*.py"), *(root / "launch").glob("*.py")]:
        assert "sys.path" not in path.read_text(), path


@pytest.mark.parametrize("arch", ["ddpmpp", "ncsnpp"])
def test_a_gray_network_adapted_to_rgb_maps_gray_images_as_before(arch):
    """Gray -> RGB (model_io.adapt_image_channels, train.init_from's path): the RGB network maps
    a gray image repeated over 3 channels to the gray network's output repeated; only the
    convolutions that read and write the image change (NCSN++: the residual encoder's and skip
    decoder's at every level). RGB -> gray returns the gray network exactly. Other mismatches are
    still named."""
    gray_net, gray = tiny_prior(arch=arch, img_channels=1)
    # Jitter: at EDM's init the last convolution is zero, which would hide a wrong adaptation.
    leaves, tree = jax.tree_util.tree_flatten(gray)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    gray = jax.tree_util.tree_unflatten(
        tree, [v + 0.05 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)]
    )
    # The RGB and the wider network are only shapes here: built, not initialised.
    rgb_net = precond.build_network(**tiny_prior_kwargs(arch=arch, img_channels=3))
    rgb = model_io.adapt_image_channels(rgb_net, gray, 1, "test")
    x = jax.random.normal(jax.random.key(2), (2, 16, 16, 1))
    sigma, labels = jnp.array([0.5, 2.0]), jnp.zeros((2, 6))
    want = gray_net.apply(gray, x, sigma, labels)
    got = rgb_net.apply(rgb, jnp.repeat(x, 3, axis=-1), sigma, labels)
    chex.assert_trees_all_close(got, jnp.repeat(want, 3, axis=-1), atol=2e-5)
    assert float(jnp.abs(want - x).max()) > 0.01  # the network does something to compare
    back = model_io.adapt_image_channels(gray_net, rgb, 3, "test")
    chex.assert_trees_all_close(back, gray, atol=1e-6)
    wider = precond.build_network(**tiny_prior_kwargs(arch=arch, img_channels=3, model_channels=32))
    with pytest.raises(model_io.ModelFormatError, match="test: variables do not fit"):
        model_io.adapt_image_channels(wider, gray, 1, "test")
