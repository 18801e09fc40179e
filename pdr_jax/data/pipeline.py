"""The data entry point: ``make_dataset(config.data, seed=..., resolution=..., global_batch=...)``.

Training chain (a Grain MapDataset until the prefetch):

    per domain: ImageFrameSource -> repeat(k) -> shuffle(seed) -> repeat()   (frames, reshuffled)
    MapDataset.mix(domains, domain_weights) -> WindowShuffle(seed)   (exact proportions per window)
    random_map: RandomCrop -> RandomDihedral -> SampleConditioning [-> SimulatePoissonGaussian]
    map: SelectKeys -> batch(global_batch // P) -> slice(process_index::P)   (P processes)
    to_iter_dataset(read threads) [-> mp_prefetch(workers)]

Every random draw comes from Grain's per-example generator, keyed by the seed and the example's
index in the mixed stream *before* batching. So the examples do not depend on the worker count,
and with P processes the k-th batches of processes 0..P-1, concatenated in that order (as
jax.make_array_from_process_local_data lays them out), are exactly the k-th batch of one process
with the same global batch; the processes' examples are disjoint.

Validation (split="val") is a fixed, finite list: a grid of crops inside the held-out columns of
every frame (the right-most ``val_fraction`` of each image, which training crops never touch),
with (s, r, b) drawn once from ``val_seed`` and no label dropout, padded with repeats (marked
``valid=False``) to a whole number of global batches. It depends on ``val_seed`` and the
resolution only, so losses are comparable across steps, runs and training seeds.

Iterator state: ``it = iter(pipeline)`` is a ``grain.DatasetIterator``; ``it.get_state()`` is a
small JSON-serialisable dict and ``it.set_state(state)`` moves a fresh iterator of the same
pipeline there. The position counts global batches, so it means the same batch to any process
count: the training loop stores one copy with Orbax's ``JsonSave`` (written by process 0) and
resumes it with any number of processes. (Grain's Orbax handler,
``grain.checkpoint.CheckpointSave(it)``, writes one file per process named by process index and
count and refuses a resume with another count; it suits pipelines whose state is per process.)

Throughput: ``python -m pdr_jax.data.pipeline --bench`` prints batches/s of the embedded pipeline.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import logging
import math
import time

import chex
import grain
import ml_collections
import numpy as np
from absl import flags

from pdr_jax.data import corpus, transforms
from pdr_jax.data import sources as sources_lib
from pdr_jax.physics.conditioning import DEFAULT_SPEC, ConditioningSpec

log = logging.getLogger(__name__)


def default_config() -> ml_collections.ConfigDict:
    """Every data field with its default: configs/base.py's `config.data` (declared there)."""
    from pdr_jax.configs import base  # the configs import this module's users, not it

    return base.data_config()


@dataclasses.dataclass(frozen=True)
class DataPipeline:
    """What make_dataset returns: iterate it for numpy batches.

    Batch: {"clean": [B, H, W, C] float32 in [0, 1] (C = 3 for data.channels "rgb", else 1),
    "cond": [B, D + 3] float32, "domain": [B] int32}; paired adds "noisy": [B, H, W, C] float32
    electrons and "s", "r", "b": [B] float32;
    split="val" adds "valid": [B] bool (False for padding repeats). B = global_batch // process_count.
    """

    dataset: grain.IterDataset
    summary: sources_lib.DataSummary
    batch_size: int  # per process
    num_batches: int | None  # batches in one pass of split="val"; None: infinite (train)

    def __iter__(self) -> grain.DatasetIterator:
        return iter(self.dataset)


def _derive_seed(seed: int, *ids: int) -> int:
    """A 32-bit seed for one stage of the chain, independent of the others."""
    return int(np.random.SeedSequence([seed, *ids]).generate_state(1)[0])


_MIN_SHUFFLE_LENGTH = 65536

# Stage ids for _derive_seed.
_SHUFFLE, _MIX_SHUFFLE, _CROP, _DIHEDRAL, _CONDITIONING, _NOISE, _GAMMA = range(7)


