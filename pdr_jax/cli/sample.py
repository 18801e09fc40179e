"""Sample a grid of images from a model directory or a training run, with EDM's Heun sampler.

    pdr-sample /models/edm-cifar10 out/cifar --num 64 --class 3
    pdr-sample runs/gray128 out/gray --num 12 --domain microscopy,astronomy --scale 50
    pdr-sample /models/gray out/gray --labels 0,1,0,0.2,0.05,0 --solver dpmpp2m

MODEL is a directory written by tools/convert_edm.py / pdr_jax.model_io.save_model, or a
training workdir (network.json + checkpoints/), whose latest (or --step) checkpoint's EMA
parameters are used. Writes OUT/samples.png (a grid; model outputs in [-1, 1] mapped to
[0, 255]) and OUT/samples.npz (images [N, H, W, C] float32 as sampled, labels [N, label_dim],
seeds [N], and the settings). Image i starts from the latents of seed + i, so with S_churn = 0
an image does not depend on --num or --batch.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time
import warnings

import numpy as np

from pdr_jax.cli import add_label_arguments, finish_parser, label_batch_from_args
from pdr_jax.settings import SOLVERS, solver_name

# jax and the model code are imported where they are used, so that --help answers at once.


def _deprecated_sampler_flag(name: str) -> str:
    """--sampler NAME, the old spelling of --solver NAME: warns, then as --solver."""
    warnings.warn("--sampler is deprecated; use --solver", FutureWarning, stacklevel=2)
    return solver_name(name)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        epilog="Labels: --labels gives the whole vector; --class one-hot classes; --domain the "
        "6-D physics conditioning (pdr_jax.physics.conditioning). Lists cycle over the images. "
        "Default: domains in turn for a net with a 6-D label, random classes (from --seed) for "
        "other conditional nets.",
    )
    parser.add_argument(
        "model", help="model directory (network.json + variables/) or training workdir"
    )
    parser.add_argument("out_dir", help="where samples.png and samples.npz go")
    parser.add_argument("--num", type=int, default=16, help="number of images (default 16)")
    parser.add_argument(
        "--batch", type=int, default=16, help="images per sampler call (default 16)"
    )
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default 0)")
    parser.add_argument("--steps", type=int, default=18, help="sampler steps N (default 18)")
    parser.add_argument(
        "--solver",
        choices=SOLVERS,
        type=solver_name,
        default="heun",
        help="pdr_jax.samplers.sample's solver (default heun: 2N-1 evaluations; euler, dpmpp2m: N)",
    )
    parser.add_argument(
        "--sampler",
        dest="solver",
        choices=SOLVERS,
        type=_deprecated_sampler_flag,
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--sigma-min", type=float, default=0.002)
    parser.add_argument("--sigma-max", type=float, default=80.0)
    parser.add_argument("--rho", type=float, default=7.0)
    parser.add_argument(
        "--S-churn", type=float, default=0.0, help="EDM's stochastic churn (heun/euler)"
    )
    parser.add_argument("--S-min", type=float, default=0.0)
    parser.add_argument("--S-max", type=float, default=float("inf"))
    parser.add_argument("--S-noise", type=float, default=1.0)
    add_label_arguments(parser)
    parser.add_argument(
        "--step", type=int, help="training workdir: checkpoint step (default latest)"
    )
    parser.add_argument("--no-ema", action="store_true", help="training workdir: raw parameters")
    finish_parser(
        parser,
        "pdr-sample pdr-gray-default out/gray --num 12 --domain microscopy,astronomy --scale 50",
    )
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Loading.


def load(model, step=None, ema=True):
    """(net, variables, description) of a model directory or a training workdir."""
    from pdr_jax import model_io
    from pdr_jax.train.checkpoint import load_training_run

    path = model_io.resolve_model(model)  # a path, or a shipped model's name
    if (path / "checkpoints").is_dir() and not (path / model_io.VARIABLES_DIR).is_dir():
        net, variables, step = load_training_run(path, step, ema)
        return net, variables, f"training run {path}, step {step}" + ("" if ema else " (raw)")
    net, variables = model_io.load_model(path)
    return net, variables, f"model {path}"


# ----------------------------------------------------------------------------------------------
# Labels and sampling.


def make_latents(seed: int, indices, shape):
    """Standard-normal latents [len(indices), *shape]; image i's come from key(seed + i)."""
    import jax
    import jax.numpy as jnp

    seeds = jnp.asarray(seed + np.asarray(indices), jnp.uint32)
    return jax.vmap(lambda s: jax.random.normal(jax.random.key(s), shape))(seeds)


