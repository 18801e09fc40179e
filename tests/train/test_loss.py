"""EDM/VP/VE losses against PyTorch EDM with the stored random draws (tests/fixtures/edm/loss_*)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from edm_fixtures import FIXTURES, nchw_to_nhwc, network_from_case

from pdr_jax.train import loss as losses

CASES = [
    ("ddpmpp_cond6_gray64", losses.edm_loss, "rnd_normal"),
    ("vp_ddpmpp_rgb32", losses.vp_loss, "rnd_uniform"),
    ("ve_ncsnpp_rgb32", losses.ve_loss, "rnd_uniform"),
]


@pytest.mark.parametrize("case, loss_fn, draw", CASES)
def test_loss_matches_edm_with_stored_draws(case, loss_fn, draw, monkeypatch):
    """jax.random is patched to hand out EDM's draws in EDM's order: per-sample draw, then noise."""
    net, variables, _ = network_from_case(case)
    ref = dict(np.load(FIXTURES / f"loss_{case}.npz"))
    draws = iter([jnp.asarray(ref[draw]), jnp.asarray(nchw_to_nhwc(ref["noise"]))])
    monkeypatch.setattr(jax.random, "normal", lambda key, shape: next(draws))
    monkeypatch.setattr(jax.random, "uniform", lambda key, shape: next(draws))
    images = jnp.asarray(nchw_to_nhwc(ref["images"]))
    labels = ref.get("labels")
    denoise = lambda x, sigma, labels: net.apply(variables, x, sigma, labels)
    out = loss_fn(denoise, jax.random.key(0), images, labels)
    expected = nchw_to_nhwc(ref["loss"])
    # The loss weight reaches 1/sigma^2 ~ 2500 at VE's sigma_min: compare relative to its scale.
    np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-4 * np.max(np.abs(expected)))


def test_edm_weighting_by_hand():
    """At sigma = sigma_data the EDM weight is 2 / sigma_data^2 = 8; an exact denoiser has zero loss."""
    images = jnp.ones((1, 2, 2, 1))
    sigma = jnp.full((1, 1, 1, 1), 0.5)
    err = losses.weighted_denoising_error(
        lambda x, s, labels: x * 0 + 3.0,
        images,
        None,
        sigma,
        jnp.zeros_like(images),
        (0.5**2 + 0.25) / (0.25) ** 2,
    )
    np.testing.assert_allclose(err, 8 * 4.0)
    exact = losses.edm_loss(lambda x, s, labels: images, jax.random.key(0), images)
    np.testing.assert_array_equal(exact, 0)
