"""Every field of a pdr_jax prior-training run, with its default: one stage at 128x128.

    python launch/train.py --config configs/base.py --workdir runs/base
    python launch/train.py --config configs/base.py:tiny --workdir /tmp/run   # seconds, on CPU

Presets (the `:arg` after the file name): none = the accelerator-sized recipe; `cpu` = a small
network and short stages for a laptop CPU; `tiny` = a few steps of a tiny network, for tests.
Units: durations and intervals in kimg (thousands of training images), EMA as a half-life in
kimg (EDM), learning rate per stage with a linear warm-up over `optim.lr_rampup_kimg`.
`cpu_conv` picks how programs are built on CPU (pdr_jax.cpu): "auto" (oneDNN float32
convolutions on one CPU device, XLA's on several), "f32", "bf16" (oneDNN with bfloat16
operands, ~2x on CPUs with AVX512-BF16), "xla" or "plain" (XLA's defaults); $PDR_CPU_CONV, when
set, overrides it. GPUs and TPUs ignore it. The mode used is written to the workdir's
config.json and the exported model's network.json ("source").
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    # How CPU programs are built: auto, f32, bf16, xla or plain (pdr_jax.cpu.MODES; the
    # docstring above). $PDR_CPU_CONV wins when set.
    config.cpu_conv = "auto"

    # The network: build_network(**model minus dtype/remat) — see pdr_jax/precond.py NETWORKS.
    config.model = ml_collections.ConfigDict(
        dict(
            precond="edm",
            arch="ddpmpp",
            img_resolution=128,  # the final stage's resolution; names of blocks derive from it
            img_channels=1,
            label_dim=6,  # the 6-D physics conditioning vector
            model_channels=64,
            channel_mult=(1, 2, 2, 2),
            num_blocks=2,
            attn_resolutions=(16,),
            dropout=0.10,
            label_dropout=0.0,  # the data pipeline zeroes 10% of the vectors (data.label_dropout): once is enough
            dtype="float32",  # "bfloat16": bf16 U-Net body, float32 preconditioning and loss
            remat=False,  # rematerialise U-Net blocks (less memory, ~30% more compute)
            # The conditional model only (train.objective "ddpm", pdr_jax/conditional.py
            # build_conditional; the prior ignores these, the conditional model ignores precond):
            cond_channels=2,  # conditional.measurement_channels: normalised y and its noise level
            num_timesteps=1000,
            beta_schedule="cosine",  # schedules.BETA_SCHEDULES: linear, scaled_linear, cosine, sqrt
            parameterization="v",  # eps, x0 or v
        )
    )

    config.train = ml_collections.ConfigDict(
        dict(
            # "edm": the prior, a preconditioned denoiser with EDM's loss; "ddpm": the
            # conditional restoration model on simulated pairs (configs/conditional.py).
            objective="edm",
            P_mean=-1.2,  # EDM loss: ln(sigma) ~ N(P_mean, P_std^2)
            P_std=1.2,
            ema_halflife_kimg=500.0,
            ema_rampup_ratio=0.05,  # half-life <= ratio * images seen (0: off)
            log_every_kimg=1.0,
            val_every_kimg=10.0,
            val_sigmas=(0.02, 0.1, 0.5, 1.0, 5.0),  # validation loss at fixed sigmas, fixed noise
            loss="l2",  # "ddpm" only: l2, l1 or huber (train.loss.DISTANCES)
            val_timesteps=(50, 250, 500, 750, 950),  # "ddpm" only: validation at fixed t
            val_batches=2,
            adaptive_patience=3,  # adaptive stages end after 3 validations in a row that
            adaptive_min_rel_improvement=0.01,  # improve the best val loss by < 1% (relative)
            auto_batch_max=1024,  # batch_size="auto": largest power-of-2 batch up to this
            memory_budget_gb=60.0,  # ... whose compiled step fits this budget (per device)
            num_devices=placeholder(
                int
            ),  # data-parallel over the first N local devices (unset: all)
            # Start a new run from these weights instead of random ones: a model directory
            # (e.g. pdr-gray-default, or a workdir's model/) or an EDM .pkl/.pt. "" = off.
            init_from="",
        )
    )

    config.optim = ml_collections.ConfigDict(
        dict(
            lr=2e-4, lr_rampup_kimg=1000.0, betas=(0.9, 0.999), eps=1e-8, grad_clip=1.0
        )  # grad_clip 0: off
    )

    config.checkpoint = ml_collections.ConfigDict(dict(every_kimg=50.0, keep=3, keep_best=1))

    # End-of-stage sample grids (EMA network, Heun): one row per domain.
    config.sample = ml_collections.ConfigDict(
        dict(
            per_domain=4,
            num_steps=18,
            seed=0,
            scales=dict(photography=1000.0, microscopy=100.0, astronomy=10.0),
            read_noise=2.0,
        )
    )

    config.data = data_config()

    # Stages: resolution, duration, batch (an int or "auto"), lr (None: optim.lr), adaptive end.
    config.stages = [dict(resolution=128, kimg=20000.0, batch_size=256, lr=None, adaptive=False)]

    if arg:
        apply_preset(config, arg)
    return config


def data_config() -> ml_collections.ConfigDict:
    """Every data field (config.data) with its default; pdr_jax.data.pipeline.default_config()."""
    cfg = ml_collections.ConfigDict()
    # Image sources, a list of dicts: {domain, paths (files, folders, globs), calibration (dict or
    # .json/.yaml path; None = file metadata), conditioning (None = domain ranges, "calibration",
    # or {s, r, b} values/ranges), split ("columns"|"train"|"val"), channels, raw_mode, name}.
    # Empty: the embedded scikit-image set (sources.EMBEDDED_SOURCES). {"corpus": ""} is the
    # corpus of tools/prepare_corpus.py (train + val splits and the embedded set; expand_sources).
    # {"domain", "simulator", "indices", "size", "seed", "split"} is a simulator (data/simulators.py).
    cfg.sources = []
    # Relative sampling weight of each domain in training batches; 0 leaves a domain out.
    # Domains with no source are dropped (with a log line). Within a domain, frames are uniform.
    cfg.domain_weights = ml_collections.ConfigDict(
        {"photography": 1.0, "microscopy": 1.0, "astronomy": 1.0}
    )
    # Per-domain (s, r, b) ranges in electrons for conditioning clean images: s (photon scale,
    # electrons at intensity 1) and r (read noise) log-uniform, b (background) uniform.
    # r: phone/consumer CMOS 1-10 e-; sCMOS/EMCCD microscopy cameras 0.5-3 e-; science CCDs
    # 2-10 e-. b: dark current and offset residuals (photography), autofluorescence and
    # out-of-focus light (microscopy), sky background (astronomy).
    cfg.ranges = ml_collections.ConfigDict(
        {
            "photography": {"s": (10.0, 1e4), "r": (1.0, 10.0), "b": (0.0, 5.0)},
            "microscopy": {"s": (1.0, 1e3), "r": (0.5, 3.0), "b": (0.0, 10.0)},
            "astronomy": {"s": (0.1, 1e2), "r": (2.0, 10.0), "b": (0.0, 20.0)},
        }
    )
    # Probability that an example's conditioning vector is all zeros (unconditional training).
    cfg.label_dropout = 0.1
    # Random flips and rot90 (the 8 symmetries of the square) of training crops.
    cfg.augment = True
    # Held-out rule: the right-most val_fraction of every image's columns is validation data
    # (for sources with split="columns"); training crops never reach into it.
    cfg.val_fraction = 0.25
    # Validation crops per frame (an even grid over the held-out columns) and their seed.
    cfg.val_crops_per_frame = 8
    cfg.val_seed = 0
    # Default colour handling: "gray" (RGB -> Rec. 709 luminance, RAW planes averaged),
    # "split" (each channel its own grayscale image) or "rgb" (R, G, B; a gray image's channel
    # repeated; for model.img_channels = 3). A source may override it.
    cfg.channels = "gray"
    # Per-domain gamma augmentation {domain: (lo, hi)}: the crops (sRGB-encoded 8-bit
    # photographs) decoded to linear light and re-encoded with a gamma log-uniform in [lo, hi]
    # (1 = linear, as a RAW sensor counts). Empty: crops as stored.
    cfg.gamma = ml_collections.ConfigDict({})
    # Camera RAW: "packed" (2x2 Bayer planes, black/white level applied) or "demosaic".
    cfg.raw_mode = "packed"
    # Frames smaller than this (in either dimension) are skipped as wrong-shape.
    cfg.min_size = 16
    # Window (examples) of the shuffle after mixing: exact domain proportions per window.
    # Large on purpose: Grain's index_shuffle gets slow for small windows (~40 us at 1024).
    cfg.shuffle_window = 65536
    # Grain workers (0: in-process), their per-worker buffer, read threads and prefetch buffer.
    cfg.worker_count = 0
    cfg.worker_buffer_size = 16
    cfg.read_threads = 2
    cfg.prefetch_buffer_size = 64
    # Decoded-image cache per process (memory-mapped files are not counted).
    cfg.cache_mb = 1024
    # Emit (noisy, clean) pairs simulated with the Poisson-Gaussian model (also a make_dataset arg).
    cfg.paired = False
    return cfg


def apply_preset(config: ml_collections.ConfigDict, arg: str) -> None:
    """Shrink a config in place for `cpu` (README demo) or `tiny` (tests)."""
    if arg == "cpu":
        config.model.update(model_channels=32, num_blocks=1, dropout=0.0)
        config.optim.update(lr=1e-3, lr_rampup_kimg=2.0)
        config.train.update(
            ema_halflife_kimg=2.0, log_every_kimg=0.25, val_every_kimg=1.0, val_batches=1
        )
        config.checkpoint.update(every_kimg=2.0)
        config.sample.update(per_domain=4, num_steps=18)
        config.stages = [dict(resolution=128, kimg=4.0, batch_size=8, lr=None, adaptive=False)]
    elif arg == "tiny":
        config.model.update(
            img_resolution=16,
            model_channels=8,
            channel_mult=(1, 2),
            num_blocks=1,
            attn_resolutions=(8,),
            dropout=0.0,
        )
        config.optim.update(lr=1e-3, lr_rampup_kimg=0.01)
        config.train.update(
            ema_halflife_kimg=0.01,
            log_every_kimg=0.008,
            val_every_kimg=0.008,
            val_sigmas=(0.1, 1.0),
            val_batches=1,
            auto_batch_max=8,
            memory_budget_gb=1.0,
        )
        config.checkpoint.update(every_kimg=0.008)
        config.sample.update(per_domain=2, num_steps=2)
        config.stages = [dict(resolution=16, kimg=0.016, batch_size=8, lr=None, adaptive=False)]
    else:
        raise ValueError(f"unknown preset {arg!r}: expected 'cpu' or 'tiny'")
