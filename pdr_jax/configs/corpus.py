"""Prior training on the offline corpus (tools/prepare_corpus.py): all three domains, weighted.

    python tools/prepare_corpus.py                                        # once: ~1 min
    python launch/train.py --config configs/corpus.py --workdir runs/corpus            # accelerator
    PDR_CPU_CONV=bf16 python launch/train.py --config configs/corpus.py:cpu --workdir ~/runs/corpus-cpu \\
        --config.train.init_from=pdr-gray-default                  # the shipped model's run
    PDR_CPU_CONV=bf16 python launch/train.py --config configs/corpus.py:cpu-continue \\
        --workdir ~/runs/corpus-cpu2 --config.train.init_from=pdr-gray-default   # more of it
    PDR_CPU_CONV=bf16 python launch/train.py --config configs/corpus.py:cpu-finish \\
        --workdir ~/runs/corpus-cpu3 --config.train.init_from=pdr-gray-default   # low sigma
    PDR_CPU_CONV=bf16 python launch/train.py --config configs/corpus.py:cpu-finish2 \\
        --workdir ~/runs/corpus-cpu4 --config.train.init_from=pdr-gray-default   # photographs
    PDR_CPU_CONV=bf16 python launch/train.py --config configs/corpus.py:cpu-finish3 \\
        --workdir ~/runs/corpus-cpu5 --config.train.init_from=pdr-gray-default   # low sigma
    PDR_CPU_CONV=bf16 python launch/train.py --config configs/corpus.py:cpu-finish4 \\
        --workdir ~/runs/corpus-cpu6 --config.train.init_from=pdr-gray-default   # not shipped
    python launch/train.py --config configs/corpus.py:tiny --workdir /tmp/run    # tests (needs a corpus)

Data: the corpus's train images and simulators (validation on its val split) plus the embedded
set (`{"corpus": ""}`, pdr_jax.data.pipeline.expand_sources); `--config.data.sources` replaces it.
Noise levels: ln(sigma) ~ N(-1.4, 1.4^2) puts more of the training where restoration spends its
calls than EDM's N(-1.2, 1.2^2): photon levels 2-250 mean sigma ~0.03-0.5 in [0, 1] units, and
the high-sigma start. Only what differs from configs/progressive.py is set here.
"""

import ml_collections

from pdr_jax.configs import base, progressive


def stage(resolution: int, kimg: float, batch_size: int, lr: float) -> dict:
    """A fixed-length stage (no plateau detection)."""
    return {
        "resolution": resolution,
        "kimg": kimg,
        "batch_size": batch_size,
        "lr": lr,
        "adaptive": False,
    }


