"""Parity of the preconditioned networks with PyTorch EDM (tests/fixtures/edm)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from edm_fixtures import NETWORK_CASES, load_case, nchw_to_nhwc, network_from_case

from pdr_jax import precond


def _inputs(net, arrays):
    x = jnp.asarray(nchw_to_nhwc(arrays["x"]))
    labels = arrays.get("class_labels")
    aug = arrays.get("augment_labels")
    return x, jnp.asarray(arrays["sigma"]), labels, aug


@pytest.mark.parametrize("cpu_conv", ["xla", "f32"])
@pytest.mark.parametrize("case", NETWORK_CASES)
def test_network_matches_edm(case, cpu_conv, monkeypatch):
    """D, the inner U-Net output F_x and the hooked activations equal EDM's.

    With XLA's convolutions and with oneDNN's (pdr_jax.cpu.onednn, the single-device CPU default).
    """
    monkeypatch.setenv("PDR_CPU_CONV", cpu_conv)
    net, variables, arrays = network_from_case(case)
    x, sigma, labels, aug = _inputs(net, arrays)

    def capture(mdl, method_name):
        return method_name == "__call__"

    D, state = jax.jit(
        lambda v: net.apply(
            v,
            x,
            sigma,
            labels,
            augment_labels=aug,
            capture_intermediates=capture,
            mutable=["intermediates"],
        )
    )(variables)
    D_ref = nchw_to_nhwc(arrays["D"])
    err = np.max(np.abs(np.asarray(D) - D_ref))
    # Fixture README: |D_port - D| <= 1e-4 max|D| + 1e-5; VP/VE/iDDPM amplify F_x by |c_out| = sigma.
    assert err <= 1e-4 * np.max(np.abs(D_ref)) + 1e-5, f"{case}: max|dD| = {err}"

    inter = state["intermediates"]
    F_x = inter["model"]["__call__"][0]
    np.testing.assert_allclose(F_x, nchw_to_nhwc(arrays["F_x"]), atol=1e-4, rtol=1e-4)
    for key, ref in arrays.items():
        if not key.startswith("act/"):
            continue
        path = key[len("act/") :].split(".", 1)[1]  # drop the leading "model."
        node = inter["model"]
        for part in _flax_path(path):
            node = node[part]
        got = np.asarray(node["__call__"][0])
        if ref.ndim == 4:
            got, ref = got[:1], nchw_to_nhwc(ref)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4, err_msg=key)


def _flax_path(edm_path: str):
    """EDM module path below `model.` -> Flax path: enc/dec keys keep their container prefix."""
    parts = edm_path.split(".")
    if parts[0] in ("enc", "dec"):
        return [f"{parts[0]}.{parts[1]}", *parts[2:]]
    return parts


def test_iddpm_u_and_round_sigma_match_edm():
    net, variables, arrays = network_from_case("iddpm_adm_rgb32")
    # A fresh network computes u like EDM: equal to the stored u up to float32 sin's ulps, which
    # the recursion's u_j^2 = prod(ratios) - 1 amplifies by 1 / (2 u_j^2) near u = 0: compare
    # u^2 + 1. Measured 1.4e-6 (numpy AVX-512 or AVX2 sin), 2.5e-6 (SSE); -1/0/+1 ulp at random in
    # each sin^2: <= 6.9e-6 (u itself: 1.5e-3); C_2 = 0.0081 instead of 0.008 gives 2e-4.
    init = jax.jit(lambda key: precond.init_variables(net, key))  # op by op: 2.5x longer
    fresh = np.float64(init(jax.random.key(0))["buffers"]["u"])
    stored = np.float64(arrays["state/u"])
    np.testing.assert_allclose(fresh**2 + 1, stored**2 + 1, rtol=2e-5, atol=0)
    meta, _ = load_case("iddpm_adm_rgb32")
    # sigma_min = u_999 ~ 0.0064: one ulp of sin^2 at j = 999 or 1000 moves it by 1.4e-3.
    assert net.sigma_min == pytest.approx(meta["net_attributes"]["sigma_min"], rel=5e-3)
    assert net.sigma_max == pytest.approx(meta["net_attributes"]["sigma_max"], rel=5e-5)
    sigma_in = arrays["round_sigma/in"]
    index = net.apply(variables, sigma_in, method=net.round_sigma_index)
    np.testing.assert_array_equal(index, arrays["round_sigma/index"].reshape(index.shape))
    out = net.apply(variables, sigma_in, method=net.round_sigma)
    np.testing.assert_array_equal(out, arrays["round_sigma/out"].reshape(out.shape))


def test_vp_sigma_range_is_evaluated_in_float32_like_edm():
    meta, _ = load_case("vp_ddpmpp_rgb32")
    net = precond.VPPrecond(model=None)
    assert net.sigma_min == meta["net_attributes"]["sigma_min"] == 0.0009765625
    assert net.sigma_max == pytest.approx(meta["net_attributes"]["sigma_max"], rel=1e-7)


@pytest.mark.parametrize(
    "cls, sigma, expected",
    [
        # (c_skip, c_out, c_in, c_noise) at sigma=1 by hand from Table 1.
        (precond.EDMPrecond, 1.0, (0.25 / 1.25, 0.5 / np.sqrt(1.25), 1 / np.sqrt(1.25), 0.0)),
        (precond.VEPrecond, 1.0, (1.0, 1.0, 1.0, np.log(0.5))),
    ],
)
def test_coefficients_by_hand(cls, sigma, expected):
    """With F = identity on its input, D(x) = c_skip x + c_out c_in x and the noise label reaches F."""
    seen = {}

    class Probe:
        label_dim = 0
        dtype = jnp.float32

        def __call__(self, x, c_noise, labels, augment_labels=None, train=False):
            seen["c_noise"] = c_noise
            return x

    net = cls(model=Probe())
    x = jnp.ones((1, 2, 2, 1))
    D = cls.__call__(net, x, jnp.array([sigma]))
    c_skip, c_out, c_in, c_noise = expected
    np.testing.assert_allclose(D, c_skip + c_out * c_in, rtol=1e-6)
    np.testing.assert_allclose(seen["c_noise"], [c_noise], atol=1e-7)


def test_scalar_sigma_and_missing_labels_broadcast():
    net, variables, arrays = network_from_case("ddpmpp_cond6_gray64")
    x = jnp.asarray(nchw_to_nhwc(arrays["x"]))
    sigma = float(arrays["sigma"][1])
    labels = jnp.asarray(arrays["class_labels"])
    apply = jax.jit(net.apply)  # op by op, this 64 px network takes about twice as long
    D_scalar = apply(variables, x, sigma, labels)
    D_vector = apply(variables, x, jnp.full((x.shape[0],), sigma), labels)
    np.testing.assert_allclose(D_scalar, D_vector, atol=1e-6)
    # No labels means zero labels, as in EDM.
    np.testing.assert_allclose(
        apply(variables, x, sigma), apply(variables, x, sigma, jnp.zeros_like(labels)), atol=1e-6
    )
    chex.assert_shape(D_scalar, x.shape)
    assert D_scalar.dtype == jnp.float32
