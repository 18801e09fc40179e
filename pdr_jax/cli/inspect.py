"""Look at a network's intermediate activations: per-layer statistics, channel montages, features.

    pdr-inspect --checkpoint /models/gray128 --out out/act --domain astronomy
    pdr-inspect --checkpoint edm-imagenet-64x64-cond-adm.pkl --out out/in64 \\
        --layers encoder_bottleneck,midblock,dec.8x8_in0 --class 1,207,980 --sigma 0.5,2,10 --num 12
    pdr-inspect --checkpoint /models/gray128 --list

--checkpoint is a model directory (pdr_jax.model_io.load_model) or an EDM snapshot /
training-state / state_dict file or URL (pdr_jax.convert.load_edm_pickle); --config NAME builds a
randomly initialised pdr_jax.precond.NETWORKS entry instead. --layers takes the stable names of
pdr_jax.activations (encoder_block_{i}, encoder_bottleneck, midblock, decoder_block_{i}) and/or EDM
module paths (enc.16x16_block0, dec.8x8_in0, map_layer1, ...); default: every stable name.

Inputs x = y + sigma * n (EDM scaling, n standard normal from --seed): y is zero (pure noise), the
images of --input (.npy, [N, H, W, C] or [N, C, H, W] in [-1, 1], or uint8), or samples drawn
with a pdr_jax.samplers.sample_with_preset preset (--sample-preset). --input-is-noisy uses --input as x.

Writes to --out:
  layer_stats.json   per layer: shape, mean, std, min, max, dead channels (indices and fraction),
                     per-channel mean / std / max|a|, plus the settings
  layer_stats.csv    the same per-layer numbers, one row per layer
  pooled.csv         spatially averaged activations, one row per image (image, sigma, label,
                     then one column per <layer>/<channel>): input for UMAP/t-SNE/PCA tools
  montage_<layer>.png  the channel maps of one image (--montage-image), each channel scaled from
                     its own 1st to 99th percentile (viridis; a flat channel in the middle colour)
  inputs.npz         x [N, H, W, C], sigma [N], labels [N, label_dim], clean images y
A channel is dead when |a| <= --dead-threshold (default 1e-6) at every position of every image.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import pathlib
import re
import sys
import time

import matplotlib
import numpy as np
from PIL import Image, ImageDraw

from pdr_jax.cli import add_label_arguments, finish_parser, label_batch_from_args
from pdr_jax.presets import NETWORKS, SAMPLER_PRESETS

# jax and the model code are imported in the functions that use them: --help answers at once.


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="model directory, or EDM .pkl/.pt/.pth file or URL")
    source.add_argument(
        "--config",
        choices=sorted(NETWORKS),
        help="a randomly initialised named network (weights from --seed)",
    )
    parser.add_argument("--out", help="output directory (required unless --list)")
    parser.add_argument("--list", action="store_true", help="print the layer names and exit")
    parser.add_argument("--layers", help="comma-separated layer names (default: all stable names)")
    parser.add_argument("--input", help=".npy images [N, H, W, C] or [N, C, H, W] in [-1, 1]")
    parser.add_argument(
        "--input-is-noisy", action="store_true", help="use --input as x, without adding noise"
    )
    parser.add_argument(
        "--sample-preset",
        choices=sorted(SAMPLER_PRESETS),
        help="draw the clean images y with this sampler preset first",
    )
    parser.add_argument(
        "--sample-steps", type=int, help="override the preset's num_steps (a quicker look)"
    )
    parser.add_argument("--num", type=int, default=8, help="images without --input (default 8)")
    parser.add_argument("--resolution", type=int, help="image size without --input (default: net)")
    parser.add_argument(
        "--sigma", default="1.0", help="noise level(s), comma-separated, cycling (default 1.0)"
    )
    parser.add_argument("--seed", type=int, default=0, help="noise, classes and --config weights")
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    add_label_arguments(parser)
    parser.add_argument("--dead-threshold", type=float, default=1e-6, help="default 1e-6")
    parser.add_argument(
        "--max-channels", type=int, default=64, help="channels per montage (default 64)"
    )
    parser.add_argument("--montage-image", type=int, default=0, help="image shown in the montages")
    finish_parser(
        parser, "pdr-inspect --checkpoint pdr-gray-default --out out/act --domain astronomy"
    )
    return parser.parse_args(argv)


def _log(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------------------------
# Network, labels and inputs.


def load_network(args):
    """(net, variables, description) from --checkpoint or --config."""
    import jax

    from pdr_jax import model_io, precond
    from pdr_jax.convert import load_edm_pickle

    if args.config:
        net = precond.build_network(args.config)
        init = jax.jit(lambda key: precond.init_variables(net, key))
        return net, init(jax.random.key(args.seed)), f"{args.config} (random weights)"
    path = model_io.resolve_model(args.checkpoint)  # a path, or a shipped model's name
    if path.is_dir():
        if not (path / model_io.NETWORK_FILE).is_file():
            raise ValueError(f"{path}: not a model directory (no {model_io.NETWORK_FILE})")
        net, variables = model_io.load_model(path)
        return net, variables, f"model {path}"
    net, variables = load_edm_pickle(args.checkpoint)
    return net, variables, f"EDM file {args.checkpoint}"


def read_images(path, channels: int) -> np.ndarray:
    """[N, H, W, C] float32 in [-1, 1] from a .npy of NHWC/NCHW/HWC images (uint8 is rescaled)."""
    images = np.load(path)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"{path}: expected [N, H, W, C] images, got shape {images.shape}")
    if images.shape[-1] != channels and images.shape[1] == channels:
        images = np.transpose(images, (0, 2, 3, 1))  # NCHW, as EDM stores images
    if images.shape[-1] != channels:
        raise ValueError(f"{path}: {images.shape[-1]} channels, the network wants {channels}")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 127.5 - 1
    return np.asarray(images, np.float32)


def make_inputs(args, net, variables):
    """(x [N, H, W, C], sigma [N], labels [N, label_dim] or None, clean y [N, H, W, C])."""
    import jax
    import jax.numpy as jnp

    from pdr_jax import samplers

    model = net.model
    channels = model.in_channels
    if args.input:
        clean = read_images(args.input, channels)
    else:
        res = args.resolution or model.img_resolution
        clean = np.zeros((args.num, res, res, channels), np.float32)
    num = clean.shape[0]
    sigmas = [float(s) for s in args.sigma.split(",")]
    sigma = np.asarray([sigmas[i % len(sigmas)] for i in range(num)], np.float32)
    labels = label_batch_from_args(args, model.label_dim, num)
    key_latents, key_churn, key_noise = jax.random.split(jax.random.key(args.seed), 3)
    if args.sample_preset:
        overrides = {} if args.sample_steps is None else {"num_steps": args.sample_steps}
        preset = SAMPLER_PRESETS[args.sample_preset]
        steps = overrides.get("num_steps", preset["num_steps"])
        _log(f"sampling {num} clean images with {args.sample_preset} ({steps} steps)...")
        tick = time.perf_counter()
        latents = jax.random.normal(key_latents, clean.shape)
        sample_labels = None if labels is None else jnp.asarray(labels)
        samples = samplers.sample_with_preset(
            net,
            variables,
            latents,
            sample_labels,
            key=key_churn,
            preset=args.sample_preset,
            **overrides,
        )
        clean = np.asarray(samples)
        _log(f"sampled in {time.perf_counter() - tick:.1f}s")
    if args.input_is_noisy:
        x = clean
    else:
        noise = np.asarray(jax.random.normal(key_noise, clean.shape), np.float32)
        x = clean + sigma[:, None, None, None] * noise
    return x, sigma, labels, clean


# ----------------------------------------------------------------------------------------------
# Capture and reductions, batch by batch.


def _reduce(captured: dict):
    """Channel summaries and pooled features [B, c] of one batch, on the device (jitted by
    run_capture)."""
    from pdr_jax import activations

    summaries = {name: activations.channel_summary(a) for name, a in captured.items()}
    pooled = {name: activations.pool_activations(a) for name, a in captured.items()}
    return summaries, pooled


def run_capture(net, variables, x, sigma, labels, layers, batch: int, montage_image: int):
    """Per layer: merged channel summary, pooled [N, c], the montage image's activation, shape."""
    import jax
    import jax.numpy as jnp

    from pdr_jax import activations

    reduce = jax.jit(_reduce)
    num = x.shape[0]
    batch = min(batch, num)
    num_batches = math.ceil(num / batch)
    summaries, pooled, maps, shapes = {}, {name: [] for name in layers}, {}, {}
    for b in range(num_batches):
        tick = time.perf_counter()
        # Every batch is full (the last one padded by repeating the last image): one program.
        index = np.minimum(np.arange(b * batch, (b + 1) * batch), num - 1)
        valid = min(batch, num - b * batch)
        batch_labels = None if labels is None else jnp.asarray(labels[index])
        captured = activations.capture_activations(
            net, variables, jnp.asarray(x[index]), jnp.asarray(sigma[index]), batch_labels, layers
        )
        captured = {name: a[:valid] for name, a in captured.items()}
        batch_summaries, batch_pooled = jax.device_get(reduce(captured))
        for name in layers:
            summaries[name] = activations.merge_summaries(
                summaries.get(name), batch_summaries[name]
            )
            pooled[name].append(batch_pooled[name])
            shapes[name] = captured[name].shape[1:]
            if b * batch <= montage_image < b * batch + valid:
                maps[name] = np.asarray(captured[name][montage_image - b * batch], np.float32)
        note = " (includes compilation)" if b == 0 else ""
        _log(f"batch {b + 1}/{num_batches}: {time.perf_counter() - tick:.1f}s{note}")
    pooled = {name: np.concatenate(parts) for name, parts in pooled.items()}
    return summaries, pooled, maps, shapes