def _photography_finish(config, *, weight: float, P_mean: float, P_std: float, stages) -> None:
    """A fine-tuning session of a trained model (init_from) aimed at photography at low sigma:
    photographs weighted `weight` against 1 per other domain, ln(sigma) ~ N(P_mean, P_std^2),
    Adam at the first stage's rate after a short ramp-up, a 2 kimg EMA half-life."""
    config.data.domain_weights.update(photography=weight)
    config.train.update(P_mean=P_mean, P_std=P_std, ema_halflife_kimg=2.0)
    config.optim.update(lr=stages[0]["lr"], lr_rampup_kimg=0.5)
    config.stages = stages


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = progressive.get_config("tiny" if arg == "tiny" else None)
    cpu_sessions = ("cpu", "cpu-continue", "cpu-finish", *(f"cpu-finish{i}" for i in (2, 3, 4)))
    if arg not in (None, "", "tiny", "sweep", *cpu_sessions):
        raise ValueError(
            f"unknown preset {arg!r}: expected one of {', '.join(cpu_sessions)}, 'sweep' or 'tiny'"
        )
    config.data.sources = [{"corpus": ""}]
    # Per-domain weights: each domain a third of every batch, whatever its image count.
    config.data.domain_weights.update(photography=1.0, microscopy=1.0, astronomy=1.0)
    config.train.update(P_mean=-1.4, P_std=1.4)
    if arg in ("sweep", *cpu_sessions):
        # The network of configs/base.py:cpu (chosen by the size sweep), Adam at 1e-3.
        base.apply_preset(config, "cpu")
        config.optim.update(lr=1e-3, lr_rampup_kimg=1.0)
        config.train.update(log_every_kimg=1.0)
    if arg in cpu_sessions:  # the CPU sessions of the shipped model
        config.train.update(ema_halflife_kimg=4.0, val_every_kimg=4.0, val_batches=2)
        config.checkpoint.update(every_kimg=2.0)
    if arg == "sweep":
        # Size sweep (issue 20): one long 32 px stage, stopped by time (SIGTERM saves), val
        # loss every kimg, for --config.model.model_channels / num_blocks variants:
        # timeout -s TERM 600 python launch/train.py --config configs/corpus.py:sweep \
        #     --config.model.model_channels=64 --workdir ~/runs/sweep-64x1
        config.train.update(ema_halflife_kimg=2.0, val_every_kimg=1.0, val_batches=4)
        config.checkpoint.update(every_kimg=5.0)
        config.stages = [stage(32, 1000.0, 32, 1e-3)]
    elif arg == "cpu":
        # The CPU recipe of the shipped model (README, "The shipped model"): 40 kimg at 32 px,
        # 8 at 64 px and a short 128 px finish; ~40 min on 2 idle cores with PDR_CPU_CONV=bf16.
        # Longer stages in a later run extend a finished workdir (the loop resumes a
        # lengthened stage).
        config.stages = [
            stage(32, 40.0, 32, 1e-3),
            stage(64, 8.0, 16, 5e-4),
            stage(128, 0.6, 8, 2e-4),
        ]
    elif arg == "cpu-continue":
        # A second CPU session from a trained model (init_from): lower learning rates, most of
        # the images at 64 px, and a 128 px finish at the size restoration runs at; ~70 min on 2
        # idle cores with PDR_CPU_CONV=bf16.
        config.optim.update(lr=5e-4, lr_rampup_kimg=0.5)
        config.stages = [
            stage(32, 20.0, 32, 5e-4),
            stage(64, 24.0, 16, 3e-4),
            stage(128, 6.0, 8, 1.5e-4),
        ]
    elif arg == "cpu-finish":
        # A third CPU session from a trained model (init_from), aimed at the prior's weakest
        # cells (README, "Prior diagnostic": photography at sigma 0.02-0.05): photographs in
        # half of every batch, ln(sigma) ~ N(-1.8, 1.5^2) (1.5x the density at model-space
        # sigma 0.04 of N(-1.4, 1.4^2), as much above sigma 2), low learning rates; 64 px, then
        # 128 px. ~70 min on 2 idle cores with PDR_CPU_CONV=bf16.
        stages = [stage(64, 20.0, 16, 2e-4), stage(128, 5.0, 8, 1e-4)]
        _photography_finish(config, weight=2.0, P_mean=-1.8, P_std=1.5, stages=stages)
    elif arg == "cpu-finish2":
        # A fourth CPU session (init_from), for the one diagnostic cell still below BM3D
        # (photography at sigma 0.02 on corpus:test): photographs in 60% of every batch,
        # ln(sigma) ~ N(-2.0, 1.5^2), lower learning rates, most of it at 128 px (the crop size of
        # the evaluation). ~90 min on 2 idle cores with PDR_CPU_CONV=bf16.
        stages = [stage(64, 12.0, 16, 1.5e-4), stage(128, 8.0, 8, 8e-5)]
        _photography_finish(config, weight=3.0, P_mean=-2.0, P_std=1.5, stages=stages)
    elif arg == "cpu-finish3":
        # A fifth CPU session (init_from), again for photography at sigma 0.02 (-0.13 dB against
        # BM3D on corpus:test after cpu-finish2): photographs in two thirds of every batch,
        # ln(sigma) ~ N(-2.2, 1.4^2), many more images at 64 px (low-sigma denoising is local;
        # 64 px runs ~4x the images per second of 128 px), a short 128 px finish. ~95 min on 2
        # idle cores with PDR_CPU_CONV=bf16.
        stages = [stage(64, 40.0, 16, 1e-4), stage(128, 6.0, 8, 5e-5)]
        _photography_finish(config, weight=4.0, P_mean=-2.2, P_std=1.4, stages=stages)
    elif arg == "cpu-finish4":
        # A sixth CPU session (init_from), for the luminance of RAW mosaics: linear camera RGB,
        # which the prior had never seen (photographs were sRGB-encoded as stored). cpu-finish3's
        # mix with each photograph decoded to linear light and re-encoded with a gamma
        # log-uniform in [1, 2.4] (data.gamma, as the colour prior's), at lower rates. ~60 min on
        # 2 idle cores with PDR_CPU_CONV=bf16. Measured and not shipped (docs/priors.md, run 6:
        # RAW +0.00 dB at s = 250 on corpus:val, two astronomy cells -0.12 to -0.17).
        stages = [stage(64, 30.0, 16, 8e-5), stage(128, 4.0, 8, 4e-5)]
        _photography_finish(config, weight=4.0, P_mean=-2.2, P_std=1.4, stages=stages)
        config.data.gamma = {"photography": (1.0, 2.4)}
    return config
