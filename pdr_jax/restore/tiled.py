"""Guided restoration of an image of any size: reflection padding, tiles fused at every step.

    y [H, W, C] electrons --pad--> [H', W', C] --(sampler on the whole image, tiled denoiser,
    physics guidance)--> x' --crop--> x [H, W, C] in [0, 1]

The sampler state is the whole padded image; each denoiser evaluation runs the network over
overlapping tiles in chunks and blends them (pdr_jax.restore.tiling), so memory is bounded by
the chunk, not the image. Padding pixels carry mask 0: the likelihood ignores them.

Processing resolution (`choose_tile`), the documented rule:
  1. candidates are multiples of the network's downsampling factor, from 32 up to the
     network's resolution (never more than the image's shorter side);
  2. memory: a chunk of `batch` tiles must fit `memory_budget_mb`, estimated as
     `ACTIVATION_BYTES_PER_PIXEL_PER_CHANNEL * model_channels` bytes per tile pixel (about the
     peak of the U-Net's forward pass in float32, measured on the CPU for channel_mult
     (1, 2, 2, 2)); the largest candidate that fits is the upper bound;
  3. noise and detail: at low photon counts the prior must fill in more, which needs context,
     so the largest fitting tile is used when the mean photon count per pixel is below 20;
     at higher counts the likelihood dominates and a tile of at least 64 px (or the largest
     fitting, if smaller) suffices, the smaller tile being cheaper per pixel only through less
     padding waste; highly detailed images (high-frequency energy fraction > 0.3) keep the
     largest fitting tile too, as fine structure benefits from more context.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from pdr_jax import metrics
from pdr_jax.physics import conditioning
from pdr_jax.restore import tiling
from pdr_jax.restore.guided import restore_with_denoiser
from pdr_jax.samplers import network_sampler_args

ACTIVATION_BYTES_PER_PIXEL_PER_CHANNEL = 160
LOW_PHOTONS = 20.0
HIGH_DETAIL = 0.3


def detail_fraction(image: np.ndarray) -> float:
    """Fraction of the (mean-removed) spectral energy above a quarter of Nyquist; [H, W] input."""
    image = np.asarray(image, np.float64)
    spectrum = np.abs(np.fft.rfft2(image - image.mean())) ** 2
    fy = np.abs(np.fft.fftfreq(image.shape[0]))[:, None]
    fx = np.fft.rfftfreq(image.shape[1])[None, :]
    high = np.maximum(fy, fx) > 0.125
    total = spectrum.sum()
    return float(spectrum[high].sum() / total) if total > 0 else 0.0


def downsampling_factor(net) -> int:
    return 2 ** (len(net.model.channel_mult) - 1)


def choose_tile(height: int, width: int, *, net, batch: int, mean_photons: float, detail: float,
                memory_budget_mb: float = 2048.0) -> int:  # fmt: skip
    """The processing resolution (tile size) by the rule in the module docstring."""
    multiple = max(downsampling_factor(net), 8)
    largest = min(net.model.img_resolution, min(height, width))
    candidates = [t for t in range(32, largest + 1, multiple)] or [max(multiple, (largest // multiple) * multiple)]
    per_pixel = ACTIVATION_BYTES_PER_PIXEL_PER_CHANNEL * net.model.model_channels
    fitting = [t for t in candidates if batch * t * t * per_pixel <= memory_budget_mb * 2**20]
    if not fitting:
        raise ValueError(
            f"no tile size fits {memory_budget_mb} MB with batch {batch}: lower --batch or raise the budget"
        )
    best = max(fitting)
    if mean_photons < LOW_PHOTONS or detail > HIGH_DETAIL:
        return best
    return max(min(best, 64), min(fitting))


def _as_hwc(y_electrons, channels: int) -> tuple[np.ndarray, bool]:
    """y [H, W] or [H, W, channels] -> ([H, W, channels] float32, whether it was [H, W])."""
    y = np.asarray(y_electrons, np.float32)
    squeeze = y.ndim == 2
    y = y[..., None] if squeeze else y
    if y.ndim != 3 or y.shape[-1] != channels:
        raise ValueError(f"y_electrons must be [H, W] or [H, W, {channels}], got {np.shape(y_electrons)}")
    return y, squeeze


def _tile_labels(net, domain, s, r, b, batch: int, spec):
    """The conditioning vector for every tile of a chunk ([batch, spec.dim]), None if unconditional."""
    labels = jnp.broadcast_to(conditioning.conditioning_vector(domain, s, r, b, spec), (batch, spec.dim))
    return labels if net.model.label_dim else None


def _fit_report(y, x, s, r, b, valid, domain, spec, plan) -> dict:
    """Chi-square, residual whiteness and flatness over the original pixels, and the tile plan."""
    residuals = metrics.normalized_residuals(y, x, s, r, b)
    return dict(
        chi_square=float(metrics.chi_square(y, x, s, r, b, valid)),
        whiteness=float(metrics.whiteness(residuals, mask=valid)),
        spectral_flatness=float(metrics.spectral_flatness(residuals)),
        num_tiles=plan.num_tiles,
        plan=plan.to_json(),
        conditioning=dict(domain=domain if isinstance(domain, str) else spec.domains[int(domain)], s=s, r=r, b=b),
    )  # fmt: skip


def restore_tiled(
    net,
    variables,
    y_electrons,
    *,
    domain,
    s: float,
    r: float,
    b: float = 0.0,
    mask=None,
    tile: int | None = None,
    overlap: int = 16,
    batch: int = 8,
    memory_budget_mb: float = 2048.0,
    num_steps: int = 18,
    guidance: str = "x0",
    likelihood: str = "wls",
    kappa: float | str = "auto",
    key=None,
    spec: conditioning.ConditioningSpec = conditioning.DEFAULT_SPEC,
    **kwargs,
):
    """Restore y_electrons [H, W] or [H, W, C] (C = the network's channels) of any size.

    Returns (x like y_electrons in [0, 1] float32, report). The report holds chi-square and
    residual whiteness over the original pixels, the tile plan (JSON metadata that reproduces
    the transform), the chosen tile and why, and timings. Other arguments as
    `pdr_jax.restore.restore_image`.
    """
    start = time.perf_counter()
    y, squeeze = _as_hwc(y_electrons, net.model.in_channels)
    valid = np.ones_like(y) if mask is None else np.asarray(mask, np.float32).reshape(y.shape)
    mean_photons = float(np.sum((y - b) * valid) / max(np.sum(valid), 1))
    detail = detail_fraction((y[..., 0] - b) / s)
    if tile is None:
        tile = choose_tile(*y.shape[:2], net=net, batch=batch, mean_photons=mean_photons, detail=detail,
                           memory_budget_mb=memory_budget_mb)  # fmt: skip
    plan = tiling.plan_tiles(*y.shape[:2], tile=tile, overlap=overlap, multiple=downsampling_factor(net))
    y_pad = tiling.pad(jnp.asarray(y), plan)
    inside = np.zeros(plan.padded_shape + (1,), np.float32)
    inside[plan.pad_top : plan.pad_top + plan.height, plan.pad_left : plan.pad_left + plan.width] = 1
    mask_pad = tiling.pad(jnp.asarray(valid), plan) * inside  # the padding is not data

    args = network_sampler_args(net, variables, _tile_labels(net, domain, s, r, b, batch, spec))
    denoise = tiling.tiled_denoiser(args["denoise_fn"], plan, batch=batch)
    x_pad, report = restore_with_denoiser(
        denoise, y_pad[None], s=s, r=r, b=b, mask=mask_pad[None], key=key, num_steps=num_steps,
        guidance_mode=guidance, likelihood=likelihood, kappa=kappa, sigma_min=args["sigma_min"],
        sigma_max=args["sigma_max"], round_sigma=args["round_sigma"], **kwargs,
    )  # fmt: skip
    x = np.asarray(tiling.unpad(x_pad[0], plan))
    report.update(
        _fit_report(y, x, s, r, b, valid, domain, spec, plan),
        mean_photons=mean_photons,
        detail_fraction=detail,
        saturated_fraction=float(1 - valid.mean()),
        tile=tile,
        overlap=overlap,
    )
    report["timings"]["total_s"] = time.perf_counter() - start
    return (x[..., 0] if squeeze else x), report


def restore_tiled_conditional(
    net,
    variables,
    y_electrons,
    *,
    domain,
    s: float,
    r: float,
    b: float = 0.0,
    tile: int | None = None,
    overlap: int = 16,
    batch: int = 8,
    sampler: str = "ddim",
    num_steps: int = 50,
    eta: float = 0.0,
    num_samples: int = 1,
    key=None,
    spec: conditioning.ConditioningSpec = conditioning.DEFAULT_SPEC,
):
    """Restore y_electrons [H, W] or [H, W, C] of any size with a conditional model (kind
    "conditional", pdr_jax/conditional.py): DDPM / DDIM / DPM-Solver++ on the whole padded image,
    the network run over overlapping tiles of x_t and of the conditioning image at the same
    origins, blended at every step.

    tile: default the network's training resolution, or the image's shorter side rounded down to
    the downsampling factor when smaller. num_samples > 1 averages samples (a posterior-mean
    estimate). Returns (x like y_electrons in [0, 1] float32, report with the plan and timings).
    """
    from pdr_jax import conditional

    start = time.perf_counter()
    y, squeeze = _as_hwc(y_electrons, net.img_channels)
    multiple = downsampling_factor(net)
    if tile is None:
        tile = min(net.model.img_resolution, (min(y.shape[:2]) // multiple) * multiple)
    plan = tiling.plan_tiles(*y.shape[:2], tile=tile, overlap=min(overlap, tile // 2), multiple=multiple)
    cond_pad = tiling.pad(conditional.measurement_channels(jnp.asarray(y)[None], s, r, b), plan)
    labels = _tile_labels(net, domain, s, r, b, batch, spec)
    tile_fn = jax.tree_util.Partial(conditional.tile_model_fn(net), variables, labels)
    model_fn = tiling.tiled_denoiser(tile_fn, plan, batch=batch, cond_image=cond_pad)
    key = jax.random.key(0) if key is None else key
    total = 0.0
    for i in range(num_samples):
        key_latent, key_sampler = jax.random.split(jax.random.fold_in(key, i))
        latents = jax.random.normal(key_latent, (1, *plan.padded_shape, y.shape[-1]), jnp.float32)
        total = total + conditional.run_sampler(
            net, model_fn, latents, sampler=sampler, num_steps=num_steps, eta=eta, key=key_sampler
        )
    x = np.asarray(jnp.clip((tiling.unpad(total[0] / num_samples, plan) + 1) / 2, 0, 1))
    report = dict(
        _fit_report(y, x, s, r, b, None, domain, spec, plan), mean_photons=float(np.mean(y - b)),
        saturated_fraction=0.0, method="conditional", sampler=sampler, num_steps=num_steps, eta=eta, num_samples=num_samples,
        tile=tile, overlap=plan.overlap, timings=dict(total_s=time.perf_counter() - start), warnings=[],
    )  # fmt: skip
    return (x[..., 0] if squeeze else x), report
