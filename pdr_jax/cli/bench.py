"""Benchmark pdr_jax on this machine: compile time, denoiser, Heun sampling, training, data, tiling.

    pdr-bench --config bench-64
    pdr-bench --config bench-64 --json > bench64.json
    pdr-bench --config bench-64 --torch-python /work/torchvenv/bin/python --edm-path /tmp/edm

What it measures, for one named configuration (BENCH_CONFIGS; each is configs/base.py with the
network, resolution and batch changed):

* compile: seconds to lower and compile the training step, the denoiser and the sampler;
* forward: D(x; sigma) of the EMA network on a batch (images/s);
* heun: EDM's Heun sampler, 18 steps = 35 evaluations of D (images/s);
* train: the project's own step (pdr_jax.train.steps.edm_train_step: EDM loss, forward +
  backward, clipping, Adam, EMA), jitted with the state donated as the training loop does
  (images/s);
* memory: peak resident host memory of this process, and each compiled program's memory
  analysis (argument, output, temporary bytes);
* data: pdr_jax.data.pipeline.measure_throughput at the configuration's resolution and batch;
* restore: one tiled evaluation of D over whole images of a few sizes (pdr_jax.restore.tiling),
  in megapixels/s.

Timings are medians over --repeats calls after a warm-up call; every call ends with
block_until_ready. The load average is reported: on a shared machine, compare numbers taken
in the same run only.

With --torch-python (a Python that has torch) and --edm-path (a checkout of NVlabs/edm), the
same network, batch, optimiser and sampler are timed in PyTorch EDM in a subprocess, and the
rounds alternate between the two (JAX, torch, JAX, torch, ...) so that both see the same load;
the report gives pdr_jax / torch ratios. pdr_jax never imports torch; EDM's code is only
imported by that subprocess (pdr_jax.evaluation.torch_worker), from --edm-path.

Programs are compiled as the project compiles them, under one pdr_jax.cpu record: on CPU the
convolutions go to oneDNN, the resampling and GroupNorm run as their CPU formulations, and XLA
gets the project's compiler options. --cpu-conv picks the record's mode as PDR_CPU_CONV does
(auto, f32, bf16, xla, or plain: XLA's defaults everywhere, the "before" figures); it reaches
--restore-scaling's processes too. XLA_FLAGS from the environment and the record are recorded.

--restore-scaling SIZE... instead runs tools/restore.py on synthetic SIZE x SIZE measurements,
one process per size, and reports its time and peak RSS against the image size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

import pdr_jax
from pdr_jax import cpu, samplers
from pdr_jax.cli import finish_parser
from pdr_jax.configs import base
from pdr_jax.evaluation import scaling
from pdr_jax.model_io import build_network_from_config
from pdr_jax.train.state import create_train_state, make_optimizer
from pdr_jax.train.steps import objective_of

# Named configurations: the network (config.model overrides), image size and batch.
# "bench-*" are the issue-13 reference points; "cpu-128" is configs/base.py's `cpu` preset.
_DDPMPP_64 = {
    "model_channels": 64,
    "channel_mult": (1, 2, 2),
    "num_blocks": 2,
    "attn_resolutions": (16,),
    "dropout": 0.0,
}
BENCH_CONFIGS = {
    "bench-64": {"model": _DDPMPP_64, "resolution": 64, "batch": 8, "restore_sizes": (128, 256)},
    "bench-128": {"model": _DDPMPP_64, "resolution": 128, "batch": 4, "restore_sizes": (256, 512)},
    "cpu-128": {
        "model": {
            "model_channels": 32,
            "channel_mult": (1, 2, 2, 2),
            "num_blocks": 1,
            "attn_resolutions": (16,),
            "dropout": 0.0,
        },
        "resolution": 128,
        "batch": 8,
        "restore_sizes": (256,),
    },
    # Seconds on a laptop CPU: for tests of this script.
    "tiny": {
        "model": {
            "model_channels": 8,
            "channel_mult": (1, 2),
            "num_blocks": 1,
            "attn_resolutions": (8,),
            "dropout": 0.0,
        },
        "resolution": 16,
        "batch": 2,
        "restore_sizes": (24,),
        "num_steps": 2,
    },
}
PARTS = ("forward", "heun", "train", "data", "restore")


def bench_config(name: str):
    """(config, resolution, batch, restore_sizes, num_steps) of a BENCH_CONFIGS entry."""
    if name not in BENCH_CONFIGS:
        raise KeyError(f"unknown config {name!r}; known: {sorted(BENCH_CONFIGS)}")
    spec = BENCH_CONFIGS[name]
    config = base.get_config()
    config.model.update(img_resolution=spec["resolution"], **spec["model"])
    return (
        config,
        spec["resolution"],
        spec["batch"],
        spec["restore_sizes"],
        spec.get("num_steps", 18),
    )


# ----------------------------------------------------------------------------------------------
# Timing.


def _time_calls(fn, repeats: int) -> list[float]:
    """Seconds per call of fn() (which blocks until its results are ready)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _summary(times: list[float], images: int) -> dict:
    median = statistics.median(times)
    return {
        "median_s": median,
        "min_s": min(times),
        "times_s": [round(t, 4) for t in times],
        "images_per_s": images / median,
    }


