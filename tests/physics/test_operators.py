"""Forward operators (pdr_jax.physics.operators): adjoints, CFA phases across tiles, and the
Poisson-Gaussian likelihood of a mosaic in closed form; the sRGB transfer function."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdr_jax.physics import calibration, noise, operators

MOSAICS = [operators.Mosaic(p, gains=(0.5, 1.0, 0.8)) for p in operators.CFA_PATTERNS]


@pytest.mark.parametrize("op", [operators.Identity(), *MOSAICS], ids=lambda op: repr(op)[:40])
def test_adjoint_is_the_transpose_and_what_vjp_gives(op):
    """<A x, y> = <x, A^T y> on random arrays, and A^T y is the vector-Jacobian product of A."""
    key_x, key_y = jax.random.split(jax.random.key(0))
    x = jax.random.normal(key_x, (2, 6, 7, op.channels_in or 3))
    y = jax.random.normal(key_y, (2, 6, 7, op.channels_out or 3))
    lhs, rhs = jnp.vdot(op.forward(x), y), jnp.vdot(x, op.adjoint(y))
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-5)
    _, vjp = jax.vjp(op.forward, x)
    chex.assert_trees_all_close(vjp(y)[0], op.adjoint(y), atol=1e-6)


@pytest.mark.parametrize("pattern", operators.CFA_PATTERNS)
def test_each_pixel_measures_its_colour_and_tiles_keep_the_phase(pattern):
    """A pure red, green or blue scene lights exactly the pixels of that colour in the pattern
    (RGGB: red at (0, 0)); a tile at any (top, left) measures the crop of the whole mosaic."""
    op = operators.Mosaic(pattern, gains=(2.0, 1.0, 3.0))
    cell = np.asarray(operators.CFA_PATTERNS[pattern])
    for colour, gain in enumerate((2.0, 1.0, 3.0)):
        scene = np.zeros((1, 4, 6, 3), np.float32)
        scene[..., colour] = 1.0
        lit = np.asarray(op.forward(scene))[0, :, :, 0]
        np.testing.assert_array_equal(lit, gain * (np.tile(cell, (2, 3)) == colour))
    x = jax.random.uniform(jax.random.key(1), (1, 9, 11, 3))
    whole = op.forward(x)
    for top, left in ((0, 0), (1, 0), (0, 3), (5, 7), (4, 2)):
        tile = op.at(top, left).forward(x[:, top : top + 4, left : left + 4])
        np.testing.assert_array_equal(tile, whole[:, top : top + 4, left : left + 4])
    assert op.at(1, 1).at(1, 1) == op


def test_the_mosaic_likelihood_of_a_constant_scene_is_per_colour_in_closed_form():
    """A constant colour scene x = (a, b, c): each pixel of colour k is Poisson(s g_k x_k + bg)
    plus read noise, so log p(y | A x) sums the scalar likelihood over the pixels of each colour,
    and its gradient w.r.t. x_k is s g_k times the summed per-pixel derivative, the adjoint's."""
    op, s, r, bg = operators.Mosaic("GRBG", gains=(0.5, 1.0, 0.8)), 20.0, 2.0, 1.0
    colour = jnp.array([0.3, 0.6, 0.9])
    x = jnp.broadcast_to(colour, (1, 8, 8, 3))
    y = noise.simulate(jax.random.key(2), op.forward(x), s, r, bg)
    colours = op.colours(8, 8)
    total = lambda c: noise.log_likelihood(
        y, op.forward(jnp.broadcast_to(c, (1, 8, 8, 3))), s, r, bg, kind="exact"
    )
    expected = sum(
        noise.log_likelihood(
            y[0, :, :, 0][colours == k], op.gains[k] * colour[k], s, r, bg, kind="exact"
        )
        for k in range(3)
    )
    assert float(total(colour)) == pytest.approx(float(expected), rel=1e-5)
    grad = jax.grad(total)(colour)
    per_pixel = noise.log_likelihood_grad(y, op.forward(x), s, r, bg, kind="exact")
    closed = [op.gains[k] * float(jnp.sum(per_pixel[0, :, :, 0][colours == k])) for k in range(3)]
    np.testing.assert_allclose(grad, closed, rtol=1e-4)
    assert np.all(np.abs(closed) > 0)  # each colour has pixels that pull on it


def test_srgb_round_trip_and_its_fixed_points():
    v = np.linspace(0, 1, 1001)
    np.testing.assert_allclose(
        calibration.linear_to_srgb(calibration.srgb_to_linear(v)), v, atol=1e-6
    )
    # IEC 61966-2-1: 0 and 1 are fixed, mid-gray 0.5 is 21.4% linear, the knee is continuous.
    assert calibration.srgb_to_linear(np.array([0.0, 1.0])).tolist() == [0.0, 1.0]
    assert float(calibration.srgb_to_linear(np.array(0.5))) == pytest.approx(0.21404, abs=1e-5)
    knee = calibration.SRGB_KNEE
    below, above = calibration.srgb_to_linear(np.array([knee - 1e-9, knee + 1e-9]))
    assert abs(above - below) < 1e-7
    jax_values = calibration.srgb_to_linear(jnp.asarray(v, jnp.float32))
    np.testing.assert_allclose(jax_values, calibration.srgb_to_linear(v), atol=1e-6)
