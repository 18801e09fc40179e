"""RAW Bayer restoration through the Mosaic operator, on a colour prior whose exact denoiser is
known (tests/colour_prior.py: every image one colour plus small pixel deviations).

A mosaic measures one colour per pixel; the colour of the scene must come back from the
pattern (a red scene under RGGB lights the (0, 0) pixels of every cell, and read as BGGR it is
blue), through tiles whose padding is odd, with chi-square near 1 for each Bayer colour.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from colour_prior import EPS, ColourPrior

from pdr_jax import baselines
from pdr_jax.physics import guidance, noise, operators
from pdr_jax.restore import GuidanceSettings, Physics, SamplerSettings, TilingSettings, restore

RED = np.array([0.85, 0.08, 0.1], np.float32)  # the truth's colour in [0, 1]
GAINS = (0.6, 1.0, 0.8)


def _scene(height, width, colour=RED, seed=0):
    e = np.random.default_rng(seed).normal(0, EPS / 2, (height, width, 3))
    return np.clip(colour + e, 0, 1).astype(np.float32)


def _measure(x, op, s, r, b, seed=1):
    return np.asarray(
        noise.simulate(jax.random.key(seed), op.forward(jnp.asarray(x)[None]), s, r, b)
    )[0]


@pytest.mark.parametrize("tile", [None, 8])
def test_a_red_scene_comes_back_red_through_the_pattern_and_odd_tiles(tile):
    """RGGB data of a red scene restore to red in every pixel (mean colour within 0.03, every
    pixel's red above its green and blue), with or without 8 px tiles on a 37 x 42 image (odd
    padding, so the padded origin shifts the phase); read as BGGR, the same data are blue."""
    s, r, b = 60.0, 2.0, 1.0
    op = operators.Mosaic("RGGB", gains=GAINS)
    x_true = _scene(37, 42)  # no tiles: any size works for this prior
    y = _measure(x_true, op, s, r, b)
    tiling = None if tile is None else TilingSettings(tile=tile, overlap=2)

    def run(pattern):
        physics = Physics(s, r, b, operator=operators.Mosaic(pattern, gains=GAINS))
        return restore(ColourPrior(), y[..., 0], physics=physics, tiling_settings=tiling)

    result = run("RGGB")
    assert result.image.shape == (*y.shape[:2], 3)
    np.testing.assert_allclose(result.image.mean(axis=(0, 1)), RED, atol=0.03)
    assert np.all(result.image[..., 0] > result.image[..., 1:].max(axis=-1) + 0.3)
    # chi-square per Bayer colour near 1 (~390 pixels per colour: std of each ~0.07; measured
    # 0.79-1.07 over 3 seeds with and without tiles; a wrong phase gives hundreds)
    assert len(result.report["chi_square_per_channel"]) == 3
    for chi2 in [result.report["chi_square"], *result.report["chi_square_per_channel"]]:
        assert 0.55 < chi2 < 1.45
    assert result.report["physics"]["operator"]["name"] == "Mosaic"
    swapped = run("BGGR").image.mean(axis=(0, 1))
    assert swapped[2] > 0.5 and swapped[0] < 0.3  # the red pixels read as blue


def test_tile_phases_agree_with_the_whole_image():
    """The likelihood acts on the padded image through operator.at(-pad_top, -pad_left): the
    tiled restoration of a 30 x 30 mosaic (tile 16, 4 px overlap: 5 px of padding, odd) fits
    the data per colour like the untiled one (chi-square in [0.7, 1.35], within 0.25 of it; a
    wrong phase puts the red data on green pixels, chi-square in the hundreds)."""
    s, r, b = 60.0, 2.0, 1.0
    op = operators.Mosaic("GBRG", gains=GAINS)
    y = _measure(_scene(30, 30, seed=3), op, s, r, b, seed=4)[..., 0]
    physics = Physics(s, r, b, operator=op)
    whole = restore(ColourPrior(), y[:, :], physics=physics, tiling_settings=None)
    tiled = restore(
        ColourPrior(), y, physics=physics, tiling_settings=TilingSettings(tile=16, overlap=4)
    )
    assert tiled.report["num_tiles"] > 1 and tiled.report["plan"].count('"pad_top": 5')
    for result in (whole, tiled):
        assert all(0.7 < c < 1.35 for c in result.report["chi_square_per_channel"])
    np.testing.assert_allclose(
        tiled.report["chi_square_per_channel"], whole.report["chi_square_per_channel"], atol=0.25
    )
    np.testing.assert_allclose(tiled.image.mean(axis=(0, 1)), RED, atol=0.03)


def test_the_proximal_step_through_a_mosaic_is_the_scalar_one_with_the_gain():
    """Each value of x is measured at most once: at its pixel's colour the step equals the
    identity's closed form with s g, at the other two colours it is zero; the damped step's
    Fisher information is g^2 times the pixel's there and 0 elsewhere."""
    op = operators.Mosaic("GRBG", gains=GAINS)
    s, r, b = 30.0, 1.5, 2.0
    key_x, key_y = jax.random.split(jax.random.key(5))
    denoised = jax.random.uniform(key_x, (2, 4, 6, 3), minval=-0.8, maxval=0.8)
    y = 30 * jax.random.uniform(key_y, (2, 4, 6, 1))
    settings = GuidanceSettings(mode="prox", kappa=0.5)
    step = guidance.proximal_correction(
        denoised, 0.7, y=y, s=s, r=r, b=b, settings=settings, operator=op
    )
    weights = op.weights(4, 6)
    for c in range(3):
        measured = weights[..., c] > 0
        scalar = guidance.proximal_correction(
            denoised[..., c : c + 1], 0.7, y=y, s=s * GAINS[c], r=r, b=b, settings=settings
        )[..., 0]
        np.testing.assert_allclose(step[..., c][:, measured], scalar[:, measured], rtol=1e-5)
        assert np.all(np.asarray(step[..., c])[:, ~measured] == 0)
    fisher = guidance.fisher_information(denoised, s, r, b, op)
    lam = s * op.forward(0.5 * (denoised + 1)) + b
    expected = weights**2 * (s**2 / (4 * (lam + r**2)))
    np.testing.assert_allclose(fisher, expected, rtol=1e-5)


