"""Clean-image simulators: Grain sources whose i-th record is the same image on every machine.

Microscopy has no openly licensed source reachable from the build machines, and real astronomy
frames carry their own noise, so both domains get simulators beside the real images. Each
simulator is a pure function ``SIMULATORS[name](rng, size) -> [size, size] float32 in [0, 1]``;
the i-th image of a source comes from ``np.random.default_rng([seed, i])``, so a record does not
depend on which process, worker or order reads it.

    "fluorescence"  nuclei and cells: 4-80 ellipses (semi-axes 3-22 px) in 1-4 clusters,
                    touching, brightness 0.25-1, chromatin texture (+-40 %), cytoplasm blobs
                    (0.08-0.35) around 0-100 % of the nuclei, Gaussian PSF sigma 0.6-2.5 px,
                    out-of-focus haze (a sigma 6-24 px blur of the image, 0-40 %), uneven
                    background 0-0.12 with a linear gradient; peak scaled to 0.5-1.
    "brightfield"   stained tissue in transmitted light: I = I0 exp(-OD), I0 0.75-0.97 with
                    vignetting; OD from a tissue mask (multi-scale noise field, 40-95 % cover),
                    eosin-like fibrous texture (anisotropic blur, OD 0.1-0.6) and
                    hematoxylin-like nuclei (10-150 ellipses, semi-axes 2-9 px, OD 0.4-1.6),
                    Gaussian blur sigma 0.5-1.5 px.
    "astronomy"     a deep-sky frame: sky level 0-0.06 with a gradient (0-0.04 across); stars
                    with power-law fluxes (N(>f) ~ f^-alpha, alpha 0.6-1.2, 20-600 stars),
                    Moffat PSF (FWHM 1.5-5 px, beta 2.5-4.5); 0-6 Sersic galaxies (n 0.5-4,
                    R_e 3-40 px, axis ratio 0.3-1); log-normal nebulosity on half the frames;
                    scaled so that the 99.9th percentile lies at 0.4-1 (bright stars saturate).

The statistics tests/data/test_simulators.py checks: values in [0, 1], determinism per index,
and that the domains' images have the structure described (e.g. fluorescence mostly dark
background with bright objects, brightfield mostly bright).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import ndimage

from pdr_jax.data.transforms import ConditioningRanges


def _noise_field(rng: np.random.Generator, size: int, scales) -> np.ndarray:
    """Sum of Gaussian-blurred white noise at the given scales (px), each normalised to std 1."""
    field = np.zeros((size, size), np.float32)
    for scale in scales:
        layer = ndimage.gaussian_filter(
            rng.standard_normal((size, size)).astype(np.float32), scale, mode="wrap"
        )
        field += layer / (layer.std() + 1e-8)
    return field / np.sqrt(len(scales))


def _ellipse(yy, xx, cy, cx, a, b, theta) -> np.ndarray:
    """Squared elliptical radius (1 on the boundary) of every pixel."""
    c, s = np.cos(theta), np.sin(theta)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (u / a) ** 2 + (v / b) ** 2


def _clustered_centres(rng, size: int, count: int) -> np.ndarray:
    """[count, 2] object centres in 1-4 clusters of random spread (touching objects happen)."""
    num_clusters = int(rng.integers(1, 5))
    centres = rng.uniform(0, size, (num_clusters, 2))
    spread = rng.uniform(0.05, 0.35, num_clusters) * size
    which = rng.integers(0, num_clusters, count)
    return np.clip(
        centres[which] + rng.standard_normal((count, 2)) * spread[which, None], 0, size - 1
    )


def fluorescence(rng: np.random.Generator, size: int) -> np.ndarray:
    """Fluorescently labelled nuclei and cells (see module docstring): [size, size] float32."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.zeros((size, size), np.float32)
    count = int(rng.integers(4, 81))
    centres = _clustered_centres(rng, size, count)
    cytoplasm_fraction = rng.uniform(0, 1)
    texture = 1 + 0.4 * np.clip(_noise_field(rng, size, (1.0, 2.5)), -2.5, 2.5) / 2.5
    for cy, cx in centres:
        a = rng.uniform(3, 22)
        b = a * rng.uniform(0.5, 1.0)
        theta = rng.uniform(0, np.pi)
        brightness = rng.uniform(0.25, 1.0)
        if rng.uniform() < cytoplasm_fraction:  # a dimmer, irregular cell body around it
            lobes = 1 + 0.25 * np.sin(3 * np.arctan2(yy - cy, xx - cx) + rng.uniform(0, 2 * np.pi))
            cell = _ellipse(yy, xx, cy, cx, 2.2 * a, 2.2 * b, theta) < lobes
            image = np.maximum(image, cell * brightness * rng.uniform(0.08, 0.35))
        r2 = _ellipse(yy, xx, cy, cx, a, b, theta)
        nucleus = np.clip(1.5 * (1 - r2), 0, 1)  # flat top, soft edge
        image = np.maximum(image, nucleus * brightness * texture)
    image = ndimage.gaussian_filter(image, rng.uniform(0.6, 2.5))  # the PSF
    image = image + rng.uniform(0, 0.4) * ndimage.gaussian_filter(image, rng.uniform(6, 24))
    gradient = (yy * rng.uniform(-1, 1) + xx * rng.uniform(-1, 1)) / size
    background = rng.uniform(0, 0.12) * (1 + 0.5 * gradient)
    image = image / (image.max() + 1e-8) * rng.uniform(0.5, 1.0)
    return np.clip(image + background, 0, 1).astype(np.float32)


