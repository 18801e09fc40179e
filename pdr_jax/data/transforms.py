"""Small named per-example transforms for the Grain chain (numpy only: they run in Grain workers).

An example travels through the chain as a dict:

    RandomCrop / FixedCrop   Frame -> {"clean": [H, W, 1] float32 in [0, 1], "domain": int32,
                                       "ranges": ConditioningRanges}
    RandomDihedral           flips and rot90 of "clean" (one of the 8 symmetries of the square)
    SampleConditioning       + "s", "r", "b" float32 and "cond" [D + 3] float32 (label dropout)
    SimulatePoissonGaussian  + "noisy" [H, W, 1] float32 electrons  (paired mode)
    SelectKeys               keeps only the keys the batch exposes

Randomness comes from the ``np.random.Generator`` that ``grain.MapDataset.random_map`` hands
each transform; Grain seeds it from the pipeline seed and the example's index, so an example
is the same whichever process or worker computes it. No jax arrays here: Grain workers must not
initialise an accelerator backend, so the conditioning vector is the one formula,
``pdr_jax.physics.conditioning.conditioning_vector``, computed with numpy (``xp=np``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from pdr_jax.physics.conditioning import DEFAULT_SPEC, ConditioningSpec, conditioning_vector


@dataclasses.dataclass(frozen=True)
class ConditioningRanges:
    """Where (s, r, b) are drawn from for one domain or source (electrons).

    s and r are log-uniform on [lo, hi] (r uniform when lo == 0); b is uniform on [lo, hi].
    lo == hi fixes the value.
    """

    s: tuple[float, float]
    r: tuple[float, float]
    b: tuple[float, float]

    def __post_init__(self):
        for name in ("s", "r", "b"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} range must satisfy 0 <= lo <= hi, got {(lo, hi)}")
        if self.s[0] <= 0:
            raise ValueError(f"s range must be positive, got {self.s}")


def held_out_columns(width: int, val_fraction: float) -> int:
    """How many right-most columns of an image are held out for validation: round(W * f)."""
    return round(width * val_fraction)


def split_columns(width: int, split: str, val_fraction: float, which: str) -> tuple[int, int]:
    """Column range [x0, x1) of an image usable for `which` ("train" or "val").

    split is the source's rule: "columns" holds out the right-most val_fraction of every image,
    "train"/"val" give the whole image to that split only. An empty range means none.
    """
    if split == "columns":
        cut = width - held_out_columns(width, val_fraction)
        return (0, cut) if which == "train" else (cut, width)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'columns', 'train' or 'val', got {split!r}")
    return (0, width) if split == which else (0, 0)


def crop(frame, y: int, x: int, size: int, x_range: tuple[int, int]) -> np.ndarray:
    """[size, size, 1] float32 patch of `frame` at (y, x), confined to columns x_range.

    A region smaller than the patch (a held-out strip narrower than the stage resolution, say)
    is filled by mirror padding instead of reading outside it, so crops never cross the split.
    """
    x0, x1 = x_range
    rows = slice(max(y, 0), min(y + size, frame.height))
    cols = slice(max(x, x0), min(x + size, x1))
    patch = frame.read(rows, cols)
    pad_h, pad_w = size - patch.shape[0], size - patch.shape[1]
    if pad_h or pad_w:
        patch = np.pad(patch, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
    return patch


def _start(rng: np.random.Generator, lo: int, hi: int, size: int) -> int:
    """A random start in [lo, hi - size]; lo when the range is shorter than the patch."""
    return int(rng.integers(lo, hi - size + 1)) if hi - lo > size else lo


class RandomCrop(grain.transforms.RandomMap):
    """Frame -> example with a uniformly placed [size, size, 1] patch from the training columns."""

    def __init__(self, size: int, val_fraction: float):
        self.size = size
        self.val_fraction = val_fraction

    def random_map(self, frame, rng: np.random.Generator) -> dict[str, Any]:
        x_range = split_columns(frame.width, frame.split, self.val_fraction, "train")
        y = _start(rng, 0, frame.height, self.size)
        x = _start(rng, *x_range, self.size)
        return {
            "clean": crop(frame, y, x, self.size, x_range),
            "domain": np.int32(frame.domain),
            "ranges": frame.ranges,
        }


@dataclasses.dataclass(frozen=True)
class CropSpec:
    """One fixed validation crop: which frame, where, and whether it counts (not padding)."""

    frame: Any
    y: int
    x: int
    x_range: tuple[int, int]
    valid: bool = True


def val_crops(frame, size: int, val_fraction: float, max_crops: int) -> list[CropSpec]:
    """A fixed grid of up to max_crops non-overlapping crops inside the frame's held-out columns.

    Rows and columns of the grid are spread evenly over the region; a region smaller than the
    patch gives one mirror-padded crop.
    """
    x_range = split_columns(frame.width, frame.split, val_fraction, "val")
    if x_range[1] <= x_range[0]:
        return []
    ys = _grid(0, frame.height, size)
    xs = _grid(*x_range, size)
    grid = [(y, x) for y in ys for x in xs]
    keep = np.unique(np.linspace(0, len(grid) - 1, min(max_crops, len(grid))).round().astype(int))
    return [CropSpec(frame, *grid[i], x_range) for i in keep]


def _grid(lo: int, hi: int, size: int) -> list[int]:
    count = max(1, (hi - lo) // size)
    if count == 1:
        return [lo + max(0, (hi - lo - size) // 2)]
    return [int(v) for v in np.linspace(lo, hi - size, count).round()]


class FixedCrop(grain.transforms.Map):
    """CropSpec -> example with that crop and a "valid" flag (False for padding repeats)."""

    def __init__(self, size: int):
        self.size = size

    def map(self, spec: CropSpec) -> dict[str, Any]:
        return {
            "clean": crop(spec.frame, spec.y, spec.x, self.size, spec.x_range),
            "domain": np.int32(spec.frame.domain),
            "ranges": spec.frame.ranges,
            "valid": np.bool_(spec.valid),
        }


class RandomDihedral(grain.transforms.RandomMap):
    """Random horizontal flip and rot90 of "clean": all 8 symmetries of the square, equally likely."""

    def random_map(self, example: dict, rng: np.random.Generator) -> dict:
        k = int(rng.integers(8))
        x = np.rot90(example["clean"], k % 4, axes=(0, 1))
        x = x[:, ::-1] if k >= 4 else x
        return {**example, "clean": np.ascontiguousarray(x)}


class RandomGamma(grain.transforms.RandomMap):
    """Photographs in linear light or gamma-encoded, at random: "clean" (the file's sRGB-encoded
    values) is decoded to linear intensity and re-encoded as linear ** (1 / gamma), gamma
    log-uniform in `ranges[domain]` (1: linear, what a RAW sensor counts; ~2.2: the 8-bit
    encoding that many users feed in as intensities). Domains without a range pass unchanged."""

    def __init__(self, ranges: dict[int, tuple[float, float]]):
        for lo, hi in ranges.values():
            if not 0 < lo <= hi:
                raise ValueError(f"gamma range must satisfy 0 < lo <= hi, got ({lo}, {hi})")
        self.ranges = dict(ranges)

    def random_map(self, example: dict, rng: np.random.Generator) -> dict:
        from pdr_jax.physics.calibration import srgb_to_linear

        gamma_range = self.ranges.get(int(example["domain"]))
        if gamma_range is None:
            return example
        gamma = _log_uniform(rng, *gamma_range)
        x = srgb_to_linear(example["clean"]) ** (1.0 / gamma)
        return {**example, "clean": x.astype(np.float32)}


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    if lo == hi:
        return float(lo)
    if lo == 0:
        return float(rng.uniform(lo, hi))
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


class SampleConditioning(grain.transforms.RandomMap):
    """Draw (s, r, b) from the example's ranges and build "cond"; zero it with p = label_dropout.

    A zeroed vector is the unconditional label (see physics.conditioning.unconditional), so one
    network learns both. "s", "r", "b" stay in the example: paired mode and the loss may need
    them even when the label is dropped.
    """

    def __init__(self, label_dropout: float, spec: ConditioningSpec = DEFAULT_SPEC):
        if not 0 <= label_dropout <= 1:
            raise ValueError(f"label_dropout must be in [0, 1], got {label_dropout}")
        self.label_dropout = label_dropout
        self.spec = spec

    def random_map(self, example: dict, rng: np.random.Generator) -> dict:
        ranges = example["ranges"]
        s = _log_uniform(rng, *ranges.s)
        r = _log_uniform(rng, *ranges.r)
        b = float(rng.uniform(*ranges.b))
        cond = conditioning_vector(example["domain"], s, r, b, self.spec, xp=np)
        if rng.random() < self.label_dropout:
            cond = np.zeros_like(cond)
        example = {k: v for k, v in example.items() if k != "ranges"}
        return {**example, "cond": cond, "s": np.float32(s), "r": np.float32(r), "b": np.float32(b)}


class SimulatePoissonGaussian(grain.transforms.RandomMap):
    """Add "noisy" = Poisson(s * clean + b) + N(0, r^2), in electrons: [H, W, 1] float32.

    The same forward model as physics.noise.simulate, drawn with numpy's Generator in the
    worker (seeded per example by Grain) so that no jax runs in the input pipeline.
    """

    def random_map(self, example: dict, rng: np.random.Generator) -> dict:
        clean = example["clean"].astype(np.float64)
        rate = example["s"] * clean + example["b"]
        noisy = rng.poisson(rate) + rng.normal(0.0, example["r"], clean.shape)
        return {**example, "noisy": noisy.astype(np.float32)}


class SelectKeys(grain.transforms.Map):
    """Keep only `keys`: what a batch exposes."""

    def __init__(self, keys: Sequence[str]):
        self.keys = tuple(keys)

    def map(self, example: dict) -> dict:
        return {k: example[k] for k in self.keys}