def test_the_stabilised_start_of_a_mosaic_recovers_a_constant_colour():
    """baselines.stabilised with the Mosaic: GAT of every pixel, demosaicking (operator.fill) of the
    stabilised mosaic, a denoiser (here the scene's mean in each channel: exact for a constant
    scene), the unbiased inverse divided by s g: within 0.02 of each channel's truth."""
    op = operators.Mosaic("BGGR", gains=GAINS)
    s, r, b = 40.0, 2.0, 1.0
    colour = np.array([0.2, 0.5, 0.7], np.float32)
    y = _measure(np.broadcast_to(colour, (32, 32, 3)), op, s, r, b, seed=6)
    x = baselines.stabilised(
        lambda image, sigma: np.broadcast_to(image.mean(axis=(0, 1)), image.shape),
        y,
        s,
        r,
        b,
        joint_channels=True,
        operator=op,
    )
    assert x.shape == (32, 32, 3)
    np.testing.assert_allclose(x.mean(axis=(0, 1)), colour, atol=0.02)


def test_the_classical_raw_pipeline_denoises_then_demosaicks():
    """gat_bm3d_menon on a smooth colour ramp: [H, W, 3] in [0, 1], far closer to the truth than
    the noisy demosaick (MSE below 0.5x)."""
    op = operators.Mosaic("RGGB", gains=GAINS)
    s, r, b = 20.0, 1.0, 0.0
    yy, xx = np.mgrid[0:32, 0:32] / 32
    x_true = np.stack([0.2 + 0.6 * xx, 0.3 + 0.4 * yy, 0.7 - 0.5 * xx], -1).astype(np.float32)
    y = _measure(x_true, op, s, r, b, seed=7)
    x = baselines.gat_bm3d_menon(y, op, s, r, b)
    assert x.shape == (32, 32, 3) and x.min() >= 0 and x.max() <= 1
    noisy = op.fill((y - b) / s) / np.asarray(GAINS)
    assert np.mean((x - x_true) ** 2) < 0.5 * np.mean((noisy - x_true) ** 2)


def test_a_mosaic_needs_a_colour_prior_and_one_channel():
    physics = Physics(10.0, 1.0, operator=operators.Mosaic())
    with pytest.raises(ValueError, match="measures a 3-channel image but the prior has 1"):

        class Gray(ColourPrior):
            img_channels = 1

        restore(Gray(), np.ones((8, 8)), physics=physics, tiling_settings=None)
    with pytest.raises(ValueError, match="give a mosaic as one channel"):
        restore(ColourPrior(), np.ones((8, 8, 3)), physics=physics, tiling_settings=None)
    sampler = SamplerSettings(num_steps=0)
    out = restore(ColourPrior(), 10 * np.ones((8, 8)), physics=physics, sampler=sampler)
    assert out.image.shape == (8, 8, 3)


