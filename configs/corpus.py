"""Prior training on the offline corpus (tools/prepare_corpus.py): all three domains, weighted.

    python tools/prepare_corpus.py                                        # once: ~1 min
    python launch/train.py --config configs/corpus.py --workdir runs/corpus            # accelerator
    PDR_CPU_CONV=bf16 python launch/train.py --config configs/corpus.py:cpu --workdir ~/runs/corpus-cpu \\
        --config.train.init_from=models/pdr-gray-default                  # the shipped model's run
    python launch/train.py --config configs/corpus.py:tiny --workdir /tmp/run    # tests (needs a corpus)

Data: the corpus's train images and simulators (validation on its val split) plus the embedded
set (`{"corpus": ""}`, pdr_jax.data.pipeline.expand_sources); `--config.data.sources` replaces it.
Noise levels: ln(sigma) ~ N(-1.4, 1.4^2) puts more of the training where restoration spends its
calls than EDM's N(-1.2, 1.2^2): photon levels 2-250 mean sigma ~0.03-0.5 in [0, 1] units, and
the high-sigma start. Only what differs from configs/progressive.py is set here.
"""

import ml_collections

from configs import base, progressive


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = progressive.get_config(arg)
    config.data.sources = [{"corpus": ""}]
    # Per-domain weights: each domain a third of every batch, whatever its image count.
    config.data.domain_weights.update(photography=1.0, microscopy=1.0, astronomy=1.0)
    config.train.update(P_mean=-1.4, P_std=1.4)
    if arg == "cpu":
        # The CPU-hours recipe of the shipped model (README, "The shipped model"): the network
        # of configs/base.py:cpu at 32-64 px for most of the images, a short 128 px finish.
        base.apply_preset(config, "cpu")
        config.optim.update(lr=1e-3, lr_rampup_kimg=1.0)
        config.train.update(ema_halflife_kimg=4.0, val_every_kimg=4.0, val_batches=2, log_every_kimg=1.0)
        config.checkpoint.update(every_kimg=2.0)
        config.stages = [
            dict(resolution=32, kimg=24.0, batch_size=32, lr=1e-3, adaptive=False),
            dict(resolution=64, kimg=4.0, batch_size=16, lr=5e-4, adaptive=False),
            dict(resolution=128, kimg=0.4, batch_size=8, lr=2e-4, adaptive=False),
        ]
    return config