def brightfield(rng: np.random.Generator, size: int) -> np.ndarray:
    """Stained tissue in transmitted light (see module docstring): [size, size] float32."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    tissue_field = _noise_field(rng, size, (size / 16, size / 6))
    cover = rng.uniform(0.4, 0.95)
    tissue = ndimage.gaussian_filter(
        (tissue_field > np.quantile(tissue_field, 1 - cover)).astype(np.float32), 2.0
    )
    angle = rng.uniform(0, np.pi)
    fibres = ndimage.gaussian_filter(
        rng.standard_normal((size, size)).astype(np.float32), (6.0, 0.8)
    )
    fibres = ndimage.rotate(fibres, np.degrees(angle), reshape=False, mode="wrap")
    fibres = np.clip(fibres / (fibres.std() + 1e-8), -2, 2) / 4 + 0.5
    od = tissue * fibres * rng.uniform(0.1, 0.6)
    count = int(rng.integers(10, 151))
    for cy, cx in _clustered_centres(rng, size, count):
        a = rng.uniform(2, 9)
        r2 = _ellipse(yy, xx, cy, cx, a, a * rng.uniform(0.5, 1), rng.uniform(0, np.pi))
        od = od + np.clip(1.5 * (1 - r2), 0, 1) * rng.uniform(0.4, 1.6)
    od = ndimage.gaussian_filter(od, rng.uniform(0.5, 1.5))
    vignette = 1 - 0.15 * rng.uniform() * (
        ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (size / 2) ** 2
    )
    return np.clip(rng.uniform(0.75, 0.97) * vignette * np.exp(-od), 0, 1).astype(np.float32)


def _moffat_stamp(fwhm: float, beta: float, dy: float, dx: float, radius: int) -> np.ndarray:
    """A unit-flux Moffat PSF on a (2 radius + 1)^2 stamp, centred at sub-pixel (dy, dx)."""
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(np.float32)
    profile = (1 + ((y - dy) ** 2 + (x - dx) ** 2) / alpha**2) ** (-beta)
    return profile / profile.sum()


def _sersic(yy, xx, cy, cx, r_e, n, q, theta) -> np.ndarray:
    """A Sersic profile exp(-b_n ((r / r_e)^(1/n) - 1)), peak-normalised; b_n ~ 2n - 1/3."""
    r = np.sqrt(_ellipse(yy, xx, cy, cx, r_e, r_e * q, theta)) * r_e
    b_n = 2 * n - 1 / 3
    return np.exp(-b_n * ((r / r_e + 1e-3) ** (1 / n)))


def astronomy(rng: np.random.Generator, size: int) -> np.ndarray:
    """A deep-sky frame: sky, stars, galaxies, nebulosity (see module docstring)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.zeros((size, size), np.float32)
    if rng.uniform() < 0.5:  # diffuse nebulosity: a log-normal field
        field = _noise_field(rng, size, (size / 20, size / 8, size / 4))
        image += rng.uniform(0.05, 0.5) * np.exp(1.2 * field) / np.exp(1.2 * field).max()
    for _ in range(int(rng.integers(0, 7))):
        image += rng.uniform(0.05, 0.8) * _sersic(
            yy,
            xx,
            *rng.uniform(0, size, 2),
            rng.uniform(3, 40),
            rng.uniform(0.5, 4),
            rng.uniform(0.3, 1),
            rng.uniform(0, np.pi),
        )
    fwhm, beta = rng.uniform(1.5, 5), rng.uniform(2.5, 4.5)
    radius = int(np.ceil(3 * fwhm)) + 2
    count = int(rng.integers(20, 601))
    # Power-law fluxes: N(>f) ~ f^-alpha, i.e. Pareto with minimum flux f_min.
    fluxes = 0.02 * (1 + rng.pareto(rng.uniform(0.6, 1.2), count)) * fwhm**2
    padded = np.pad(image, radius)
    for flux, (cy, cx) in zip(fluxes, rng.uniform(0, size, (count, 2)), strict=True):
        iy, ix = int(cy), int(cx)
        stamp = _moffat_stamp(fwhm, beta, cy - iy - 0.5, cx - ix - 0.5, radius)
        padded[iy : iy + 2 * radius + 1, ix : ix + 2 * radius + 1] += flux * stamp
    image = padded[radius:-radius, radius:-radius]
    image = image / (np.quantile(image, 0.999) + 1e-8) * rng.uniform(0.4, 1.0)
    sky = (
        rng.uniform(0, 0.06)
        + rng.uniform(0, 0.04) * (yy * rng.uniform(-1, 1) + xx * rng.uniform(-1, 1)) / size
    )
    return np.clip(image + np.maximum(sky, 0), 0, 1).astype(np.float32)


