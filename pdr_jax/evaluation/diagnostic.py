"""Prior diagnostic: the prior's one-call denoiser against BM3D at the same Gaussian noise.

    x_noisy = x + sigma n,  n ~ N(0, 1)  (x in [0, 1], the benchmark's clean crops)
    prior:  D(x_noisy; sigma, c)   one network call in model space (2 x - 1, where the noise
            std is 2 sigma), c the crop's domain at the matched photon level s = 1 / sigma^2
            (r = b = 0), as restoration would condition it
    bm3d:   BM3D(x_noisy, sigma_psd = sigma)

A prior whose D loses to BM3D here cannot win the restoration either, however good the
guidance; a prior that wins here and loses in restoration points at the guidance. Noise draws
come from the seed and the crop's name, so every run and method sees the same noisy crops.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from pdr_jax import cpu, metrics
from pdr_jax.evaluation.benchmark import CleanImage
from pdr_jax.physics import conditioning

SIGMAS = (0.02, 0.05, 0.1, 0.2)
FIELDS = ("domain", "sigma", "images", "prior", "bm3d", "noisy")


def noisy_crop(image: CleanImage, sigma: float, seed: int) -> np.ndarray:
    """x + sigma n for one crop: [H, W, 1] float32 (not clipped: the denoisers see Gaussian noise)."""
    key = np.random.default_rng([seed, zlib.crc32(f"{image.name}|{sigma:g}".encode())])
    return (image.clean + sigma * key.standard_normal(image.clean.shape)).astype(np.float32)


def gaussian_denoising(
    images: Sequence[CleanImage],
    net,
    variables,
    *,
    sigmas: Sequence[float] = SIGMAS,
    seed: int = 0,
    with_bm3d: bool = True,
) -> list[dict]:
    """Mean PSNR per (domain, sigma) of the prior's D, BM3D and the noisy input: rows of FIELDS."""
    import bm3d

    # Model space is 2 x - 1: the noise std there is 2 sigma.
    apply = cpu.jit(
        lambda x, sigma, labels: (net.apply(variables, 2 * x - 1, 2 * sigma, labels) + 1) / 2
    )
    rows = []
    for domain in dict.fromkeys(image.domain for image in images):
        crops = [image for image in images if image.domain == domain]
        for sigma in sigmas:
            noisy = np.stack([noisy_crop(image, sigma, seed) for image in crops])
            n = len(crops)
            labels = None
            if net.model.label_dim:
                labels = conditioning.conditioning_vector(
                    domain, jnp.full((n,), 1 / sigma**2), 0.0, 0.0
                )
            denoised = np.asarray(apply(jnp.asarray(noisy), jnp.full((n,), sigma), labels))
            row = {
                "domain": domain,
                "sigma": sigma,
                "images": n,
                "prior": _mean_psnr(denoised, crops),
                "noisy": _mean_psnr(noisy, crops),
                "bm3d": None,
            }
            if with_bm3d:
                estimates = [bm3d.bm3d(x[..., 0], sigma_psd=sigma)[..., None] for x in noisy]
                row["bm3d"] = _mean_psnr(estimates, crops)
            rows.append(row)
    return rows


def _mean_psnr(estimates, crops: Sequence[CleanImage]) -> float:
    """Mean PSNR (dB) of estimates clipped to [0, 1] against the crops' clean images."""
    return float(
        np.mean(
            [metrics.psnr(np.clip(x, 0, 1), c.clean) for x, c in zip(estimates, crops, strict=True)]
        )
    )


def markdown(rows: Sequence[dict], *, title: str) -> str:
    """One line per (domain, sigma): PSNR of the prior's D, BM3D, the noisy input, and D - BM3D."""
    lines = [
        f"### {title}",
        "",
        "| domain | sigma | prior D(x + sigma n; sigma) | BM3D | noisy | prior - BM3D |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        gap = "" if row["bm3d"] is None else f"{row['prior'] - row['bm3d']:+.2f}"
        bm3d = "" if row["bm3d"] is None else f"{row['bm3d']:.2f}"
        lines.append(
            f"| {row['domain']} | {row['sigma']:g} | {row['prior']:.2f} | {bm3d} | {row['noisy']:.2f} | {gap} |"
        )
    counts = sorted({row["images"] for row in rows})
    return "\n".join(lines) + f"\n\nCrops per cell: {', '.join(map(str, counts))}; PSNR in dB.\n"