def _domain_ranges(cfg, spec: ConditioningSpec) -> dict[str, transforms.ConditioningRanges]:
    ranges = {}
    for domain in spec.domains:
        if domain in cfg.ranges:
            r = cfg.ranges[domain]
            ranges[domain] = transforms.ConditioningRanges(
                s=tuple(map(float, r.s)), r=tuple(map(float, r.r)), b=tuple(map(float, r.b))
            )
    return ranges


def build_frames(
    cfg, spec: ConditioningSpec = DEFAULT_SPEC
) -> tuple[dict[str, list[sources_lib.Frame]], sources_lib.DataSummary]:
    """Open every configured source (or the embedded set): frames per domain, and the summary."""
    summary = sources_lib.DataSummary()
    domain_ranges = _domain_ranges(cfg, spec)
    frames = collections.defaultdict(list)
    for entry in expand_sources(cfg.sources):
        if "simulator" in entry and cfg.channels == "rgb":
            raise ValueError(
                f"data source {entry.get('name') or entry['simulator']!r}: the simulators render "
                "gray images; leave them out (data.domain_weights or the corpus domains) "
                "when data.channels is 'rgb'"
            )
        if entry["domain"] not in domain_ranges:
            raise ValueError(f"no conditioning ranges configured for domain {entry['domain']!r}")
        source = sources_lib.build_source(
            entry,
            domain_ranges=domain_ranges,
            summary=summary,
            spec=spec,
            min_size=cfg.min_size,
            channels=cfg.channels,
            raw_mode=cfg.raw_mode,
            cache_mb=cfg.cache_mb,
        )
        frames[entry["domain"]].extend(source.frames)
    if summary.skipped:
        log.warning("Data: skipped %d unreadable files", summary.num_skipped)
    return dict(frames), summary


def expand_sources(entries) -> list[dict]:
    """The source entries of config.data.sources with corpus references expanded.

    [] -> the embedded set; "corpus" / "corpus:ROOT" or {"corpus": ROOT or "", "splits":
    ["train", "val"], "domains": [...],
    "embedded": True} -> the built corpus's images and simulators of those splits
    (pdr_jax.data.corpus.source_entries; "" is the default root), plus the embedded set unless
    "embedded" is False. Other entries pass through.
    """
    expanded = []
    for entry in list(entries) or sources_lib.EMBEDDED_SOURCES:
        if isinstance(entry, str):  # "corpus" or "corpus:ROOT", the short form
            name, _, root = entry.partition(":")
            if name != "corpus":
                raise ValueError(
                    f"data source {entry!r}: a string source must be 'corpus' or 'corpus:ROOT'"
                )
            entry = {"corpus": root}
        entry = dict(entry)
        if "corpus" not in entry:
            expanded.append(entry)
            continue
        unknown = set(entry) - {"corpus", "splits", "domains", "embedded"}
        if unknown:
            raise ValueError(f"unknown corpus source fields {sorted(unknown)} in {entry}")
        domains = entry.get("domains")
        expanded += corpus.source_entries(
            entry["corpus"] or corpus.DEFAULT_ROOT, entry.get("splits", ("train", "val")), domains
        )
        if entry.get("embedded", True):
            expanded += [
                dict(e)
                for e in sources_lib.EMBEDDED_SOURCES
                if domains is None or e["domain"] in domains
            ]
    return expanded


def _has_train_columns(frame: sources_lib.Frame, val_fraction: float) -> bool:
    x0, x1 = transforms.split_columns(frame.width, frame.split, val_fraction, "train")
    return x1 > x0


