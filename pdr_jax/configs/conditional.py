"""Conditional diffusion restoration: a DDPM-style U-Net that sees the noisy measurement.

    python launch/train.py --config configs/conditional.py --workdir runs/conditional
    nice -n 5 python launch/train.py --config configs/conditional.py:cpu --workdir runs/conditional  # ~25 min, 2 cores
    python launch/train.py --config configs/conditional.py:tiny --workdir /tmp/run   # tests

The model (pdr_jax/conditional.py) is trained on (clean, noisy) pairs simulated on the fly from
clean crops with random (s, r, b) in each domain's range (the data pipeline's paired mode), with
the discrete-time loss of `train.loss` on the target of `model.parameterization`. Same loop,
checkpoints, EMA and data parallelism as the prior (configs/base.py: only what differs is set
here); `train.objective = "ddpm"` selects the conditional steps. The end of training exports the
EMA model to workdir/model (network.json "kind": "conditional"), which tools/restore.py
--method conditional reads.
"""

import ml_collections

from pdr_jax.configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = base.get_config()
    # The U-Net, schedule (cosine, 1000 steps) and v target of configs/base.py's config.model.
    config.train.objective = "ddpm"
    # End-of-stage restorations of held-out noisy crops (DDIM, eta 0).
    config.sample.num_steps = 20
    if arg:
        base.apply_preset(config, arg)
        config.model.attn_resolutions = ()
        if arg == "cpu":
            # Small network; the learning happens at 32 px, 64 px adapts (~25 min on 2 loaded cores).
            config.model.update(img_resolution=64, channel_mult=(1, 2, 2))
            config.optim.update(lr=2e-3, lr_rampup_kimg=0.5)
            config.train.update(
                ema_halflife_kimg=0.5, val_every_kimg=1.0, val_batches=2, log_every_kimg=0.25
            )
            config.stages = [
                dict(resolution=32, kimg=4.0, batch_size=32, lr=2e-3, adaptive=False),
                dict(resolution=64, kimg=0.5, batch_size=16, lr=1e-3, adaptive=False),
            ]
        elif arg == "tiny":
            config.optim.update(lr=2e-3)
            config.train.update(val_timesteps=(100, 500, 900))
            config.sample.update(per_domain=1, num_steps=2)
    return config
