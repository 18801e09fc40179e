"""pdr_jax.restore.composite: the opponent-colour denoiser made of a grayscale prior, and the
self-ensemble over flips and transposes.

The grayscale prior here is per pixel z ~ N(0, TAU^2) (model space), whose exact denoiser is
the shrinkage TAU^2 / (TAU^2 + sigma^2) z. A colour image whose opponent channels are each such
a prior, x = M^-1 o with o ~ N(0, TAU^2 I), has the RGB covariance C = TAU^2 M^-1 M^-T, and its
exact denoiser is C (C + sigma^2 I)^-1 x, computed here in RGB without the opponent transform:
OpponentPrior must equal it, which holds only if every opponent channel is denoised at sigma
times its row's norm.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from function_prior import FunctionPrior, shrinkage
from jax.tree_util import Partial

from pdr_jax import baselines
from pdr_jax.physics import noise, operators
from pdr_jax.restore import (
    MOSAIC_SAMPLER,
    GuidanceSettings,
    Physics,
    SamplerSettings,
    TilingSettings,
    restore,
)
from pdr_jax.restore.composite import (
    LUMA_GAIN,
    NOISE_GAIN,
    OPPONENT,
    LumaChromaPrior,
    OpponentPrior,
    SelfEnsemble,
    from_opponent,
    to_opponent,
)
from pdr_jax.restore.restoration import _unit_denoiser, noise_level

TAU = 0.1


_shrink = functools.partial(shrinkage, mean=0.0, var=TAU**2)


def test_opponent_rows_are_orthogonal_so_white_noise_stays_white():
    """Cov(M n) = M M^T for white n: diagonal, with the rows' squared norms (NOISE_GAIN^2)."""
    np.testing.assert_allclose(OPPONENT @ OPPONENT.T, np.diag(NOISE_GAIN**2), atol=1e-7)
    x = jax.random.uniform(jax.random.key(0), (2, 5, 7, 3))
    np.testing.assert_allclose(from_opponent(to_opponent(x)), x, atol=1e-6)
    # Mid-grey maps to 0 and the model range [-1, 1] of every channel stays within [-1, 1].
    corners = np.array(np.meshgrid(*[[-1.0, 1.0]] * 3)).reshape(3, -1).T
    assert np.abs(to_opponent(jnp.asarray(corners, jnp.float32))).max() <= 1 + 1e-6


def test_opponent_prior_is_the_exact_denoiser_of_its_colour_prior():
    """Against C (C + sigma^2 I)^-1 x in RGB, for a batch of images at different sigmas."""
    x = jax.random.normal(jax.random.key(1), (3, 4, 6, 3))
    sigma = jnp.asarray([0.05, 0.4, 2.0])
    denoise = OpponentPrior(FunctionPrior(_shrink)).sampler_args(Physics(10.0, 1.0), 3)[
        "denoise_fn"
    ]
    inverse = np.linalg.inv(OPPONENT.astype(np.float64))
    cov = TAU**2 * inverse @ inverse.T
    expected = [
        np.asarray(x[i], np.float64) @ (cov @ np.linalg.inv(cov + float(s) ** 2 * np.eye(3))).T
        for i, s in enumerate(sigma)
    ]
    np.testing.assert_allclose(denoise(x, sigma), np.stack(expected), rtol=1e-4, atol=1e-6)
    # A scalar sigma is every image's.
    np.testing.assert_allclose(denoise(x, 0.4)[1], expected[1], rtol=1e-4, atol=1e-6)


def _unchanged(x, sigma):
    """A denoiser that returns its input."""
    del sigma
    return x


def _mix(x, sigma):
    """A colour denoiser that mixes channels and depends on sigma: anything non-trivial."""
    sigma = jnp.reshape(jnp.asarray(sigma, jnp.float32), (-1, 1, 1, 1))
    mixing = jnp.asarray([[0.6, 0.2, 0.1], [0.1, 0.7, 0.0], [0.3, 0.1, 0.5]])
    return (x @ mixing) / (1 + sigma)