def test_bayer_planes_are_quadrants_mirrored_at_their_seams():
    """Mosaic.to_planes: the pixels of parity (0, 0) top left, (0, 1) top right mirrored, (1, 0)
    bottom left mirrored, (1, 1) bottom right mirrored both ways; from_planes inverts it. On a
    ramp the seams join the same border of two planes: a step of one pixel of the ramp, where
    plain quadrants would jump across the whole image."""
    z = np.random.default_rng(0).normal(size=(6, 8, 1))
    q = operators.Mosaic.to_planes(z)
    np.testing.assert_array_equal(q[:3, :4], z[0::2, 0::2])
    np.testing.assert_array_equal(q[3:, 4:], z[1::2, 1::2][::-1, ::-1])
    np.testing.assert_array_equal(operators.Mosaic.from_planes(q), z)
    rows, columns = np.mgrid[0:16, 0:24] / 24.0
    for ramp, axis in ((columns, 1), (rows, 0)):
        q = operators.Mosaic.to_planes(ramp)
        seam = q.shape[axis] // 2
        jump = np.abs(np.take(q, seam, axis) - np.take(q, seam - 1, axis)).max()
        assert jump == pytest.approx(1 / 24)
    with pytest.raises(ValueError, match=r"Bayer planes need even sides, got \(5, 8\)"):
        operators.Mosaic.to_planes(np.zeros((5, 8, 1)))


def test_the_planes_start_of_a_mosaic_recovers_a_constant_colour():
    """baselines.stabilised_planes: GAT, the four planes as one image through a denoiser (here
    each quadrant's mean: exact for a constant scene), the unbiased inverse divided by s and
    each pixel's gain, then demosaicked: within 0.02 of each channel's truth."""
    op = operators.Mosaic("GBRG", gains=GAINS)
    s, r, b = 100.0, 2.0, 1.0  # each channel's mean within 0.011 of the truth over 5 seeds
    colour = np.array([0.2, 0.5, 0.7], np.float32)
    y = _measure(np.broadcast_to(colour, (32, 32, 3)), op, s, r, b, seed=8)

    def quadrant_means(image, sigma):
        out = np.empty_like(image)
        for rows in (slice(0, 16), slice(16, 32)):
            for columns in (slice(0, 16), slice(16, 32)):
                out[rows, columns] = image[rows, columns].mean()
        return out

    x = baselines.stabilised_planes(quadrant_means, y, op, s, r, b)
    assert x.shape == (32, 32, 3)
    np.testing.assert_allclose(x.mean(axis=(0, 1)), colour, atol=0.02)


def test_the_measured_luminance_puts_each_pixels_measurement_back_and_keeps_the_colours():
    """baselines.measured_luminance with a denoiser that changes nothing: each valid pixel's
    colour becomes its measurement (noise-free counts of another scene, GRBG with gains; s so
    large that the unbiased inverse is the algebraic one: a quarter electron, 4e-5 of x at the
    smallest gain, within atol 1e-4), the other two colours move
    with it in the stabilised domain (their differences 2 sqrt(lambda) from the estimate's
    kept), and a pixel that is not valid keeps the estimate's colours."""
    op = operators.Mosaic("GRBG", gains=(0.6, 1.0, 0.8))
    s, r, b = 1e4, 0.0, 0.0
    # The truth near the estimate, so that no colour that moves with it leaves [0, 1].
    estimate = np.asarray(jax.random.uniform(jax.random.key(3), (8, 10, 3), minval=0.3, maxval=0.6))
    truth = estimate + np.asarray(
        jax.random.uniform(jax.random.key(4), (8, 10, 3), minval=-0.1, maxval=0.1)
    )
    y = np.asarray(op.forward(truth[None]))[0] * s
    valid = np.ones((8, 10, 1), np.float32)
    valid[2, 3] = valid[5, 7] = 0.0
    x = baselines.measured_luminance(lambda unit, sigma: unit, estimate, y, op, s, r, b, valid)
    measured = np.asarray(op.weights(8, 10)) > 0
    ok = valid[..., 0] > 0
    np.testing.assert_allclose(
        x[measured & ok[..., None]], truth[measured & ok[..., None]], rtol=0, atol=1e-4
    )
    root = lambda v: 2 * np.sqrt(s * np.asarray(op.channel_gains) * v)
    differences = lambda v: root(v) - np.sum(root(v) * measured, -1, keepdims=True)
    np.testing.assert_allclose(differences(x)[ok], differences(estimate)[ok], rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(x[~ok], estimate[~ok], rtol=0, atol=1e-4)
    assert np.abs(x - estimate)[ok].max() > 0.05  # the measurements moved it