# ----------------------------------------------------------------------------------------------
# Output.


def channel_montage(maps: np.ndarray, title: str, max_channels: int) -> Image.Image:
    """[h, w, c] channel maps -> one RGB image: a grid of the first max_channels, each scaled
    from its own 1st to 99th percentile with viridis (flat channels in the middle colour; the
    percentiles keep a few extreme pixels from washing a map out), tiles >= 32 px."""
    maps = np.asarray(maps, np.float32)[..., :max_channels]
    height, width, count = maps.shape
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    zoom = max(1, math.ceil(32 / max(height, width)))
    gap, header = 2, 14
    lo, hi = np.percentile(maps, [1, 99], axis=(0, 1))
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = np.where(hi > lo, np.clip((maps - lo) / span, 0, 1), 0.5)
    colors = matplotlib.colormaps["viridis"](scaled)[..., :3]
    tiles = np.repeat(np.repeat(colors, zoom, axis=0), zoom, axis=1)
    tile_h, tile_w = height * zoom, width * zoom
    canvas = np.full(
        (header + rows * (tile_h + gap) + gap, columns * (tile_w + gap) + gap, 3), 0.15, np.float32
    )
    for c in range(count):
        r, q = divmod(c, columns)
        top, left = header + gap + r * (tile_h + gap), gap + q * (tile_w + gap)
        canvas[top : top + tile_h, left : left + tile_w] = tiles[..., c, :]
    image = Image.fromarray(np.rint(canvas * 255).astype(np.uint8))
    ImageDraw.Draw(image).text((2, 1), title, fill=(255, 255, 255))
    return image


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _label_text(labels, i: int) -> str:
    """A class index for one-hot labels, else the vector; empty for an unconditional net."""
    if labels is None:
        return ""
    row = labels[i]
    if np.count_nonzero(row) == 1 and row.max() == 1:
        return str(int(np.argmax(row)))
    return " ".join(f"{v:g}" for v in row)