def test_luma_chroma_takes_the_gray_prior_luminance_and_the_colour_prior_chrominance():
    x = jax.random.normal(jax.random.key(2), (2, 4, 6, 3))
    sigma = jnp.asarray([0.1, 0.8])
    prior = LumaChromaPrior(FunctionPrior(_shrink), FunctionPrior(_mix, 3))
    out = to_opponent(prior.sampler_args(Physics(10.0, 1.0), 2)["denoise_fn"](x, sigma))
    scaled = LUMA_GAIN * sigma[:, None, None, None]
    np.testing.assert_allclose(
        out[..., :1], TAU**2 / (TAU**2 + scaled**2) * to_opponent(x)[..., :1], rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        out[..., 1:], to_opponent(_mix(x, sigma))[..., 1:], rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="a grayscale and a colour prior, got priors of 3 and 1"):
        LumaChromaPrior(FunctionPrior(_shrink, 3), FunctionPrior(_shrink))


def test_luma_gain_is_the_luminance_noise_of_a_demosaicked_start():
    """White noise of std 1 on an RGGB mosaic, demosaicked as the start does (Mosaic.fill):
    its luminance std over the start's sigma factor is LUMA_GAIN (0.91 / 1.25), not the
    1/sqrt(3) of white RGB noise; 5 % room for the 128 x 128 draw (its std is within 1 %)."""
    mosaic = operators.Mosaic("RGGB")
    white = np.random.default_rng(0).normal(0, 1, (128, 128, 1))
    luma_std = (mosaic.fill(white) @ OPPONENT[0]).std()
    assert luma_std / mosaic.start_sigma_factor == pytest.approx(LUMA_GAIN, rel=0.05)
    assert abs(LUMA_GAIN - NOISE_GAIN[0]) > 0.1


def test_opponent_prior_needs_a_grayscale_prior_and_counts_its_three_rows_for_memory():
    with pytest.raises(ValueError, match="grayscale prior, got one of 3 channels"):
        OpponentPrior(FunctionPrior(_shrink, 3))
    # tiling.choose_tile sizes tiles by model_channels: three network rows per image row.
    assert (
        OpponentPrior(FunctionPrior(_shrink)).model_channels
        == 3 * FunctionPrior(_shrink).model_channels
    )


def _lopsided(x, sigma):
    """Not equivariant to any flip or transpose: a cumulative sum down and a ramp across."""
    ramp = jnp.linspace(0.5, 1.5, x.shape[2])[None, None, :, None]
    return jnp.cumsum(x, axis=1) * ramp + sigma


def _group(x):
    """The 8 transforms of the square on x [H, W, C] as (forward, inverse) pairs (numpy)."""
    out = []
    for k in range(4):
        for flip in (False, True):

            def forward(v, k=k, flip=flip):
                v = np.rot90(v, k)
                return v[:, ::-1] if flip else v

            def inverse(v, k=k, flip=flip):
                return np.rot90(v[:, ::-1] if flip else v, -k)

            out.append((forward, inverse))
    return out


