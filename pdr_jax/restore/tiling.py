"""Reversible tiling for images of any size: reflection padding, overlapping tiles, smooth blending.

The restoration sampler runs on the whole (padded) image. Its denoiser is wrapped by
`tiled_denoiser`: at every evaluation the image is cut into overlapping tiles, the tiles go
through the network in chunks of `batch`, and the outputs are blended back with smooth windows
(weighted average). Tiles are therefore fused at every sampler step (as in MultiDiffusion,
Bar-Tal et al. 2023), so no seam can build up over the trajectory, and memory is bounded by the
chunk size, not by the image size.

A `TilePlan` records everything needed to invert the transform (JSON-serialisable).

A conditional model (pdr_jax/conditional.py) also needs its conditioning image tile by tile:
`tiled_denoiser(..., cond_image=c)` cuts c at the same origins and calls
denoise_fn(tiles, sigma, cond_tiles).
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np

MIN_SIZE = 8  # smaller images are rejected: reflection padding needs a few pixels to reflect
ACTIVATION_BYTES_PER_PIXEL_PER_CHANNEL = 160


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """How an [H, W, C] image is padded and tiled; `inverse` metadata for reproducibility."""

    height: int
    width: int
    tile: int
    overlap: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    rows: tuple[int, ...]  # tile origins in the padded image
    cols: tuple[int, ...]

    @property
    def padded_shape(self) -> tuple[int, int]:
        return (
            self.height + self.pad_top + self.pad_bottom,
            self.width + self.pad_left + self.pad_right,
        )

    @property
    def num_tiles(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def origins(self) -> np.ndarray:
        """[N, 2] int32 (row, col) origins, row-major."""
        return np.array([(r, c) for r in self.rows for c in self.cols], np.int32)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TilePlan:
        d = json.loads(text)
        return cls(**{**d, "rows": tuple(d["rows"]), "cols": tuple(d["cols"])})


def _axis_plan(size: int, tile: int, stride: int) -> tuple[int, int, tuple[int, ...]]:
    """Padding (before, after) and origins so tiles of `tile` with `stride` cover the axis."""
    if size <= tile:
        total = tile - size
        return total // 2, total - total // 2, (0,)
    count = math.ceil((size - tile) / stride) + 1
    total = (count - 1) * stride + tile - size
    return total // 2, total - total // 2, tuple(i * stride for i in range(count))


def plan_tiles(
    height: int, width: int, *, tile: int = 128, overlap: int = 16, multiple: int = 8
) -> TilePlan:
    """Tiles of `tile` pixels overlapping by `overlap` covering an image padded by reflection.

    `multiple`: the tile size must be a multiple of it (the U-Net's total downsampling).
    """
    if min(height, width) < MIN_SIZE:
        raise ValueError(f"image is {height}x{width}; the minimum is {MIN_SIZE}x{MIN_SIZE} pixels")
    if tile % multiple:
        raise ValueError(
            f"tile {tile} must be a multiple of {multiple} (the network's downsampling)"
        )
    if not 0 <= overlap < tile // 2 + 1:
        raise ValueError(f"overlap {overlap} must be in [0, tile/2] for tile {tile}")
    stride = tile - overlap
    top, bottom, rows = _axis_plan(height, tile, stride)
    left, right, cols = _axis_plan(width, tile, stride)
    if max(top, bottom) >= height or max(left, right) >= width:
        # Reflection cannot pad by more than size - 1: tile a smaller image with a smaller tile.
        raise ValueError(
            f"image {height}x{width} is too small for tile {tile}: use a tile <= {min(height, width)} "
            f"rounded down to a multiple of {multiple}"
        )
    return TilePlan(height, width, tile, overlap, top, bottom, left, right, rows, cols)


def pad(x, plan: TilePlan):
    """[..., H, W, C] -> reflection-padded [..., H', W', C]."""
    widths = [(0, 0)] * (x.ndim - 3) + [
        (plan.pad_top, plan.pad_bottom),
        (plan.pad_left, plan.pad_right),
        (0, 0),
    ]
    return jnp.pad(x, widths, mode="reflect")


def unpad(x, plan: TilePlan):
    """Inverse of `pad`: crop back to [..., H, W, C]."""
    return x[
        ...,
        plan.pad_top : plan.pad_top + plan.height,
        plan.pad_left : plan.pad_left + plan.width,
        :,
    ]


def window(plan: TilePlan) -> np.ndarray:
    """[tile, tile] blending weights: 1 inside, a raised-cosine taper across the overlap.

    Never zero (a floor of 1e-3) so every padded pixel has positive total weight.
    """
    n, o = plan.tile, plan.overlap
    ramp = np.ones(n)
    if o:
        t = (np.arange(o) + 0.5) / o
        taper = 0.5 - 0.5 * np.cos(np.pi * t)
        ramp[:o], ramp[n - o :] = taper, taper[::-1]
    return np.maximum(np.outer(ramp, ramp), 1e-3).astype(np.float32)


def weight_map(plan: TilePlan) -> np.ndarray:
    """[H', W'] sum of tile windows over the padded image."""
    total = np.zeros(plan.padded_shape, np.float32)
    w = window(plan)
    for r, c in plan.origins:
        total[r : r + plan.tile, c : c + plan.tile] += w
    return total


def extract_tiles(x, origins, tile: int):
    """x [H', W', C], origins [N, 2] -> [N, tile, tile, C]."""
    channels = x.shape[-1]
    return jax.vmap(lambda o: jax.lax.dynamic_slice(x, (o[0], o[1], 0), (tile, tile, channels)))(
        origins
    )


@dataclasses.dataclass(frozen=True)
class _TiledApply:
    """Hashable (by value) whole-image denoiser over a plan: jit caches reuse it across calls."""

    plan: TilePlan
    batch: int

    def __call__(self, denoise_fn, cond_image, x, sigma):
        plan, batch, t = self.plan, self.batch, self.plan.tile
        origins = plan.origins
        num_chunks = math.ceil(len(origins) / batch)
        padded = np.concatenate(
            [origins, np.repeat(origins[-1:], num_chunks * batch - len(origins), 0)]
        )
        chunks = jnp.asarray(padded.reshape(num_chunks, batch, 2))
        valid = jnp.asarray(
            (np.arange(num_chunks * batch) < len(origins)).reshape(num_chunks, batch), jnp.float32
        )
        win = jnp.asarray(window(plan))[None, :, :, None]
        inv_weight = jnp.asarray(1.0 / weight_map(plan))[:, :, None]

        def denoise_image(image, cond):
            def chunk(acc, inputs):
                org, ok = inputs
                tiles = extract_tiles(image, org, t)
                out = (
                    denoise_fn(tiles, sigma)
                    if cond is None
                    else denoise_fn(tiles, sigma, extract_tiles(cond, org, t))
                )
                out = out * win * ok[:, None, None, None]

                def add(i, acc):
                    cur = jax.lax.dynamic_slice(
                        acc, (org[i, 0], org[i, 1], 0), (t, t, acc.shape[-1])
                    )
                    return jax.lax.dynamic_update_slice(
                        acc, cur + out[i], (org[i, 0], org[i, 1], 0)
                    )

                return jax.lax.fori_loop(0, batch, add, acc), None

            acc, _ = jax.lax.scan(chunk, jnp.zeros(image.shape, jnp.float32), (chunks, valid))
            return acc * inv_weight

        if x.shape[0] == 1:  # one image (the CLI's case): no vmap, so custom calls run unbatched
            return denoise_image(x[0], None if cond_image is None else cond_image[0])[None]
        if cond_image is None:
            return jax.vmap(lambda image: denoise_image(image, None))(x)
        return jax.vmap(denoise_image)(x, cond_image)


def tiled_denoiser(denoise_fn, plan: TilePlan, *, batch: int = 8, cond_image=None):
    """Wrap denoise_fn(tiles [batch, t, t, C], sigma) into a denoiser of padded images [B, H', W', C].

    cond_image: optional [B, H', W', C'] padded conditioning image; its tiles are cut at the same
    origins and passed along: denoise_fn(tiles, sigma, cond_tiles [batch, t, t, C']). `sigma`
    is passed through unchanged, so a discrete model's timestep t works as well.

    Tiles are processed `batch` at a time in a lax.scan (one compiled network call shape; the
    last chunk is padded and masked); each chunk's windowed outputs are accumulated and the sum
    is divided by the weight map. Returns a `jax.tree_util.Partial`: pass `denoise_fn` as a
    Partial too, so that the arrays it carries are traced inputs of the sampler, not constants.
    """
    if not isinstance(denoise_fn, jax.tree_util.Partial):
        denoise_fn = jax.tree_util.Partial(denoise_fn)
    return jax.tree_util.Partial(_TiledApply(plan, batch), denoise_fn, cond_image)


# The processing resolution.


def choose_tile(
    height: int,
    width: int,
    *,
    resolution: int,
    multiple: int,
    model_channels: int,
    batch: int,
    memory_budget_mb: float = 2048.0,
) -> int:
    """The processing resolution (tile size): the largest that the network and memory allow.

    Candidates are multiples of the network's downsampling factor `multiple` (at least 8), from
    32 up to the network's `resolution` and the image's shorter side; a chunk of `batch` tiles
    must fit `memory_budget_mb`, estimated as ACTIVATION_BYTES_PER_PIXEL_PER_CHANNEL *
    model_channels bytes per tile pixel (about the peak of the U-Net's forward pass in float32,
    measured on the CPU for channel_mult (1, 2, 2, 2)). The largest tile gives the prior the
    most context and the least overlap to recompute; smaller tiles were not faster per pixel.
    An image no larger than the network is therefore restored as one tile, exactly as the
    benchmark restores its crops.
    """
    multiple = max(multiple, 8)
    largest = min(resolution, min(height, width))
    candidates = list(range(32, largest + 1, multiple)) or [
        max(multiple, (largest // multiple) * multiple)
    ]
    per_pixel = ACTIVATION_BYTES_PER_PIXEL_PER_CHANNEL * model_channels
    fitting = [t for t in candidates if batch * t * t * per_pixel <= memory_budget_mb * 2**20]
    if not fitting:
        raise ValueError(
            f"no tile size fits {memory_budget_mb} MB with batch {batch}: lower --batch or raise the budget"
        )
    return max(fitting)
