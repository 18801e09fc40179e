"""The 6-D conditioning vector: layout, scaling, clipping, batching, custom domains."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from pdr_jax.physics import conditioning as cond


def test_layout_by_hand():
    c = cond.conditioning_vector("microscopy", 100.0, 2.0, 5.0)
    # log10(100) = 2 in [-1, 4] -> 2 * 3 / 5 - 1 = 0.2
    np.testing.assert_allclose(c, [0, 1, 0, 0.2, 0.02, 0.05], rtol=1e-6, atol=1e-7)


def test_log_scale_is_clipped_and_batched():
    s = jnp.array([1e-3, 0.1, 1e4, 1e7])
    c = cond.conditioning_vector(jnp.array([0, 1, 2, 0]), s, 1.0, 0.0)
    chex.assert_shape(c, (4, 6))
    np.testing.assert_allclose(c[:, 3], [-1, -1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(c[:, :3].sum(-1), 1)


def test_custom_domains_and_range_round_trip():
    spec = cond.ConditioningSpec(domains=("a", "b", "c", "d"), log10_scale_range=(0.0, 2.0))
    c = cond.conditioning_vector("d", 10.0, 3.0, 1.0, spec)
    assert c.shape == (7,)
    assert cond.describe(c, spec) == pytest.approx({"domain": "d", "s": 10.0, "r": 3.0, "b": 1.0})


def test_unknown_domain_is_named():
    with pytest.raises(ValueError, match="unknown domain 'x-ray'"):
        cond.conditioning_vector("x-ray", 1.0, 1.0, 0.0)


def test_numpy_namespace_gives_the_same_vector_as_jax():
    """The data pipeline's path (xp=np: numpy in, numpy out, no jax array) is the same formula."""
    rng = np.random.default_rng(1)
    for domain in range(3):
        s, r, b = 10 ** rng.uniform(-2, 5), rng.uniform(0, 10), rng.uniform(0, 50)
        host = cond.conditioning_vector(np.int32(domain), s, r, b, xp=np)
        assert type(host) is np.ndarray and host.dtype == np.float32 and host.shape == (6,)
        np.testing.assert_allclose(
            host, cond.conditioning_vector(jnp.int32(domain), s, r, b), rtol=1e-6, atol=1e-7
        )
    domains, s = np.array([0, 2, 5]), np.array([1.0, 50.0, 1e6])
    np.testing.assert_array_equal(
        cond.conditioning_vector(domains, s, 2.0, 0.0, xp=np),
        np.asarray(cond.conditioning_vector(jnp.asarray(domains), s, 2.0, 0.0)),
    )
