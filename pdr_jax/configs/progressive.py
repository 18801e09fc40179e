"""Progressive-resolution prior training, 32 -> 64 -> 96 -> 128: the project's main job.

    python launch/train.py --config configs/progressive.py --workdir runs/progressive
    python launch/train.py --config configs/progressive.py:cpu --workdir runs/demo   # ~12 min, 2 CPU cores
    python launch/train.py --config configs/progressive.py:shipped --workdir runs/shipped  # the shipped model
    python launch/train.py --config configs/progressive.py:tiny --workdir /tmp/run  # tests

One network built for 128x128 (fully convolutional) carries its parameters through all stages.
Cheap low-resolution stages are `adaptive`: they end early once the validation loss plateaus
(see configs/base.py, train.adaptive_*). Only what differs from configs/base.py is set here.
"""

import ml_collections

from pdr_jax.configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = base.get_config()
    config.stages = [
        dict(resolution=32, kimg=4000.0, batch_size=1024, lr=4e-4, adaptive=True),
        dict(resolution=64, kimg=4000.0, batch_size=512, lr=3e-4, adaptive=True),
        dict(resolution=96, kimg=4000.0, batch_size=256, lr=2e-4, adaptive=True),
        dict(resolution=128, kimg=8000.0, batch_size=256, lr=2e-4, adaptive=False),
    ]
    if arg:
        base.apply_preset(config, "cpu" if arg == "shipped" else arg)
        if arg == "cpu":
            # ~12 min on 2 idle CPU cores (8 kimg): the learning happens at 32-64 px, 96/128 px only adapt.
            config.stages = [
                dict(resolution=32, kimg=6.0, batch_size=32, lr=2e-3, adaptive=True),
                dict(resolution=64, kimg=1.5, batch_size=16, lr=1e-3, adaptive=True),
                dict(resolution=96, kimg=0.25, batch_size=8, lr=5e-4, adaptive=False),
                dict(resolution=128, kimg=0.25, batch_size=8, lr=5e-4, adaptive=False),
            ]
        elif arg == "shipped":
            # The model in pdr-gray-default (README, "The shipped model"): ~70 min on a
            # 2-core CPU shared with other work. Most learning happens at 32 px; the higher
            # resolutions adapt the same weights briefly.
            config.optim.update(lr=1e-3, lr_rampup_kimg=1.0)
            config.train.update(
                ema_halflife_kimg=2.0, val_every_kimg=2.0, val_batches=2, log_every_kimg=1.0
            )
            config.checkpoint.update(every_kimg=2.0)
            config.stages = [
                dict(resolution=32, kimg=9.92, batch_size=32, lr=2e-3, adaptive=True),
                dict(resolution=64, kimg=1.0, batch_size=16, lr=1e-3, adaptive=False),
                dict(resolution=96, kimg=0.1, batch_size=8, lr=5e-4, adaptive=False),
                dict(resolution=128, kimg=0.2, batch_size=8, lr=5e-4, adaptive=False),
            ]
        elif arg == "tiny":
            config.model.img_resolution = 32
            config.stages = [
                dict(resolution=16, kimg=0.016, batch_size=8, lr=None, adaptive=False),
                dict(resolution=32, kimg=0.016, batch_size=8, lr=None, adaptive=False),
            ]
    return config
