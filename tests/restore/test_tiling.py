"""Tiling: exact inverse, every pixel covered, no seams with a tile-local denoiser."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdr_jax.restore import tiling


@pytest.mark.parametrize(
    "shape, tile, overlap",
    [((301, 517), 64, 16), ((64, 64), 64, 8), ((9, 200), 8, 2), ((130, 70), 32, 0)],
)
def test_identity_denoiser_round_trip_is_exact(shape, tile, overlap):
    x = jax.random.uniform(jax.random.key(0), (*shape, 1))
    plan = tiling.plan_tiles(*shape, tile=tile, overlap=overlap)
    denoise = jax.jit(tiling.tiled_denoiser(lambda tiles, sigma: tiles, plan, batch=4))
    y = tiling.unpad(denoise(tiling.pad(x, plan)[None], 1.0)[0], plan)
    assert y.shape == x.shape
    assert float(jnp.max(jnp.abs(y - x)) / jnp.max(jnp.abs(x))) <= 1e-5
    # The plan is JSON metadata that reproduces itself.
    assert tiling.TilePlan.from_json(plan.to_json()) == plan
    json.loads(plan.to_json())


def test_tiles_cover_the_padded_image():
    plan = tiling.plan_tiles(301, 517, tile=64, overlap=16)
    assert plan.padded_shape[0] >= 301 and plan.padded_shape[1] >= 517
    assert np.all(tiling.weight_map(plan) > 0)
    assert plan.rows[-1] + 64 == plan.padded_shape[0] and plan.cols[-1] + 64 == plan.padded_shape[1]


@pytest.mark.parametrize(
    "shape, kwargs, message",
    [
        ((1, 1), dict(tile=64), "minimum is 8x8"),
        ((100, 100), dict(tile=60), "multiple of 8"),
        ((100, 100), dict(tile=64, overlap=40), "overlap 40"),
        ((20, 300), dict(tile=64), "too small for tile 64"),
    ],
)
def test_bad_sizes_are_rejected_with_the_reason(shape, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiling.plan_tiles(*shape, **kwargs)


def test_no_seam_with_a_tile_local_denoiser():
    """A 5x5 box blur computed per tile with zero padding is wrong at every tile edge. Blended
    with tapered windows, what is left at the tile edges is a small fraction of the seam that
    plain stitching leaves."""
    size, tile, overlap = 160, 32, 12
    yy, xx = np.mgrid[:size, :size] / size
    x = jnp.asarray((0.5 + 0.3 * np.sin(7 * xx) * np.cos(5 * yy))[..., None], jnp.float32)
    box = jnp.ones((5, 5, 1, 1), jnp.float32) / 25

    def blur(images, sigma):
        return jax.lax.conv_general_dilated(
            images, box, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    plan = tiling.plan_tiles(size, size, tile=tile, overlap=overlap)
    tiled = tiling.unpad(
        jax.jit(tiling.tiled_denoiser(blur, plan, batch=8))(tiling.pad(x, plan)[None], 1.0)[0], plan
    )
    reference = tiling.unpad(
        blur(tiling.pad(x, plan)[None], 1.0)[0], plan
    )  # the whole image at once
    err = np.abs(np.asarray(tiled - reference))[..., 0]
    # Pixels within 2 of an interior tile border (in image coordinates): where a tile starts
    # (`starts`; plain stitching shows its seam there, the later tile overwriting the earlier
    # one) and also where one ends (`edges`).
    starts, edges = np.zeros((size, size), bool), np.zeros((size, size), bool)
    for r in plan.rows[1:]:
        starts[max(r - plan.pad_top - 2, 0) : r - plan.pad_top + 3, :] = True
    for c in plan.cols[1:]:
        starts[:, max(c - plan.pad_left - 2, 0) : c - plan.pad_left + 3] = True
    for r in plan.rows[:-1]:
        edges[max(r + tile - plan.pad_top - 3, 0) : r + tile - plan.pad_top + 2, :] = True
    for c in plan.cols[:-1]:
        edges[:, max(c + tile - plan.pad_left - 3, 0) : c + tile - plan.pad_left + 2] = True
    edges |= starts
    inner = np.zeros((size, size), bool)
    inner[8:-8, 8:-8] = (
        True  # leave out the image frame, where reflection differs from zero padding
    )
    stitched = np.zeros(plan.padded_shape)
    blurred = np.asarray(
        blur(tiling.extract_tiles(tiling.pad(x, plan), jnp.asarray(plan.origins), tile), 1.0)
    )[..., 0]
    for (r, c), t in zip(plan.origins, blurred):
        stitched[r : r + tile, c : c + tile] = t
    stitched_err = np.abs(
        np.asarray(tiling.unpad(jnp.asarray(stitched)[..., None], plan))[..., 0]
        - np.asarray(reference)[..., 0]
    )
    seam = stitched_err[starts & inner].max()
    # The taper weighs a tile's wrong edge pixels by <= 4 % (raised cosine over 12 px): blended
    # edges keep 2.4 % of the stitched seam (2.4-2.5 % for other images); an untapered window
    # keeps 57 %. (Edges where tiles start against edges where they end, the former check, came
    # out 0.98-1.05 of each other.)
    assert err[edges & inner].max() < 0.05 * seam, (err[edges & inner].max(), seam)
    # Away from the edges only rounding differs: <= 1.8e-7.
    assert err[~edges & inner].max() < 1e-6


def test_several_images_equal_one_at_a_time():
    """B > 1 images go through vmap, a single image does not: both give the same result."""
    plan = tiling.plan_tiles(40, 56, tile=16, overlap=4)
    fn = lambda tiles, sigma: jnp.tanh(tiles * sigma) + tiles.mean(axis=(1, 2), keepdims=True)
    denoise = jax.jit(tiling.tiled_denoiser(fn, plan, batch=4))
    x = jnp.stack(
        [tiling.pad(jax.random.uniform(jax.random.key(i), (40, 56, 2)), plan) for i in (1, 2)]
    )
    both = denoise(x, 0.5)
    one_by_one = jnp.concatenate([denoise(x[:1], 0.5), denoise(x[1:], 0.5)])
    # Values ~1; the paths round differently by <= 5.4e-7 (keys 1-40); swapped images: 0.49.
    np.testing.assert_allclose(both, one_by_one, atol=1e-5, rtol=0)


def test_choose_tile_takes_the_largest_tile_the_network_image_and_memory_allow():
    per_tile = lambda t, channels=32: (
        t * t * tiling.ACTIVATION_BYTES_PER_PIXEL_PER_CHANNEL * channels
    )
    kwargs = dict(resolution=128, multiple=8, model_channels=32, batch=8)
    assert tiling.choose_tile(4096, 4096, **kwargs) == 128  # the network's resolution
    assert tiling.choose_tile(100, 4096, **kwargs) == 96  # the shorter side, to the multiple
    assert tiling.choose_tile(20, 20, **kwargs) == 16  # below 32: the side rounded down
    # The memory budget: 8 tiles of 96 fit, 8 of 104 do not.
    budget = (8 * per_tile(96) + 8 * per_tile(104)) / 2 / 2**20
    assert tiling.choose_tile(4096, 4096, **kwargs, memory_budget_mb=budget) == 96
    assert (
        tiling.choose_tile(4096, 4096, **{**kwargs, "multiple": 2}, memory_budget_mb=budget) == 96
    )
    with pytest.raises(ValueError, match="no tile size fits"):
        tiling.choose_tile(4096, 4096, **kwargs, memory_budget_mb=8 * per_tile(31) / 2**20)