def _memory(compiled) -> dict | None:
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    fields = ("argument", "output", "alias", "temp", "generated_code")
    return {f"{f}_bytes": int(getattr(mem, f"{f}_size_in_bytes", 0)) for f in fields}


def _compile(jitted, *args):
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    seconds = time.perf_counter() - start
    _log(f"compiled in {seconds:.1f} s")
    return compiled, seconds


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class JaxBench:
    """The compiled programs of one configuration, each callable as a timed unit."""

    def __init__(self, name: str):
        config, self.resolution, self.batch, self.restore_sizes, self.num_steps = bench_config(name)
        self.config = config
        self.net, _ = build_network_from_config(config.model)
        res, batch, model = self.resolution, self.batch, self.net.model
        self.compile_s, self.memory = {}, {}

        tx = make_optimizer(
            config.optim.lr,
            betas=tuple(config.optim.betas),
            eps=config.optim.eps,
            grad_clip=config.optim.grad_clip,
        )
        # jit the init as the training loop does: params and ema_params are distinct buffers,
        # so the whole state can be donated.
        init = lambda: create_train_state(self.net, jax.random.key(0), tx, resolution=res)
        self.state = cpu.jit(init)()
        keys = jax.random.split(jax.random.key(1), 4)
        self.batch_data = {
            "clean": jax.random.uniform(keys[0], (batch, res, res, model.in_channels)),
            "cond": jax.random.uniform(keys[1], (batch, model.label_dim)),
        }
        self.labels = self.batch_data["cond"]
        self.latents = jax.random.normal(keys[2], (batch, res, res, model.in_channels))
        # A copy: the training step donates (deletes) the state's buffers.
        self.variables = jax.tree_util.tree_map(jnp.copy, self.state.variables(ema=True))

        train_step = objective_of(config).steps(self.net, config, batch)[0]  # the loop's step
        step = cpu.jit(train_step, donate_argnums=0)
        self.train_step, self.compile_s["train"] = _compile(
            step, self.state, self.batch_data, keys[3]
        )
        self.memory["train"] = _memory(self.train_step)
        self.step_key = keys[3]

        denoise = cpu.jit(
            lambda variables, x, sigma, labels: self.net.apply(variables, x, sigma, labels)
        )
        sigma = jnp.full((batch,), 1.0)
        self.forward, self.compile_s["forward"] = _compile(
            denoise, self.variables, self.latents, sigma, self.labels
        )
        self.memory["forward"] = _memory(self.forward)
        self.sigma = sigma

        # What tools/sample.py runs, under one outer jit to get its compile time and memory:
        # the denoiser (a Partial carrying the variables and labels) is an argument; round_sigma
        # is EDMPrecond's identity (network_sampler_args' net.apply version can't be traced).
        args = samplers.network_sampler_args(self.net, self.variables, self.labels)
        self.denoise_fn = args.pop("denoise_fn")
        args["round_sigma"] = None
        sample = lambda denoise_fn, latents: samplers.edm_sampler(
            denoise_fn, latents, num_steps=self.num_steps, **args
        )
        self.sampler, self.compile_s["heun"] = _compile(
            cpu.jit(sample), self.denoise_fn, self.latents
        )
        self.memory["heun"] = _memory(self.sampler)

    def run_forward(self):
        jax.block_until_ready(self.forward(self.variables, self.latents, self.sigma, self.labels))

    def run_heun(self):
        jax.block_until_ready(self.sampler(self.denoise_fn, self.latents))

    def run_train(self):
        self.state, metrics = self.train_step(self.state, self.batch_data, self.step_key)
        jax.block_until_ready(metrics)

    def run_data(self, num_batches: int) -> dict:
        from pdr_jax.data import pipeline

        rate = pipeline.measure_throughput(
            self.config.data,
            resolution=self.resolution,
            global_batch=self.batch,
            num_batches=num_batches,
        )
        return {"batches_per_s": rate, "images_per_s": rate * self.batch}

    def run_restore(self, repeats: int) -> list[dict]:
        """One tiled D evaluation over [1, size, size, C] images, tiles of the training size."""
        from pdr_jax.restore import tiling

        multiple = 2 ** (len(self.net.model.channel_mult) - 1)
        out = []
        denoise = jax.tree_util.Partial(_tile_denoiser(self.net), self.variables, None)
        for size in self.restore_sizes:
            plan = tiling.plan_tiles(
                size, size, tile=self.resolution, overlap=self.resolution // 8, multiple=multiple
            )
            tiled = tiling.tiled_denoiser(denoise, plan, batch=self.batch)
            image = jax.random.normal(
                jax.random.key(size), (1, size, size, self.net.model.in_channels)
            )
            run = cpu.jit(
                lambda x, tiled=tiled, plan=plan: tiling.unpad(
                    tiled(tiling.pad(x, plan), 1.0), plan
                )
            )
            start = time.perf_counter()
            compiled = run.lower(image).compile()
            compile_s = time.perf_counter() - start
            call = lambda compiled=compiled, image=image: jax.block_until_ready(compiled(image))
            times = _time_calls(call, repeats)
            median = statistics.median(times)
            out.append(
                {
                    "size": size,
                    "tiles": plan.num_tiles,
                    "compile_s": compile_s,
                    "median_s": median,
                    "megapixels_per_s": size * size / 1e6 / median,
                }
            )
        return out