def _batch_sharding(batch: int):
    """Shard the batch over all devices when it divides evenly, else run on one device."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.devices()
    if len(devices) == 1 or batch % len(devices):
        return None
    return NamedSharding(Mesh(np.array(devices), ("batch",)), PartitionSpec("batch"))


def progress_hook(bar):
    """A samplers guidance_fn that changes nothing (a zero correction) and advances `bar` by one
    at every denoiser call, from the host as the compiled loop runs (jax.debug.callback: no
    device sync in the loop)."""
    import jax
    import jax.numpy as jnp

    def hook(x, denoised, sigma):
        jax.debug.callback(lambda: bar.update(1))
        return jnp.zeros_like(denoised)

    return hook


def sample_batch(net, variables, latents, labels, args, key, guidance_fn=None):
    from pdr_jax import samplers

    sampler_args = samplers.network_sampler_args(
        net, variables, labels, sigma_min=args.sigma_min, sigma_max=args.sigma_max
    )
    churn = dict(S_churn=args.S_churn, S_min=args.S_min, S_max=args.S_max, S_noise=args.S_noise)
    if args.solver == "dpmpp2m":
        churn = {}  # deterministic; --S-* are EDM's (heun/euler), as their help says
    return samplers.sample(
        args.solver,
        latents=latents,
        key=key,
        num_steps=args.steps,
        rho=args.rho,
        guidance_fn=guidance_fn,
        **sampler_args,
        **churn,
    )


# ----------------------------------------------------------------------------------------------
# Output.


def image_grid(images):
    """[N, H, W, C] in [-1, 1] -> one PIL image, ceil(sqrt(N)) columns (C = 1: gray; else RGB)."""
    from PIL import Image

    images = np.asarray(images, np.float32)
    num, height, width, channels = images.shape
    columns = math.ceil(math.sqrt(num))
    rows = math.ceil(num / columns)
    pixels = np.clip(np.rint((images + 1) * 127.5), 0, 255).astype(np.uint8)
    pixels = pixels[..., :1] if channels < 3 else pixels[..., :3]
    grid = np.zeros((rows * height, columns * width, pixels.shape[-1]), np.uint8)
    for i, image in enumerate(pixels):
        r, c = divmod(i, columns)
        grid[r * height : (r + 1) * height, c * width : (c + 1) * width] = image
    return Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp
    import tqdm

    from pdr_jax import samplers

    if args.num < 1 or args.batch < 1 or args.steps < 1:
        raise SystemExit("--num, --batch and --steps must be positive")
    try:
        net, variables, description = load(args.model, args.step, not args.no_ema)
        labels = label_batch_from_args(args, net.model.label_dim, args.num)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    res, channels = net.model.img_resolution, net.model.in_channels
    batch = min(args.batch, args.num)
    sharding = _batch_sharding(batch)
    print(
        f"{description}: {res}x{res}x{channels}, label_dim {net.model.label_dim}; "
        f"{args.num} images, {args.solver} with {args.steps} steps, batch {batch}"
        + (f" over {len(jax.devices())} devices" if sharding else ""),
        flush=True,
    )
    num_batches = math.ceil(args.num / batch)
    outputs = []
    start = time.perf_counter()
    bar = tqdm.tqdm(
        total=num_batches * samplers.network_calls(args.solver, args.steps),
        desc="sample",
        unit="step",
        file=sys.stderr,
    )
    hook = progress_hook(bar)  # one hook: one compiled sampler for every batch
    for b in range(num_batches):
        # Every batch is full (the last one is padded) so one compiled program serves them all.
        indices = np.arange(b * batch, (b + 1) * batch)
        latents = make_latents(args.seed, indices, (res, res, channels))
        batch_labels = (
            None if labels is None else jnp.asarray(labels[np.minimum(indices, args.num - 1)])
        )
        if sharding is not None:
            latents = jax.device_put(latents, sharding)
            batch_labels = None if batch_labels is None else jax.device_put(batch_labels, sharding)
        key = jax.random.fold_in(jax.random.key(args.seed), b)  # churn noise, per batch
        outputs.append(
            np.asarray(sample_batch(net, variables, latents, batch_labels, args, key, hook))
        )
    jax.effects_barrier()  # every callback has ticked
    bar.close()
    images = np.concatenate(outputs)[: args.num]

    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image_grid(images).save(out_dir / "samples.png")
    settings = {k: v for k, v in vars(args).items()}
    np.savez(
        out_dir / "samples.npz",
        images=images,
        labels=np.zeros((args.num, 0), np.float32) if labels is None else labels,
        seeds=args.seed + np.arange(args.num),
        settings=json.dumps(settings),
    )
    finite = np.isfinite(images).all()
    print(
        f"wrote {out_dir / 'samples.png'} and samples.npz in {time.perf_counter() - start:.1f}s"
        + ("" if finite else "; WARNING: non-finite values in the samples"),
        flush=True,
    )
    return 0 if finite else 2


if __name__ == "__main__":
    sys.exit(main())
