"""The colour prior (pdr-rgb-default): photographs in R, G, B, linear or gamma-encoded.

    python tools/prepare_corpus.py                                        # once
    PDR_CPU_CONV=bf16 python launch/train.py --config configs/rgb.py:cpu --workdir ~/runs/rgb-cpu \\
        --config.train.init_from=pdr-gray-default          # the first colour prior's run
    PDR_CPU_CONV=bf16 python launch/train.py --config configs/rgb.py:cpu --workdir ~/runs/rgb-cpu2 \\
        --config.train.init_from=pdr-rgb-default  # its continuation, stopped at 52.8 kimg
    PDR_CPU_CONV=bf16 python launch/train.py --config configs/rgb.py:cpu-finish \\
        --workdir ~/runs/rgb-cpu3 --config.train.init_from=pdr-rgb-default   # then this: shipped
    python launch/train.py --config configs/rgb.py:tiny --workdir /tmp/run        # tests

The network of the grayscale prior (configs/corpus.py:cpu) with 3 image channels and the same
6-D conditioning. `init_from` a grayscale model copies every weight whose shape agrees and adapts
the first and last convolutions to 3 channels (model_io.adapt_image_channels), so training
starts from a prior that already restores each channel well and learns what the channels share.

Data: the corpus's photographs (train split; val split for validation) and the embedded
scikit-image photographs, in colour ("rgb": a gray photograph's channel repeated). Each crop is
decoded from sRGB to linear light and re-encoded with a gamma log-uniform in [1, 2.4]
(data.gamma): the prior sees linear light as a RAW sensor counts it and 8-bit gamma-encoded
images as users feed them in. Validation crops are as stored (sRGB-encoded).
"""

import ml_collections

from pdr_jax.configs import corpus


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "cpu", "cpu-finish", "tiny"):
        raise ValueError(f"unknown preset {arg!r}: expected 'cpu', 'cpu-finish' or 'tiny'")
    config = corpus.get_config("tiny" if arg == "tiny" else "cpu")
    config.model.img_channels = 3
    config.data.channels = "rgb"
    config.data.sources = [{"corpus": "", "domains": ["photography"]}]
    config.data.domain_weights.update(photography=1.0, microscopy=0.0, astronomy=0.0)
    config.data.gamma = {"photography": (1.0, 2.4)}
    if arg == "cpu":
        # From the grayscale prior (init_from): its recipe's low-sigma weighting, most images at
        # 64 px and a short 128 px finish (the evaluation's crop size). ~65 min on 2 idle cores with
        # PDR_CPU_CONV=bf16.
        config.train.update(P_mean=-1.8, P_std=1.5, ema_halflife_kimg=2.0)
        config.optim.update(lr=3e-4, lr_rampup_kimg=0.5)
        config.stages = [
            corpus.stage(64, 55.0, 16, 3e-4),
            corpus.stage(128, 3.0, 8, 1e-4),
        ]
    elif arg == "cpu-finish":
        # A third CPU session from a trained colour prior (init_from), for where a mosaic's
        # chrominances are denoised at high counts (model-space sigma ~0.05-0.1): ln(sigma) ~
        # N(-2.2, 1.4^2) and a third of cpu's learning rate, without its restart at 3e-4 (which
        # cost the last continuation 8 kimg of validation loss). ~50 min on 2 idle cores with
        # PDR_CPU_CONV=bf16.
        config.train.update(P_mean=-2.2, P_std=1.4, ema_halflife_kimg=2.0)
        config.optim.update(lr=1e-4, lr_rampup_kimg=0.5)
        config.stages = [corpus.stage(64, 40.0, 16, 1e-4), corpus.stage(128, 3.0, 8, 5e-5)]
    return config