def _tile_denoiser(net):
    """(variables, labels, tiles, sigma) -> D: unconditional (zero labels) tiles at one sigma."""

    def denoise(variables, labels, tiles, sigma):
        return net.apply(variables, tiles, sigma, labels)

    return denoise


# ----------------------------------------------------------------------------------------------
# PyTorch EDM, in a subprocess (timing only: it imports EDM from --edm-path).


class TorchBench:
    """PyTorch EDM's SongUNet (the same DDPM++ network) in a worker process, timed on request."""

    def __init__(self, python: str, edm_path: str, bench: JaxBench):
        cfg = bench.config
        model = cfg.model
        spec = {
            "edm_path": [os.path.join(edm_path, "stubs"), edm_path],
            "resolution": bench.resolution,
            "batch": bench.batch,
            "img_channels": model.img_channels,
            "label_dim": model.label_dim,
            "num_steps": bench.num_steps,
            "unet": {
                "model_channels": model.model_channels,
                "channel_mult": list(model.channel_mult),
                "num_blocks": model.num_blocks,
                "attn_resolutions": list(model.attn_resolutions),
                "dropout": model.dropout,
                "label_dropout": model.label_dropout,
                # DDPM++ as EDM's train.py sets it up.
                "embedding_type": "positional",
                "encoder_type": "standard",
                "decoder_type": "standard",
                "channel_mult_noise": 1,
                "resample_filter": [1, 1],
            },
            "lr": cfg.optim.lr,
            "betas": list(cfg.optim.betas),
            "eps": cfg.optim.eps,
            "grad_clip": cfg.optim.grad_clip,
            "P_mean": cfg.train.P_mean,
            "P_std": cfg.train.P_std,
            "sigma_data": bench.net.sigma_data,
        }
        # The worker imports no jax, only torch and EDM; this checkout's pdr_jax goes on its path.
        root = os.path.dirname(os.path.dirname(os.path.abspath(pdr_jax.__file__)))
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        }
        self.proc = subprocess.Popen(
            [python, "-m", "pdr_jax.evaluation.torch_worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"the torch worker ({python}) did not start; is torch installed there?"
            )
        self.info = json.loads(line)
        self.maxrss_kb = 0

    def times(self, what: str, repeats: int) -> list[float]:
        self.proc.stdin.write(json.dumps({"what": what, "repeats": repeats}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        self.maxrss_kb = reply["maxrss_kb"]
        return reply["times"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


# ----------------------------------------------------------------------------------------------
# The run.


def run(args) -> dict:
    load_before = os.getloadavg()
    bench = JaxBench(args.config)
    torch_bench = None
    if args.torch_python:
        if not args.edm_path:
            raise SystemExit("--torch-python needs --edm-path (a checkout of NVlabs/edm)")
        torch_bench = TorchBench(args.torch_python, args.edm_path, bench)

    parts = [p for p in PARTS if p not in args.skip]
    report = {
        "config": args.config,
        "resolution": bench.resolution,
        "batch": bench.batch,
        "model": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in bench.config.model.items()
        },
        "environment": {
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "load_average_before": load_before,
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
            "cpu_options": dataclasses.asdict(cpu.current()),
        },
        "compile_s": bench.compile_s,
        "program_memory": bench.memory,
    }
    timed = {"forward": bench.run_forward, "heun": bench.run_heun, "train": bench.run_train}
    jax_times = {p: [] for p in timed if p in parts}
    torch_times = {p: [] for p in jax_times}
    repeats = {"forward": args.repeats, "train": args.repeats, "heun": args.heun_repeats}
    # Warm-up calls (a program's first call is slower); Heun runs the warmed-up forward network.
    for part in jax_times:
        timed[part]()
        if torch_bench is not None and part != "heun":
            torch_bench.times(part, 1)
    # Rounds alternate JAX and torch, so that a change of load hits both.
    for round_index in range(args.rounds):
        _log(f"round {round_index + 1}/{args.rounds}")
        for part in jax_times:
            jax_times[part] += _time_calls(timed[part], repeats[part])
            if torch_bench is not None:
                torch_times[part] += torch_bench.times(part, repeats[part])
    results = {}
    for part, times in jax_times.items():
        results[part] = _summary(times, bench.batch)
        if torch_bench is not None:
            results[part]["torch"] = _summary(torch_times[part], bench.batch)
            results[part]["speedup_vs_torch"] = (
                results[part]["torch"]["median_s"] / results[part]["median_s"]
            )
    if "data" in parts:
        results["data"] = bench.run_data(args.data_batches)
    if "restore" in parts:
        results["restore"] = bench.run_restore(args.repeats)
    report["results"] = results
    report["peak_host_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch_bench is not None:
        report["torch"] = {**torch_bench.info, "peak_host_memory_mib": torch_bench.maxrss_kb / 1024}
        torch_bench.close()
    report["environment"]["load_average_after"] = os.getloadavg()
    return report


def format_report(report: dict) -> str:
    env, res = report["environment"], report["results"]
    title = (
        f"pdr_jax bench {report['config']}: {report['resolution']}x{report['resolution']}, batch {report['batch']} "
        f"(jax {env['jax']}, {env['backend']}, {env['cpu_count']} CPUs, convolutions {env['cpu_options']['conv']}, load {env['load_average_before'][0]:.1f} -> "
        f"{env['load_average_after'][0]:.1f})"
    )
    lines = [
        title,
        "compile (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["compile_s"].items()),
    ]
    for part in ("forward", "heun", "train"):
        if part in res:
            r = res[part]
            line = f"{part:8s} {r['images_per_s']:8.2f} images/s  (median {r['median_s'] * 1000:.0f} ms/batch)"
            if "torch" in r:
                line += f"   torch EDM {r['torch']['images_per_s']:.2f} images/s  -> x{r['speedup_vs_torch']:.2f}"
            lines.append(line)
    if "data" in res:
        lines.append(
            f"data     {res['data']['images_per_s']:8.1f} images/s ({res['data']['batches_per_s']:.1f} batches/s)"
        )
    for r in res.get("restore", []):
        lines.append(
            f"restore  {r['size']}x{r['size']} ({r['tiles']} tiles): {r['megapixels_per_s']:.3f} Mpx/s per D evaluation"
        )
    for name, mem in report["program_memory"].items():
        if mem:
            lines.append(
                f"memory   {name}: args {mem['argument_bytes'] / 2**20:.0f} MiB, temp {mem['temp_bytes'] / 2**20:.0f} MiB, "
                f"out {mem['output_bytes'] / 2**20:.0f} MiB (aliased {mem['alias_bytes'] / 2**20:.0f} MiB)"
            )
    lines.append(f"peak host memory {report['peak_host_memory_mib']:.0f} MiB")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--config", default="bench-64", choices=sorted(BENCH_CONFIGS))
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per part per round")
    parser.add_argument("--heun-repeats", type=int, default=1, help="timed sampler calls per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (alternating with torch)")
    parser.add_argument("--data-batches", type=int, default=20)
    parser.add_argument("--skip", nargs="*", default=(), choices=PARTS, help="parts not to run")
    parser.add_argument("--torch-python", help="a Python with torch: also time PyTorch EDM")
    parser.add_argument("--edm-path", help="a checkout of NVlabs/edm (with --torch-python)")
    parser.add_argument(
        "--restore-scaling",
        type=int,
        nargs="+",
        metavar="SIZE",
        help="instead of a config: time tools/restore.py on SIZE x SIZE measurements (peak RSS, s/Mpx)",
    )
    parser.add_argument(
        "--restore-steps",
        type=int,
        default=None,
        help="sampler steps for --restore-scaling (default: tools/restore.py's, the tuned default)",
    )
    parser.add_argument(
        "--restore-batch", type=int, default=8, help="tiles per network call (--restore-scaling)"
    )
    parser.add_argument(
        "--restore-tile",
        type=int,
        default=None,
        help="tile size (--restore-scaling; default: the rule)",
    )
    parser.add_argument(
        "--restore-checkpoint", default=None, help="model for --restore-scaling (default: shipped)"
    )
    parser.add_argument(
        "--cpu-conv",
        choices=cpu.MODES,
        default=None,
        help="the CPU record's mode (sets PDR_CPU_CONV, see pdr_jax.cpu): auto (the default: "
        "oneDNN float32 convolutions in a single-device process), f32, bf16 (oneDNN with "
        "bfloat16 operands, float32 accumulation), xla (XLA's convolutions, CPU layers and "
        "compiler options), or plain (XLA's defaults everywhere: the 'before' figures)",
    )
    finish_parser(
        parser, "pdr-bench --config bench-64", "pdr-bench --config bench-64 --json > bench64.json"
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.cpu_conv:
        # Every program compiled from here on (and --restore-scaling's processes) uses it.
        os.environ[cpu.ENV] = args.cpu_conv
    if args.restore_scaling:
        report = scaling.restore_scaling(
            args.restore_scaling,
            steps=args.restore_steps,
            checkpoint=args.restore_checkpoint,
            batch=args.restore_batch,
            tile=args.restore_tile,
            log=_log,
        )
        print(json.dumps(report, indent=2) if args.json else scaling.format_scaling(report))
        return
    report = run(args)
    print(json.dumps(report, indent=2) if args.json else format_report(report))


if __name__ == "__main__":
    main()