SIMULATORS = {"fluorescence": fluorescence, "brightfield": brightfield, "astronomy": astronomy}


@functools.lru_cache(maxsize=4096)  # float16: 512 MiB at 256 px, the corpus's training set
def _render16(name: str, seed: int, index: int, size: int) -> np.ndarray:
    image = SIMULATORS[name](np.random.default_rng([seed, index]), size).astype(np.float16)
    image.setflags(write=False)
    return image


def render(name: str, seed: int, index: int, size: int) -> np.ndarray:
    """The index-th image of simulator `name`: [size, size] float32 in [0, 1].

    Rendering costs 30-70 ms at 256 px, so images are cached per process (as float16: its
    5e-4 relative step is far below any noise level the prior is trained on).
    """
    return _render16(name, seed, index, size).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class SimulatedFrame:
    """One simulated image as a source record: the interface of ``sources.Frame``."""

    simulator: str
    seed: int
    index: int  # the image's index: its random stream is default_rng([seed, index])
    domain: int
    height: int
    width: int
    ranges: ConditioningRanges
    split: str
    channel: None = None

    @property
    def path(self) -> str:
        return f"sim://{self.simulator}/{self.seed}/{self.index}"

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """[h, w, 1] float32 in [0, 1]: the patch at rows x cols."""
        # Slice the cached float16 image first: a crop converts only its own pixels.
        return _render16(self.simulator, self.seed, self.index, self.height)[
            rows, cols, None
        ].astype(np.float32)


def simulated_frames(
    simulator: str,
    indices: tuple[int, int],
    *,
    size: int,
    seed: int,
    domain: int,
    ranges: ConditioningRanges,
    split: str,
) -> list[SimulatedFrame]:
    """Frames of images indices[0] .. indices[1] - 1 of a simulator (nothing rendered yet)."""
    if simulator not in SIMULATORS:
        raise ValueError(f"unknown simulator {simulator!r}: expected one of {sorted(SIMULATORS)}")
    start, stop = (int(v) for v in indices)
    if not 0 <= start < stop:
        raise ValueError(f"simulator {simulator}: indices must be [start, stop), got {indices}")
    return [
        SimulatedFrame(simulator, seed, i, domain, size, size, ranges, split)
        for i in range(start, stop)
    ]


def sample_grid(path, *, per_row: int = 6, size: int = 192, seed: int = 0) -> None:
    """A PNG of `per_row` images of every simulator (one row each; the README's grid)."""
    from PIL import Image

    rows = [
        np.concatenate(
            [SIMULATORS[name](np.random.default_rng([seed, i]), size) for i in range(per_row)],
            axis=1,
        )
        for name in SIMULATORS
    ]
    Image.fromarray(np.round(np.concatenate(rows, axis=0) * 255).astype(np.uint8)).save(path)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description="Write a grid of simulated images (one row per simulator)."
    )
    parser.add_argument("output", help="PNG path, e.g. docs/simulated_samples.png")
    parser.add_argument("--per-row", type=int, default=6)
    parser.add_argument("--size", type=int, default=192)
    args = parser.parse_args()
    sample_grid(args.output, per_row=args.per_row, size=args.size)