def write_outputs(out_dir, layers, statistics, pooled, maps, shapes, x, sigma, labels, clean, args):
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items()}
    report = {
        "settings": settings,
        "dead_threshold": args.dead_threshold,
        "num_images": int(x.shape[0]),
        "layers": [
            {"name": name, "path": path, "shape": list(shapes[name]), **statistics[name]}
            for name, path in layers.items()
        ],
    }
    (out_dir / "layer_stats.json").write_text(json.dumps(report, indent=1))
    with open(out_dir / "layer_stats.csv", "w", newline="") as f:
        writer = csv.writer(f)
        columns = ["mean", "std", "min", "max", "num_channels"]
        writer.writerow(["layer", "path", "shape", *columns, "dead_channels", "dead_fraction"])
        for name, path in layers.items():
            s = statistics[name]
            shape = "x".join(str(d) for d in shapes[name])
            row = [s[c] for c in columns] + [len(s["dead_channels"]), s["dead_fraction"]]
            writer.writerow([name, path, shape, *row])
    _log(f"wrote {out_dir / 'layer_stats.json'} and layer_stats.csv")

    with open(out_dir / "pooled.csv", "w", newline="") as f:
        writer = csv.writer(f)
        header = ["image", "sigma", "label"]
        for name in layers:
            header += [f"{name}/{c}" for c in range(pooled[name].shape[1])]
        writer.writerow(header)
        features = np.concatenate([pooled[name] for name in layers], axis=1)
        for i in range(x.shape[0]):
            row = [i, f"{sigma[i]:g}", _label_text(labels, i)]
            writer.writerow(row + [f"{v:.7g}" for v in features[i]])
    _log(f"wrote {out_dir / 'pooled.csv'}: {x.shape[0]} images x {features.shape[1]} features")

    for name in layers:
        if maps[name].ndim != 3:
            _log(f"no montage for {name}: not a spatial layer (shape {list(shapes[name])})")
            continue
        title = f"{name} ({layers[name]}) {'x'.join(str(d) for d in shapes[name])}"
        title += f", image {args.montage_image}"
        channel_montage(maps[name], title, args.max_channels).save(
            out_dir / f"montage_{_file_name(name)}.png"
        )
    _log(f"wrote {sum(m.ndim == 3 for m in maps.values())} montages")
    np.savez(
        out_dir / "inputs.npz",
        x=x,
        sigma=sigma,
        labels=np.zeros((x.shape[0], 0), np.float32) if labels is None else labels,
        clean=clean,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    from pdr_jax import activations

    if not args.list and not args.out:
        raise SystemExit("--out is required (or --list)")
    if args.num < 1 or args.batch < 1 or args.max_channels < 1:
        raise SystemExit("--num, --batch and --max-channels must be positive")
    try:
        _log("loading the network...")
        net, variables, description = load_network(args)
        requested = args.layers.split(",") if args.layers else None
        layers = activations.resolve_layers(net, requested)
    except (ValueError, OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    model = net.model
    _log(
        f"{description}: {type(model).__name__} {model.img_resolution}x{model.img_resolution}x"
        f"{model.in_channels}, label_dim {model.label_dim}"
    )
    if args.list:
        for info in activations.list_layers(net):
            _log(
                f"{info.name:22s} {info.path:22s} {info.resolution}x{info.resolution}x{info.channels}"
            )
        _log(f"EDM module paths: {', '.join(activations.module_keys(net))}")
        return 0
    try:
        x, sigma, labels, clean = make_inputs(args, net, variables)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not 0 <= args.montage_image < x.shape[0]:
        raise SystemExit(f"--montage-image must be in 0..{x.shape[0] - 1}")
    _log(f"{x.shape[0]} images {x.shape[1]}x{x.shape[2]}, sigma {args.sigma}; {len(layers)} layers")
    start = time.perf_counter()
    summaries, pooled, maps, shapes = run_capture(
        net, variables, x, sigma, labels, list(layers), args.batch, args.montage_image
    )
    statistics = {
        name: activations.layer_statistics(summaries[name], args.dead_threshold) for name in layers
    }
    write_outputs(
        pathlib.Path(args.out),
        layers,
        statistics,
        pooled,
        maps,
        shapes,
        x,
        sigma,
        labels,
        clean,
        args,
    )
    dead = sum(len(s["dead_channels"]) for s in statistics.values())
    _log(f"done in {time.perf_counter() - start:.1f}s; {dead} dead channels in total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
