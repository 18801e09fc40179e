"""A deterministic Poisson-Gaussian benchmark from clean images, and scoring of restorations.

    clean crops (held-out columns)  --simulate(s, r, b)-->  cases  --method-->  rows of metrics

`load_clean_images` takes its crops from the data pipeline's validation geometry
(`pdr_jax.data.transforms.val_crops`): for the embedded scikit-image set that is the right-most
`val_fraction` (25%) of every picture's columns, which training never reads. skimage's moon,
cell and retina are not in the embedded set (pdr_jax.data.sources) and never used here.

`make_cases` simulates one measurement y = Poisson(s A(x) + b) + N(0, r^2) per image and scale
with `pdr_jax.physics.noise.simulate`; each one's key comes from the seed and the case's
name, so a case does not change when images, scales or methods are added to a run.

Modes (MODES): "gray" (every domain, crops in gray, A the identity); "rgb" (photographs in
colour, the crops' stored sRGB-encoded values taken as intensities, as users feed 8-bit images
in; A the identity); "raw" (photographs in colour decoded to linear light, measured through an
RGGB mosaic with unit gains, A = RAW_MOSAIC: one colour per pixel, the restoration demosaicks).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
import tqdm

from pdr_jax import metrics
from pdr_jax.data import pipeline, transforms
from pdr_jax.data import sources as data_sources
from pdr_jax.evaluation import sources
from pdr_jax.physics import calibration, noise, operators

EMBEDDED = "embedded"
CORPUS = (
    "corpus"  # "corpus:val" / "corpus:test" (pdr_jax.data.corpus), optionally "corpus:test@ROOT"
)
# The corpus benchmark protocol (issue 19): photon levels, read noises and the astronomy sky.
CORPUS_SCALES = (2.0, 10.0, 50.0, 250.0)
CORPUS_READ_NOISES = (0.5, 3.0)
CORPUS_SKY_FRACTION = {"astronomy": 0.05}  # b = 0.05 s electrons per pixel
# Columns of the per-image CSV rows that `score` fills in (besides the case's own fields).
METRICS = (
    "psnr",
    "ssim",
    "ms_ssim",
    "chi_square",
    "poisson_deviance",
    "whiteness",
    "relative_bias",
    "flux_true",
    "flux_hat",
    "flux_z",
    "frc_px",
    "sources_true",
    "sources_false",
    "sources_missed",
    "photometry_bias",
    "photometry_scatter",
    "std_mean",
    "coverage_1sd",
    "coverage_2sd",
)
POINT_SOURCE_DOMAINS = ("astronomy",)  # score counts invented and missed stars there (sources)
MODES = ("gray", "rgb", "raw")
RAW_MOSAIC = operators.Mosaic("RGGB")  # mode "raw": the measurement of the linear colour crop


@dataclasses.dataclass(frozen=True)
class CleanImage:
    """One clean benchmark crop."""

    name: str  # e.g. "photography/camera@0,384" (frame, then the crop's row, column)
    domain: str
    clean: np.ndarray  # [H, W, C] float32 in [0, 1] (C = 3 in modes rgb and raw)


@dataclasses.dataclass(frozen=True)
class Case:
    """One measurement of a clean crop at one photon scale."""

    image: CleanImage
    s: float  # electrons at intensity 1
    r: float  # read noise, electrons
    b: float  # background, electrons
    y: np.ndarray  # [H, W, C'] float32 electrons: A(clean) measured
    operator: object = operators.IDENTITY  # A (pdr_jax.physics.operators)

    @property
    def name(self) -> str:
        return f"{self.image.name}|s={self.s:g}|r={self.r:g}|b={self.b:g}"


def _frame_name(frame) -> str:
    base = frame.path.split("://")[-1]
    base = os.path.basename(base) or base
    channel = "" if frame.channel is None else f"#c{frame.channel}"
    index = f"[{frame.index}]" if frame.index else ""
    return f"{base}{index}{channel}"


def load_clean_images(
    source: str = EMBEDDED,
    *,
    crop: int = 128,
    per_domain: int = 6,
    domain: str = "photography",
    val_fraction: float | None = None,
    mode: str = "gray",
) -> list[CleanImage]:
    """Up to per_domain clean [crop, crop, C] crops per domain, spread evenly over the crops.

    mode (MODES): "gray" (C = 1, every domain); "rgb" and "raw" (C = 3, photographs only: a gray
    photograph's channel repeated; raw decodes the stored sRGB values to linear light).

    source: "embedded" (the embedded scikit-image set; held-out columns only), "corpus:val" or
    "corpus:test" (that split of the built corpus: its real images whole and its simulated
    images; val adds the embedded set's held-out columns; "corpus:test@/path" for another
    corpus root), or a
    file, folder or glob of clean images of `domain`, which are used whole (split "val"). The crops
    are the validation grid of `transforms.val_crops` (non-overlapping; a region narrower than
    crop is mirror-padded); per_domain of them are taken at evenly spaced positions of the
    domain's list, so they come from different frames where there are several.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    cfg = pipeline.default_config()
    colour = mode != "gray"
    cfg.channels = "rgb" if colour else "gray"
    if val_fraction is not None:
        cfg.val_fraction = val_fraction
    if source.startswith(CORPUS + ":"):
        split, _, root = source.removeprefix(CORPUS + ":").partition("@")
        if split not in ("val", "test"):
            raise ValueError(
                f"--clean {source}: expected corpus:val or corpus:test (train is for training)"
            )
        # The embedded held-out columns serve tuning (val) only: test stays independent of
        # everything a default was chosen on.
        cfg.sources = [{"corpus": root, "splits": [split], "embedded": split == "val"}]
        if colour:
            cfg.sources[0]["domains"] = ["photography"]
    elif source != EMBEDDED:
        cfg.sources = [{"name": "clean", "domain": domain, "paths": [source], "split": "val"}]
    elif colour:
        cfg.sources = [dict(e) for e in data_sources.EMBEDDED_SOURCES]
        cfg.sources = [e for e in cfg.sources if e["domain"] == "photography"]
    frames, _ = pipeline.build_frames(cfg)
    images = []
    for domain_name, domain_frames in frames.items():
        crops = [
            spec
            for frame in domain_frames
            for spec in transforms.val_crops(frame, crop, cfg.val_fraction, max_crops=1 << 20)
        ]
        if not crops:
            continue
        keep = np.unique(np.linspace(0, len(crops) - 1, min(per_domain, len(crops))).round())
        for index in keep.astype(int):
            spec = crops[index]
            clean = transforms.crop(spec.frame, spec.y, spec.x, crop, spec.x_range)
            if mode == "raw":
                clean = calibration.srgb_to_linear(clean)
            name = f"{domain_name}/{_frame_name(spec.frame)}@{spec.y},{spec.x}"
            images.append(CleanImage(name, domain_name, clean.astype(np.float32)))
    if not images:
        raise ValueError(f"no clean crops of size {crop} found in {source!r}")
    return images


def measure(operator, x) -> np.ndarray:
    """A(x) of images x [N, H, W, C] whose scene continues by reflection beyond their edges: a
    PSF's operator acts on x extended by its radius, and the result is cropped back, so no
    border is wrapped (a crop of a larger scene, as a detector sees it). Pixel-wise operators:
    A(x) itself."""
    m = operator.radius
    if not m:
        return np.asarray(operator.forward(x))
    wide = np.pad(np.asarray(x, np.float32), ((0, 0), (m, m), (m, m), (0, 0)), mode="reflect")
    return np.asarray(operator.forward(wide))[:, m:-m, m:-m]


def _case_key(seed: int, name: str):
    """A PRNG key from the run seed and a case name (crc32: stable across processes)."""
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def make_cases(
    images: Sequence[CleanImage],
    scales: Sequence[float],
    *,
    read_noise: float | Sequence[float],
    background: float = 0.0,
    sky_fraction: Mapping[str, float] | None = None,
    seed: int = 0,
    operator=operators.IDENTITY,
) -> list[Case]:
    """One simulated measurement per image, scale and read noise (order: read noise, scale,
    images). b = background + sky_fraction[domain] * s electrons (e.g. an astronomy sky that
    scales with the exposure, CORPUS_SKY_FRACTION). operator: A, what the detector measures of
    the clean crop (RAW_MOSAIC for mode "raw")."""
    simulate = jax.jit(noise.simulate)
    read_noises = [read_noise] if np.isscalar(read_noise) else list(read_noise)
    sky_fraction = dict(sky_fraction or {})
    cases = []
    for r in read_noises:
        for s in scales:
            for image in images:
                b = float(background) + sky_fraction.get(image.domain, 0.0) * float(s)
                case = Case(image, float(s), float(r), b, np.empty(0), operator)
                measured = measure(operator, image.clean[None])[0]
                y = simulate(_case_key(seed, case.name), measured, case.s, case.r, case.b)
                cases.append(dataclasses.replace(case, y=np.asarray(y, np.float32)))
    return cases


def score(case: Case, x_hat: np.ndarray, std: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of a restoration x_hat [H, W, C] in [0, 1] against the case's clean image.

    Quality (PSNR, SSIM, MS-SSIM over as many scales as the crop allows, FRC resolution in
    pixels at the 1/7 threshold, against the clean crop; channels averaged) and physics
    (chi-square, Poisson deviance, residual whiteness = largest off-centre `|autocorrelation|`,
    of the measurement y against A(x_hat); relative bias); in
    POINT_SOURCE_DOMAINS the point sources of the clean crop and the restoration's false and
    missed ones, and the aperture photometry of the true ones (relative flux error: median
    bias and robust scatter; pdr_jax.evaluation.sources), None elsewhere; the total flux: the
    sums of the clean crop and of x_hat (flux_true, flux_hat: report.summarise adds them over a
    cell, so that a cell's flux error is flux-weighted, not a mean of ratios over crops of a
    few hundredths' mean) and flux_z, the error of x_hat's total in units of the measurement's
    own uncertainty of it, sqrt(sum(s A x + b + r^2)) / s (the standard deviation of
    sum(y - b) / s: an absolute flux_z of a few is what the counts allow); with a posterior std (a
    sampling method's per-pixel std over its samples) its mean and the fractions of pixels
    whose error lies within 1 and 2 std (calibrated: 0.683, 0.954), None without.
    """
    clean = case.image.clean
    x_hat = np.asarray(x_hat, np.float32).reshape(clean.shape)
    std = None if std is None else np.asarray(std, np.float32).reshape(clean.shape)
    num_scales = metrics.ms_ssim_num_scales(*clean.shape[:2])
    measured = measure(case.operator, x_hat[None])[0]
    residuals = metrics.normalized_residuals(case.y, measured, case.s, case.r, case.b)
    physics = (case.y, measured, case.s, case.r, case.b)
    flux_true, flux_hat = float(np.sum(clean)), float(np.sum(x_hat))
    clean_measured = measure(case.operator, clean[None])[0]
    flux_std = np.sqrt(np.sum(case.s * clean_measured + case.b + case.r**2)) / case.s
    point_sources = dict.fromkeys(("true", "false", "missed"))
    stars = dict.fromkeys(("bias", "scatter"))
    if case.image.domain in POINT_SOURCE_DOMAINS:
        counts = sources.count(clean, x_hat, case.s, case.r, case.b)
        point_sources = {key: counts[key] for key in point_sources}
        stars = sources.photometry(clean, x_hat, case.s, case.r, case.b)
    return {
        "psnr": metrics.psnr(x_hat, clean),
        "ssim": metrics.ssim(x_hat, clean),
        "ms_ssim": metrics.ms_ssim(x_hat, clean, num_scales=num_scales) if num_scales else None,
        "chi_square": float(metrics.chi_square(*physics)),
        "poisson_deviance": float(metrics.poisson_deviance(*physics)),
        "whiteness": float(metrics.whiteness(residuals)),
        "relative_bias": float(metrics.relative_bias(x_hat, clean)),
        "flux_true": flux_true,
        "flux_hat": flux_hat,
        "flux_z": float((flux_hat - flux_true) / flux_std),
        "frc_px": metrics.frc_resolution(*metrics.fourier_ring_correlation(x_hat, clean)),
        **{f"sources_{key}": value for key, value in point_sources.items()},
        **{f"photometry_{key}": value for key, value in stars.items()},
        "std_mean": None if std is None else float(np.mean(std)),
        **{
            f"coverage_{k}sd": None if std is None else metrics.std_coverage(x_hat, std, clean, k)
            for k in (1, 2)
        },
    }


@dataclasses.dataclass(frozen=True)
class Method:
    """A restoration method as the benchmark runs it.

    `restore(y [N, H, W, C'] electrons, *, s, r, b, domain, key, operator) -> x_hat [N, H, W, C]`
    in [0, 1]; s, r, b are floats (one domain and scale per call), key a PRNG key for sampling
    methods, operator the cases' forward operator (y = A(x) measured).
    A method that draws several samples may return (x_hat, std), std its per-pixel std.
    """

    restore: Callable[..., np.ndarray]
    jitted: bool = False  # the first call of a shape compiles: warm it up before timing
    # An oracle row (the best setting per image, chosen against the truth: a bound, not a
    # method anyone can run): restore also gets clean=[N, H, W, C].
    oracle: bool = False


@dataclasses.dataclass
class Run:
    """What `run_methods` returns."""

    rows: list[dict]  # one per (method, case): the case fields, METRICS, seconds
    examples: dict[tuple[str, str, float], np.ndarray]  # (method, domain, s) -> [H, W, 1]
    compile_seconds: dict[str, float]  # per method: first-call overhead left out of "seconds"


def _groups(cases: Sequence[Case], batch: int):
    """Cases grouped by (domain, s, r, b) in order, in chunks of at most `batch`."""
    groups: dict[tuple, list[Case]] = {}
    for case in cases:
        groups.setdefault((case.image.domain, case.s, case.r, case.b), []).append(case)
    for group in groups.values():
        for start in range(0, len(group), batch):
            yield group[start : start + batch]


def run_methods(
    cases: Sequence[Case],
    methods: Mapping[str, Method],
    *,
    seed: int = 0,
    batch: int = 8,
    log: Callable[[str], None] = print,
) -> Run:
    """Run every method on every case, group by group (one domain and scale per call).

    Every method gets the same key for a group (from the seed and the group's first case), so
    ablation variants differ by their setting, not by their random draws. seconds: wall time
    per image of the call. For jitted methods the first call of each input shape is run twice
    and timed the second time, so compilation is not counted (it is reported in
    compile_seconds). The first case of each (domain, s) is kept as the example.
    """
    rows, examples, compile_seconds = [], {}, {}
    groups = list(_groups(cases, batch))
    for name, method in methods.items():
        seen_shapes = set()
        for chunk in tqdm.tqdm(groups, desc=name, unit="batch", file=sys.stderr, leave=False):
            first = chunk[0]
            y = np.stack([case.y for case in chunk])
            args = {"s": first.s, "r": first.r, "b": first.b, "domain": first.image.domain}
            args["operator"] = first.operator
            if method.oracle:
                args["clean"] = np.stack([case.image.clean for case in chunk])
            key = _case_key(seed, f"restore|{first.name}")
            first_call = 0.0
            if method.jitted and y.shape not in seen_shapes:  # warm-up: compile
                seen_shapes.add(y.shape)
                start = time.perf_counter()
                method.restore(y, key=key, **args)
                first_call = time.perf_counter() - start
            start = time.perf_counter()
            x_hat = method.restore(y, key=key, **args)
            elapsed = time.perf_counter() - start
            x_hat, std = x_hat if isinstance(x_hat, tuple) else (x_hat, None)
            x_hat = np.asarray(x_hat, np.float32)
            std = [None] * len(chunk) if std is None else np.asarray(std, np.float32)
            if first_call:
                overhead = max(first_call - elapsed, 0.0)
                compile_seconds[name] = compile_seconds.get(name, 0.0) + overhead
            for case, x, x_std in zip(chunk, x_hat, std, strict=True):
                rows.append(
                    {
                        "method": name,
                        "domain": case.image.domain,
                        "image": case.image.name,
                        "scale": case.s,
                        "read_noise": case.r,
                        "background": case.b,
                        **score(case, x, x_std),
                        "seconds": elapsed / len(chunk),
                    }
                )
            examples.setdefault((name, first.image.domain, first.s), x_hat[0])
        log(f"{name}: {sum(row['method'] == name for row in rows)} images")
    return Run(rows, examples, compile_seconds)
