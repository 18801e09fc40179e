"""Convert a PyTorch EDM network into a pdr_jax model directory (network.json + Orbax variables).

    pdr-convert network-snapshot-200000.pkl /models/my-edm
    pdr-convert https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl /models/cifar10
    pdr-convert checkpoint.pth /models/gray --config pdr-gray128 --prefix module.

Reads EDM snapshots (.pkl), training states and plain state_dicts (.pt/.pth, zip or legacy)
without torch and without running anything from the file. Load the result with
``pdr_jax.model_io.load_model(OUT_DIR)``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

from pdr_jax.cli import finish_parser
from pdr_jax.convert import torch_pickle
from pdr_jax.presets import NETWORKS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        epilog="Snapshots record their architecture; state_dicts need --config and/or --kwargs. "
        f"Known configs: {', '.join(sorted(NETWORKS))}.",
    )
    parser.add_argument(
        "input", help="EDM .pkl, training-state .pt or state_dict .pt/.pth; or an http(s) URL"
    )
    parser.add_argument("out_dir", help="model directory to write (network.json, variables/)")
    parser.add_argument(
        "--key", default="ema", help="entry of the snapshot dict to convert (default: ema)"
    )
    parser.add_argument(
        "--config", help="pdr_jax.presets.NETWORKS name giving a state_dict's architecture"
    )
    parser.add_argument(
        "--kwargs", default="{}", help="JSON build_network overrides, e.g. '{\"label_dim\": 6}'"
    )
    parser.add_argument(
        "--prefix", help="strip this prefix from state_dict keys, e.g. module. or edm_model."
    )
    parser.add_argument(
        "--cache-dir", help="download cache for URLs (default: $PDR_JAX_CACHE or ~/.cache/pdr_jax)"
    )
    parser.add_argument("--sha256", help="expected sha256 of a downloaded file")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing model in out_dir"
    )
    parser.add_argument(
        "--max-bytes",
        type=float,
        default=torch_pickle.DEFAULT_MAX_BYTES,
        help=f"most bytes the file may make the reader allocate (decompressed entries, tensors); "
        f"default {torch_pickle.DEFAULT_MAX_BYTES / 2**30:g} GiB",
    )
    parser.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    finish_parser(parser, "pdr-convert network-snapshot-200000.pkl models/my-edm")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from pdr_jax import model_io, precond  # here, not at the top: --help without jax
    from pdr_jax.convert import convert_edm

    try:
        overrides = json.loads(args.kwargs)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--kwargs: invalid JSON ({exc})") from None
    start = time.time()
    print(f"reading {args.input} ...", flush=True)
    try:
        converted = convert_edm(
            args.input,
            args.key,
            config=args.config,
            prefix=args.prefix,
            cache_dir=args.cache_dir,
            sha256=args.sha256,
            max_bytes=int(args.max_bytes),
            **overrides,
        )
        print(f"writing {args.out_dir} ...", flush=True)
        model_io.save_model(
            args.out_dir,
            converted.network_kwargs,
            converted.variables,
            source=converted.source,
            overwrite=args.overwrite,
        )
    except (ValueError, OSError) as exc:  # conversion, file format, download and overwrite errors
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug, not a bad file: still one line unless --debug
        if args.debug:
            raise
        print(
            f"error: {args.input}: {type(exc).__name__}: {exc} (--debug shows the traceback)",
            file=sys.stderr,
        )
        return 1
    kwargs = converted.network_kwargs
    edm = converted.source.get("edm_class")
    print(
        f"done in {time.time() - start:.1f}s: {kwargs['precond']}/{kwargs['arch']}"
        + (f" (EDM {edm}/{converted.source['edm_model_class']})" if edm else "")
        + f", {precond.param_count(converted.net):,} parameters, label_dim {kwargs.get('label_dim', 0)}, "
        f"resolution {kwargs['img_resolution']}x{kwargs['img_resolution']}x{kwargs['img_channels']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