def _mixed_train_stream(cfg, frames, seed: int, spec: ConditioningSpec) -> grain.MapDataset:
    """Infinite MapDataset of Frames, domains mixed by cfg.domain_weights."""
    unknown = set(cfg.domain_weights) - set(spec.domains)
    if unknown:
        raise ValueError(f"data.domain_weights names unknown domains {sorted(unknown)}")
    parts, weights = [], []
    for i, domain in enumerate(spec.domains):
        weight = float(cfg.domain_weights.get(domain, 0.0))
        if weight < 0:
            raise ValueError(f"domain weight of {domain} is negative: {weight}")
        if domain not in frames:
            if weight > 0:
                log.info("Data: no source for domain %s; it is left out of the mix", domain)
            continue
        if weight == 0:
            continue
        usable = [f for f in frames[domain] if _has_train_columns(f, cfg.val_fraction)]
        if not usable:
            raise ValueError(f"domain {domain}: every frame is held out for validation")
        source = grain.MapDataset.source(sources_lib.ImageFrameSource(usable, domain))
        # Shuffle passes of the frame list in blocks of >= _MIN_SHUFFLE_LENGTH: Grain's
        # index_shuffle costs ~1/length per index (3 ms for 2 elements, 4 us for 65536).
        passes = math.ceil(_MIN_SHUFFLE_LENGTH / len(source))
        source = source.repeat(passes).shuffle(seed=_derive_seed(seed, _SHUFFLE, i)).repeat()
        parts.append(source)
        weights.append(weight)
    if not parts:
        raise ValueError("no domain with data has a positive weight in data.domain_weights")
    mixed = grain.MapDataset.mix(parts, weights)
    return grain.experimental.WindowShuffleMapDataset(
        mixed, window_size=cfg.shuffle_window, seed=_derive_seed(seed, _MIX_SHUFFLE)
    )


def _val_crops(cfg, frames, resolution: int, global_batch: int) -> list[transforms.CropSpec]:
    """The fixed validation crops of every frame, padded to a multiple of global_batch."""
    crops = [
        c
        for domain_frames in frames.values()
        for frame in domain_frames
        for c in transforms.val_crops(frame, resolution, cfg.val_fraction, cfg.val_crops_per_frame)
    ]
    if not crops:
        raise ValueError("no held-out data: val_fraction is 0 and no source has split='val'")
    padded = math.ceil(len(crops) / global_batch) * global_batch
    crops += [
        dataclasses.replace(crops[i % len(crops)], valid=False) for i in range(len(crops), padded)
    ]
    return crops


def _check_batch(
    batch: dict[str, np.ndarray], batch_size: int, resolution: int, dim: int, channels: int
):
    """Shapes and finiteness at the data API edge."""
    chex.assert_shape(batch["clean"], (batch_size, resolution, resolution, channels))
    chex.assert_shape(batch["cond"], (batch_size, dim))
    chex.assert_shape(batch["domain"], (batch_size,))
    chex.assert_tree_all_finite(batch)
    return batch