@pytest.mark.parametrize("shape", [(2, 6, 6, 3), (1, 4, 10, 1)])
def test_self_ensemble_is_the_mean_over_the_flips_and_transposes(shape):
    x = np.asarray(jax.random.normal(jax.random.key(2), shape))
    sigma = 0.25
    ensemble = SelfEnsemble(FunctionPrior(_lopsided, shape[-1]), 8)
    denoise = jax.jit(lambda fn, v: fn(v, sigma))
    got = denoise(ensemble.sampler_args(Physics(10.0, 1.0), shape[0])["denoise_fn"], x)
    expected = [
        np.mean(
            [inv(np.asarray(_lopsided(fwd(image)[None], sigma))[0]) for fwd, inv in _group(image)],
            axis=0,
        )
        for image in x
    ]
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-5, atol=1e-5)
    # Two transforms: the image and its left-right mirror.
    two = SelfEnsemble(FunctionPrior(_lopsided, shape[-1]), 2).sampler_args(None, 1)["denoise_fn"]
    mirror = np.asarray(_lopsided(x[:, :, ::-1], sigma))[:, :, ::-1]
    np.testing.assert_allclose(two(x, sigma), (_lopsided(x, sigma) + mirror) / 2, rtol=1e-5)
    # An equivariant denoiser is unchanged by it.
    same = SelfEnsemble(FunctionPrior(_shrink, shape[-1]), 8).sampler_args(None, 1)["denoise_fn"]
    np.testing.assert_allclose(same(x, sigma), _shrink(x, sigma), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one of"):
        SelfEnsemble(FunctionPrior(_shrink), 3)


def test_restore_with_the_opponent_prior_of_colour_images():
    """The exact prior of the truth, measured at s = 100, restored from noise with x0 guidance:
    the MSE is near the posterior mean's (theory: 0.6 of the noisy estimate's; measured 0.593
    on these 32 x 32 x 3 values, whose ratio has a std of about 3 %; bound 0.7), and the
    self-ensemble of this equivariant prior restores the same image."""
    inverse = np.linalg.inv(OPPONENT)
    opponent = np.asarray(jax.random.normal(jax.random.key(3), (32, 32, 3))) * TAU
    x_true = np.clip((opponent @ inverse.T + 1) / 2, 0, 1).astype(np.float32)
    s, r = 100.0, 2.0
    y = np.asarray(noise.simulate(jax.random.key(4), x_true, s, r, 0.0))
    images = [
        restore(
            prior,
            y,
            physics=Physics(s, r),
            guidance=GuidanceSettings(schedule="isotropic", grad_clip=10.0),
            sampler=SamplerSettings(start="noise", solver="heun", num_steps=18, latent_scale=0.0),
            tiling_settings=None,
        ).image
        for prior in (
            OpponentPrior(FunctionPrior(_shrink)),
            SelfEnsemble(OpponentPrior(FunctionPrior(_shrink)), 8),
        )
    ]
    assert images[0].shape == (32, 32, 3)
    ratio = np.mean((images[0] - x_true) ** 2) / np.mean((y / s - x_true) ** 2)
    assert ratio < 0.7
    np.testing.assert_allclose(images[1], images[0], atol=1e-5)


def _ramp(x, sigma):
    """A per-pixel denoiser that is not flip-equivariant: it weighs columns 0.5 ... 1."""
    sigma = jnp.reshape(jnp.asarray(sigma, jnp.float32), (-1, 1, 1, 1))
    return x * jnp.linspace(0.5, 1.0, x.shape[2])[None, None, :, None] / (1 + sigma**2)


def test_estimate_ensemble_averages_the_one_call_result_only_where_it_is_the_result():
    """SamplerSettings(estimate_ensemble=8) restores as SelfEnsemble(prior, 8) where the
    sampler does not refine (8 network calls counted), and as the plain prior where it does."""
    y = np.asarray(
        noise.simulate(jax.random.key(5), np.full((16, 20, 1), 0.5, np.float32), 200.0, 2.0, 0.0)
    )
    physics, prior = Physics(200.0, 2.0), FunctionPrior(_ramp)
    run = lambda denoiser, **sampler: restore(
        denoiser,
        y,
        physics=physics,
        sampler=SamplerSettings(**sampler),
        tiling_settings=None,
        key=jax.random.key(0),
    )
    ensembled = run(prior, estimate_ensemble=8)
    assert ensembled.report["network_calls"] == 8 and not ensembled.report["refined"]
    alone = dict(estimate_ensemble=1)
    np.testing.assert_allclose(
        ensembled.image, run(SelfEnsemble(prior, 8), **alone).image, atol=1e-6
    )
    assert np.abs(ensembled.image - run(prior, **alone).image).max() > 1e-3  # flips matter here
    assert SamplerSettings().estimate_ensemble == 8  # the default
    # Tiled, the flips act within each tile, as SelfEnsemble's do.
    tiles = dict(physics=physics, tiling_settings=TilingSettings(tile=8, overlap=2))
    np.testing.assert_allclose(
        restore(prior, y, sampler=SamplerSettings(estimate_ensemble=8), **tiles).image,
        restore(SelfEnsemble(prior, 8), y, sampler=SamplerSettings(**alone), **tiles).image,
        atol=1e-6,
    )
    refined = run(prior, estimate_ensemble=8, refine_min_noise=0.0)
    np.testing.assert_array_equal(
        refined.image, run(prior, refine_min_noise=0.0, estimate_ensemble=1).image
    )
    with pytest.raises(ValueError, match="estimate_ensemble must be one of"):
        SamplerSettings(estimate_ensemble=3)


def test_polish_denoises_the_unrefined_estimate_once_more_at_each_images_noise_level():
    """SamplerSettings.polish_factor f > 0: where the one-call estimate is the result, it is
    denoised again, each image at f times its own noise_level (two images of different
    brightness: two sigmas), with the estimate's ensemble (its calls counted twice); where
    the sampler refines, nothing changes. Mosaics have it by default, nothing else."""
    clean = np.stack([np.full((16, 20, 1), v, np.float32) for v in (0.2, 0.8)])
    y = np.asarray(noise.simulate(jax.random.key(9), clean, 200.0, 2.0, 0.0))
    physics, prior = Physics(200.0, 2.0), FunctionPrior(_shrink)
    run = lambda denoiser=prior, **sampler: restore(
        denoiser,
        y,
        physics=physics,
        sampler=SamplerSettings(**{"estimate_ensemble": 1, "conserve_flux": "off", **sampler}),
        tiling_settings=None,
        key=jax.random.key(0),
    )
    plain, polished = run(), run(polish_factor=0.3)
    levels = [noise_level(y[i : i + 1], physics) for i in range(2)]
    assert levels[1] > 1.5 * levels[0]
    expected = [
        (_shrink(jnp.asarray(2 * plain.image[i : i + 1] - 1), 0.3 * levels[i]) + 1) / 2
        for i in range(2)
    ]
    np.testing.assert_allclose(polished.image, np.concatenate(expected), atol=1e-6)
    assert np.abs(polished.image - plain.image).max() > 1e-3
    assert (plain.report["network_calls"], polished.report["network_calls"]) == (1, 2)
    # With the ensemble: 8 + 8 calls (a per-pixel denoiser: the flips change nothing).
    ensembled = run(polish_factor=0.3, estimate_ensemble=8)
    assert ensembled.report["network_calls"] == 16
    np.testing.assert_allclose(ensembled.image, polished.image, atol=1e-6)
    refined = dict(refine_min_noise=0.0)
    np.testing.assert_array_equal(run(polish_factor=0.3, **refined).image, run(**refined).image)
    assert (SamplerSettings().polish_factor, MOSAIC_SAMPLER.polish_factor) == (0.0, 0.2)
    with pytest.raises(ValueError, match="polish_factor >= 0"):
        SamplerSettings(polish_factor=-0.1)


def test_a_mosaics_unrefined_estimate_takes_its_luminance_from_the_measured_pixels():
    """SamplerSettings.measured_luminance: where a mosaic's one-call estimate is the result and
    the denoiser has a grayscale prior (LumaChromaPrior), the estimate goes through
    baselines.measured_luminance with that prior at the measured pixels' own noise level (its
    ensemble's calls counted again); not where the sampler refines, not without a grayscale
    prior; MOSAIC_SAMPLER has it."""
    op = operators.Mosaic("GRBG", gains=(0.6, 1.0, 0.8))
    s, r = 400.0, 2.0
    x_true = jax.random.uniform(jax.random.key(7), (1, 16, 20, 3), minval=0.2, maxval=0.8)
    y = np.asarray(noise.simulate(jax.random.key(8), op.forward(x_true), s, r, 0.0))[0]
    gray = FunctionPrior(_shrink)
    run = lambda denoiser, **sampler: restore(
        denoiser,
        y,
        physics=Physics(s, r, operator=op),
        sampler=SamplerSettings(
            **{"num_steps": 0, "estimate_ensemble": 1, "conserve_flux": "off", **sampler}
        ),
        tiling_settings=None,
    )
    prior = LumaChromaPrior(gray, FunctionPrior(_mix, 3))
    plain, lit = run(prior), run(prior, measured_luminance=True)
    assert lit.report["measured_luminance"] and not plain.report["measured_luminance"]
    assert (plain.report["network_calls"], lit.report["network_calls"]) == (1, 2)
    unit = _unit_denoiser(Partial(_shrink), 1.0, [])
    valid = np.ones((16, 20, 1), np.float32)
    expected = baselines.measured_luminance(unit, plain.image, y, op, s, r, 0.0, valid)
    np.testing.assert_allclose(lit.image, expected, atol=1e-5)
    assert np.abs(lit.image - plain.image).max() > 1e-2
    assert run(prior, measured_luminance=True, estimate_ensemble=8).report["network_calls"] == 16
    refined = dict(measured_luminance=True, num_steps=2, refine_min_noise=0.0)
    assert not run(prior, **refined).report["measured_luminance"]
    colour_alone = run(FunctionPrior(_mix, 3), measured_luminance=True)
    assert not colour_alone.report["measured_luminance"]
    assert MOSAIC_SAMPLER.measured_luminance and not SamplerSettings().measured_luminance
    # With a grayscale prior that changes nothing and counts so high that the unbiased inverse
    # is the algebraic one (within a quarter electron: 4e-5 of x), each pixel's own colour is
    # its measurement, tiled or not: 8 px tiles on 17 x 21 pad the canvas by 1 row on top and
    # 2 columns on the left, so the padded origin shifts the CFA phase.
    clean = jax.random.uniform(jax.random.key(9), (1, 17, 21, 3), minval=0.2, maxval=0.8)
    counts = np.asarray(op.forward(clean))[0] * 1e4
    own = np.asarray(op.weights(17, 21)) > 0
    identity = LumaChromaPrior(FunctionPrior(_unchanged), FunctionPrior(_mix, 3))
    for tiles in (None, TilingSettings(tile=8, overlap=2)):
        exact = restore(
            identity,
            counts,
            physics=Physics(1e4, 0.0, operator=op),
            sampler=SamplerSettings(
                num_steps=0, estimate_ensemble=1, conserve_flux="off", measured_luminance=True
            ),
            tiling_settings=tiles,
        )
        assert exact.report["measured_luminance"]
        np.testing.assert_allclose(exact.image[own], np.asarray(clean)[0][own], rtol=0, atol=1e-4)


def test_a_noisy_mosaic_starts_from_the_mean_of_both_orders():
    """Where a mosaic's noise level reaches planes_min_noise, LumaChromaPrior's start averages
    the demosaicked-then-denoised estimate with its Bayer planes denoised by the grayscale prior
    (white noise: at estimate_sigma_factor times sigma_v, no start_sigma_factor), then
    demosaicked (two calls); below it, or for a denoiser without a grayscale prior, the first
    alone (one call)."""
    op = operators.Mosaic("GRBG", gains=(0.6, 1.0, 0.8))
    s, r = 5.0, 2.0
    x_true = jax.random.uniform(jax.random.key(7), (1, 16, 20, 3), minval=0.2, maxval=0.8)
    y = np.asarray(noise.simulate(jax.random.key(8), op.forward(x_true), s, r, 0.0))[0]
    prior = LumaChromaPrior(FunctionPrior(_shrink), FunctionPrior(_mix, 3))
    run = lambda denoiser, tiles=None, **sampler: restore(
        denoiser,
        y,
        physics=Physics(s, r, operator=op),
        # The start itself: these closed-form denoisers shrink, and the flux scale would
        # double it (conserve_flux is tested in test_restoration.py).
        sampler=SamplerSettings(num_steps=0, estimate_ensemble=1, conserve_flux="off", **sampler),
        tiling_settings=tiles,
    )
    both, first = run(prior, planes_min_noise=0.5), run(prior)
    assert both.report["noise_level"] > 0.5 and both.report["planes_start"]
    assert (both.report["network_calls"], first.report["network_calls"]) == (2, 1)
    assert not first.report["planes_start"]  # SamplerSettings().planes_min_noise: inf
    factor = SamplerSettings().estimate_sigma_factor

    def plane_unit(unit, sigma_v):
        model = jnp.asarray(2 * unit[None] - 1, jnp.float32)
        return (np.asarray(_shrink(model, 2 * factor * sigma_v))[0] + 1) / 2

    planes = baselines.stabilised_planes(plane_unit, y, op, s, r, 0.0)
    assert np.abs(planes - first.image).max() > 0.05  # two different estimates
    np.testing.assert_allclose(both.image, (first.image + planes) / 2, atol=1e-5)
    # Re-noised from the planes' sigma_v: the unit noise over the stabilised mosaic's range.
    stabilised = baselines.gat_forward(y.astype(np.float64), r)
    sigma_v = 1 / (stabilised.max() - stabilised.min())
    start = SamplerSettings().start_factor * 2 * sigma_v
    assert both.report["start_sigma"] == pytest.approx(start, rel=1e-5)
    assert first.report["start_sigma"] != pytest.approx(start, rel=0.05)  # Menon's range
    # Tiled: the planes are one image of the padded canvas's shape, through the same tiles.
    tiled = run(prior, TilingSettings(tile=8, overlap=2), planes_min_noise=0.5)
    assert tiled.report["planes_start"] and tiled.report["num_tiles"] > 1
    assert tiled.report["network_calls"] == 2
    assert not run(FunctionPrior(_mix, 3), planes_min_noise=0.0).report["planes_start"]
    ensembled = SelfEnsemble(prior, 2).plane_prior
    assert isinstance(ensembled, SelfEnsemble) and ensembled.size == 2