def make_dataset(
    cfg: ml_collections.ConfigDict,
    *,
    seed: int,
    resolution: int,
    global_batch: int,
    split: str = "train",
    process_index: int = 0,
    process_count: int = 1,
    paired: bool = False,
    spec: ConditioningSpec = DEFAULT_SPEC,
) -> DataPipeline:
    """The Grain pipeline of `split`, yielding this process's share of each global batch.

    cfg: a default_config() ConfigDict (config.data). seed: all training randomness (crops,
    flips, conditioning, mixing order, noise); split="val" uses cfg.val_seed instead.
    resolution: square crop size H = W. global_batch: examples per step over all processes,
    divisible by process_count. paired (or cfg.paired): add simulated noisy electrons and s/r/b.
    Returns a DataPipeline (see its docstring for the batch layout).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if global_batch % process_count:
        raise ValueError(f"global_batch {global_batch} not divisible by {process_count} processes")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside 0..{process_count - 1}")
    paired = paired or cfg.paired
    batch_size = global_batch // process_count
    frames, summary = build_frames(cfg, spec)
    keys = ["clean", "cond", "domain"] + (["noisy", "s", "r", "b"] if paired else [])

    if split == "train":
        ds = _mixed_train_stream(cfg, frames, seed, spec)
        ds = ds.random_map(
            transforms.RandomCrop(resolution, cfg.val_fraction), seed=_derive_seed(seed, _CROP)
        )
        if cfg.augment:
            ds = ds.random_map(transforms.RandomDihedral(), seed=_derive_seed(seed, _DIHEDRAL))
        if cfg.gamma:
            gamma = {spec.domain_index(d): tuple(map(float, r)) for d, r in cfg.gamma.items()}
            ds = ds.random_map(transforms.RandomGamma(gamma), seed=_derive_seed(seed, _GAMMA))
        conditioning = transforms.SampleConditioning(cfg.label_dropout, spec)
        noise_seed = _derive_seed(seed, _NOISE)
        ds = ds.random_map(conditioning, seed=_derive_seed(seed, _CONDITIONING))
        num_batches = None
    else:
        crops = _val_crops(cfg, frames, resolution, global_batch)
        ds = grain.MapDataset.source(crops).map(transforms.FixedCrop(resolution))
        conditioning = transforms.SampleConditioning(0.0, spec)
        noise_seed = _derive_seed(cfg.val_seed, _NOISE)
        ds = ds.random_map(conditioning, seed=_derive_seed(cfg.val_seed, _CONDITIONING))
        keys.append("valid")
        num_batches = len(crops) // global_batch
    if paired:
        ds = ds.random_map(transforms.SimulatePoissonGaussian(), seed=noise_seed)
    ds = ds.map(transforms.SelectKeys(keys))
    # Batch after every random_map (the per-example generators are keyed by the global index),
    # in blocks of global_batch / process_count; block k * P + p is process p's share of global
    # batch k. Each global batch is then the same rows in the same order for any process count
    # (a run resumed on fewer processes continues it exactly), and the iterator's position, a
    # batch index, means the same batch to every process count.
    ds = ds.batch(batch_size, drop_remainder=True)
    if num_batches is not None:
        ds = ds[: num_batches * process_count]
    ds = ds[process_index::process_count]
    read_options = grain.ReadOptions(
        num_threads=cfg.read_threads, prefetch_buffer_size=cfg.prefetch_buffer_size
    )
    iter_ds = ds.to_iter_dataset(read_options)
    if cfg.worker_count > 0:
        # Grain's workers read absl flags; outside an absl app (notebooks, scripts) they are
        # unparsed and would raise. Their defaults are what we want.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iter_ds = iter_ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=cfg.worker_count, per_worker_buffer_size=cfg.worker_buffer_size
            )
        )
    iter_ds = iter_ds.map(
        functools.partial(
            _check_batch,
            batch_size=batch_size,
            resolution=resolution,
            dim=spec.dim,
            channels=3 if cfg.channels == "rgb" else 1,
        )
    )
    return DataPipeline(iter_ds, summary, batch_size, num_batches)


def measure_throughput(
    cfg: ml_collections.ConfigDict | None = None,
    *,
    resolution: int = 128,
    global_batch: int = 8,
    num_batches: int = 50,
    warmup_batches: int = 3,
    seed: int = 0,
    paired: bool = False,
) -> float:
    """Batches per second of the training pipeline (the embedded set when cfg has no sources)."""
    cfg = default_config() if cfg is None else cfg
    pipeline = make_dataset(
        cfg, seed=seed, resolution=resolution, global_batch=global_batch, paired=paired
    )
    iterator = iter(pipeline)
    for _ in range(warmup_batches):
        next(iterator)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(iterator)
    return num_batches / (time.perf_counter() - start)


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="store_true", help="print training batches/s")
    parser.add_argument("--summary", action="store_true", help="print the sources found")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--global_batch", type=int, default=8)
    parser.add_argument("--num_batches", type=int, default=100)
    parser.add_argument("--worker_count", type=int, default=0)
    parser.add_argument("--read_threads", type=int, default=2)
    parser.add_argument("--paired", action="store_true")
    args = parser.parse_args(argv)
    cfg = default_config()
    cfg.worker_count = args.worker_count
    cfg.read_threads = args.read_threads
    if args.summary:
        print(build_frames(cfg)[1])
    if args.bench:
        rate = measure_throughput(
            cfg,
            resolution=args.resolution,
            global_batch=args.global_batch,
            num_batches=args.num_batches,
            paired=args.paired,
        )
        print(
            f"{'paired ' if args.paired else ''}pipeline, "
            f"{'configured' if cfg.sources else 'embedded'} data: {rate:.1f} batches/s "
            f"({rate * args.global_batch:.0f} images/s) at {args.resolution}x{args.resolution}, "
            f"batch {args.global_batch}, {args.worker_count} workers, {args.read_threads} threads"
        )


if __name__ == "__main__":
    _main()


__all__ = [
    "DataPipeline",
    "build_frames",
    "default_config",
    "make_dataset",
    "measure_throughput",
]
