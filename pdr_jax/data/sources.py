"""Grain data sources over image files: one record per frame (gray, one channel or RGB), read lazily.

A source is built from one config entry (see pipeline.default_config):

    {"domain": "microscopy", "paths": ["/data/cells/", "/data/more/*.tif"],
     "calibration": {"black_level": 100, "white_level": 4095, "gain": 0.5} or "calib.yaml",
     "conditioning": None | "calibration" | {"s": [1, 100], "r": 1.6, "b": [0, 5]},
     "split": "columns" | "train" | "val", "channels": "gray" | "split" | "rgb",
     "raw_mode": "packed"}

Building it opens every file once (readers.read_image), which catches unreadable, truncated and
wrong-shape files: each is skipped with one log line and listed in the DataSummary. Each record
is a ``Frame``: a small picklable description (path, frame and channel, calibration, domain)
whose ``read(rows, cols)`` returns a normalised [h, w, C] float32 patch in [0, 1] (C = 3 for
"rgb", else 1). Reads go through
a per-process cache, so memory-mapped files are opened once and decoded files decoded once.

Normalisation of stored values v: clean = clip((scale * v + offset - black) / (white - black), 0, 1)
per channel, then gray (readers.to_gray), one channel, or R, G, B ("rgb": a gray file's one
channel repeated, alpha dropped; other channel sets are refused). Calibration fields left as None come
from the file's metadata; a white level nobody knows (float data) is 1 when the data already
lie in [0, 1], else the file's `white_percentile` percentile.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import logging
import os
import pathlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pdr_jax.data import simulators
from pdr_jax.data.transforms import ConditioningRanges
from pdr_jax.io import readers
from pdr_jax.physics.conditioning import DEFAULT_SPEC, ConditioningSpec

log = logging.getLogger(__name__)

# The embedded default data set: scikit-image's bundled pictures with their domains.
# skimage's moon, cell and retina are reserved for evaluation and are never used here.
EMBEDDED_SOURCES: tuple[dict[str, Any], ...] = (
    {
        "name": "embedded-photography",
        "domain": "photography",
        "paths": [
            readers.SKIMAGE_SCHEME + name
            for name in (
                "astronaut",
                "camera",
                "chelsea",
                "coffee",
                "rocket",
                "motorcycle_left",
                "coins",
                "brick",
                "grass",
                "gravel",
            )
        ],
    },
    {  # the three IHC channels as three grayscale images
        "name": "embedded-microscopy",
        "domain": "microscopy",
        "paths": [readers.SKIMAGE_SCHEME + "immunohistochemistry"],
        "channels": "split",
    },
    {
        "name": "embedded-astronomy",
        "domain": "astronomy",
        "paths": [readers.SKIMAGE_SCHEME + "hubble_deep_field"],
    },
)

_SOURCE_KEYS = {
    "name",
    "domain",
    "paths",
    "calibration",
    "conditioning",
    "split",
    "channels",
    "raw_mode",
}
# A simulated source: {"domain", "simulator", "indices": [start, stop], "size", "seed", "split"}
# (pdr_jax.data.simulators), with "name" and "conditioning" as for files.
_SIMULATOR_KEYS = {
    "name",
    "domain",
    "simulator",
    "indices",
    "size",
    "seed",
    "split",
    "conditioning",
}


@dataclasses.dataclass(frozen=True)
class Calibration:
    """How a source's stored values become [0, 1] intensity and electrons.

    Levels are in the file's physical units (after FITS BSCALE/BZERO; ADU for camera data).
    None means: take it from the file's metadata.
    """

    black_level: float | tuple[float, ...] | None = None  # offset; per channel allowed
    white_level: float | None = None  # full scale / saturation
    gain: float | None = None  # electrons per ADU
    read_noise: float | None = None  # electrons
    background: float = 0.0  # electrons per pixel, for conditioning="calibration"
    white_percentile: float = 99.9  # white level of float data outside [0, 1] with no white level


def load_calibration(spec: Mapping[str, Any] | str | os.PathLike | None) -> Calibration:
    """A Calibration from a dict, a .json/.yaml/.yml file, or None (all from file metadata)."""
    if spec is None:
        return Calibration()
    if isinstance(spec, (str, os.PathLike)):
        path = pathlib.Path(spec)
        text = path.read_text()
        if path.suffix.lower() == ".json":
            spec = json.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            spec = yaml.safe_load(text) or {}
        else:
            raise ValueError(f"calibration file must be .json, .yaml or .yml: {path}")
    spec = dict(spec)
    unknown = set(spec) - {f.name for f in dataclasses.fields(Calibration)}
    if unknown:
        raise ValueError(f"unknown calibration fields {sorted(unknown)}")
    if isinstance(spec.get("black_level"), (list, tuple)):
        spec["black_level"] = tuple(float(v) for v in spec["black_level"])
    return Calibration(**spec)


@dataclasses.dataclass
class DataSummary:
    """What building the sources found: frames per source and domain, skipped and ignored files."""

    sources: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, reason)
    ignored: list[str] = dataclasses.field(default_factory=list)  # unsupported files in folders

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def frames_per_domain(self) -> dict[str, int]:
        counts = collections.Counter()
        for source in self.sources:
            counts[source["domain"]] += source["frames"]
        return dict(counts)

    def __str__(self) -> str:
        lines = [
            f"{s['name']} ({s['domain']}): {s['files']} files, {s['frames']} frames"
            for s in self.sources
        ]
        lines.append(f"skipped {self.num_skipped} unreadable files, ignored {len(self.ignored)}")
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


class _ReadCache:
    """Process-local LRU of opened files. Memory-mapped arrays cost nothing; decoded ones count
    their bytes against max_bytes. Thread-safe: Grain reads with several threads."""

    def __init__(self, max_bytes: int, max_files: int = 256):
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, path: str, raw_mode: str) -> tuple[Any, readers.ImageMeta]:
        """readers.read_image(path), opened once per process while it stays in the cache."""
        key = (path, raw_mode)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
        array, meta = readers.read_image(path, raw_mode=raw_mode)
        cost = 0 if meta.memmapped else int(getattr(array, "nbytes", 0))
        with self._lock:
            if key not in self._items:
                self._items[key] = ((array, meta), cost)
                self._bytes += cost
                while len(self._items) > 1 and (
                    self._bytes > self.max_bytes or len(self._items) > self.max_files
                ):
                    _, (_, old_cost) = self._items.popitem(last=False)
                    self._bytes -= old_cost
            return self._items[key][0]


_CACHES: dict[int, _ReadCache] = {}


def _read_cache(max_bytes: int) -> _ReadCache:
    if max_bytes not in _CACHES:
        _CACHES[max_bytes] = _ReadCache(max_bytes)
    return _CACHES[max_bytes]


@dataclasses.dataclass(frozen=True)
class Frame:
    """One image of a file (gray, one channel or RGB): a source record. ``read`` gives
    normalised patches."""

    path: str
    index: int  # frame (page, slice, HDU plane) in the file's [N, H, W, C] array
    channel: int | None  # None: all channels to gray (or RGB, see rgb); else that channel alone
    domain: int  # index into the ConditioningSpec's domains
    height: int
    width: int
    black: tuple[float, ...]  # per channel, physical units
    white: float
    scale: float  # physical = scale * stored + offset
    offset: float
    channel_names: tuple[str, ...] | None
    ranges: ConditioningRanges  # where (s, r, b) for this frame's examples come from
    split: str  # "columns", "train" or "val" (see transforms.split_columns)
    raw_mode: str = "packed"
    cache_bytes: int = 1 << 30
    rgb: bool = False  # channel None: R, G, B instead of gray

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """[h, w, C] float32 in [0, 1]: the normalised patch at rows x cols (C = 3 if rgb else 1)."""
        array, _ = _read_cache(self.cache_bytes).get(self.path, self.raw_mode)
        if self.rgb:
            c = min(array.shape[-1], 3)
            channels, black = slice(0, c), np.asarray(self.black[:c], np.float32)
        elif self.channel is None:
            channels, black = slice(None), np.asarray(self.black, np.float32)
        else:
            channels = slice(self.channel, self.channel + 1)
            black = np.float32(self.black[self.channel])
        # Values beyond float32 (corrupt or hostile files) become +-inf and clip to 0 or 1 below:
        # no overflow warnings for them.
        with np.errstate(over="ignore", invalid="ignore"):
            stored = np.asarray(array[self.index, rows, cols, channels], dtype=np.float32)
            x = (self.scale * stored + self.offset - black) / (np.float32(self.white) - black)
            if self.rgb:
                x = np.repeat(x, 3 // x.shape[-1], axis=-1)
            elif self.channel is None:
                x = readers.to_gray(x, self.channel_names)
        # NaN (masked pixels, common in FITS) -> 0; the network must never see one.
        return np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0, dtype=np.float32)


def _per_channel(value, channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in np.atleast_1d(value))
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise readers.UnreadableImageError(f"{len(values)} black levels for {channels} channels")
    return values


def _auto_white(array, meta: readers.ImageMeta, percentile: float) -> float:
    """White level of data without one: 1 if a sample of it lies in [0, 1], else a percentile."""
    n = array.shape[0]
    stride_y = max(1, array.shape[1] // 512)
    stride_x = max(1, array.shape[2] // 512)
    sample = np.concatenate(
        [
            np.asarray(array[i, ::stride_y, ::stride_x, :], np.float64).ravel()
            for i in sorted({0, n // 2, n - 1})
        ]
    )
    sample = meta.scale * sample + meta.offset
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        raise readers.UnreadableImageError("no finite values")
    if sample.min() >= 0 and sample.max() <= 1:
        return 1.0
    return float(np.percentile(sample, percentile))


def _frames_of_file(
    path: str,
    *,
    domain: int,
    calibration: Calibration,
    ranges: ConditioningRanges,
    split: str,
    channels: str,
    raw_mode: str,
    min_size: int,
    cache_bytes: int,
) -> tuple[list[Frame], readers.ImageMeta]:
    """Open one file and describe its frames; raises UnreadableImageError for a bad file."""
    # Through the cache: the frames' first reads in this process then find the file open.
    array, meta = _read_cache(cache_bytes).get(path, raw_mode)
    n, height, width, c = array.shape
    if height < min_size or width < min_size:
        raise readers.UnreadableImageError(f"{height}x{width} is smaller than min_size {min_size}")
    black_level = calibration.black_level
    if black_level is None:
        black_level = meta.black_level if meta.black_level is not None else 0.0
    black = _per_channel(black_level, c)
    white = calibration.white_level
    if white is None:
        white = meta.white_level
    if white is None:
        white = _auto_white(array, meta, calibration.white_percentile)
    if white <= max(black):
        raise readers.UnreadableImageError(f"white level {white} <= black level {max(black)}")
    names = meta.channel_names
    if channels in ("gray", "rgb"):
        channel_list = [None]
    elif channels == "split":
        alpha = {i for i, name in enumerate(names or ()) if name == "A"}
        channel_list = [i for i in range(c) if i not in alpha] if c > 1 else [None]
    else:
        raise ValueError(f"channels must be 'gray', 'split' or 'rgb', got {channels!r}")
    if channels == "rgb" and not (c == 1 or tuple((names or ())[:3]) == ("R", "G", "B")):
        raise readers.UnreadableImageError(
            f"channels='rgb' needs an RGB(A) or one-channel image, got channels {names or c}"
        )
    frames = [
        Frame(
            path=path,
            index=i,
            channel=ch,
            domain=domain,
            height=height,
            width=width,
            black=black,
            white=float(white),
            scale=meta.scale,
            offset=meta.offset,
            channel_names=names,
            ranges=ranges,
            split=split,
            raw_mode=raw_mode,
            cache_bytes=cache_bytes,
            rgb=channels == "rgb",
        )
        for i in range(n)
        for ch in channel_list
    ]
    return frames, meta


def expand_paths(paths: Sequence[str] | str, summary: DataSummary) -> list[str]:
    """Files named by `paths`: files as given, folders walked (sorted), glob patterns expanded.

    Files of unsupported types inside folders are listed in summary.ignored; a named path that
    does not exist is a skipped file.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for item in paths:
        item = str(item)
        if item.startswith(readers.SKIMAGE_SCHEME):
            files.append(item)
        elif os.path.isdir(item):
            for root, dirs, names in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    full = os.path.join(root, name)
                    if name.startswith("."):
                        continue
                    (files if readers.is_supported(full) else summary.ignored).append(full)
        elif any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            files += [m for m in matches if os.path.isfile(m) and readers.is_supported(m)]
        else:
            files.append(item)
    return files


def _ranges(conditioning, default: ConditioningRanges, fixed: dict[str, float | None]):
    """The ConditioningRanges of a source: the domain's, overridden by the source's entry.

    conditioning: None (the domain's ranges), "calibration" (the values in `fixed`: s = gain *
    (white - black) electrons at clean intensity 1, r = read noise, b = background), or a dict
    of s/r/b values or [lo, hi] ranges replacing the domain's.
    """
    if conditioning is None:
        return default
    if conditioning == "calibration":
        missing = [k for k, v in fixed.items() if v is None]
        if missing:
            raise ValueError(f"conditioning='calibration' needs {missing} (calibration or header)")
        return ConditioningRanges(**{k: (v, v) for k, v in fixed.items()})
    conditioning = dict(conditioning)
    unknown = set(conditioning) - {"s", "r", "b"}
    if unknown:
        raise ValueError(f"unknown conditioning fields {sorted(unknown)}")
    fields = {}
    for name in ("s", "r", "b"):
        value = conditioning.get(name)
        if value is None:
            fields[name] = getattr(default, name)
        else:
            lo, hi = (value, value) if np.isscalar(value) else value
            fields[name] = (float(lo), float(hi))
    return ConditioningRanges(**fields)


class ImageFrameSource:
    """A grain RandomAccessDataSource over the frames of one domain's files: len() and [i] -> Frame."""

    def __init__(self, frames: Sequence[Frame], name: str):
        self.frames = tuple(frames)
        self.name = name

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Frame:
        return self.frames[index]

    def __repr__(self) -> str:
        return f"ImageFrameSource({self.name!r}, {len(self)} frames)"


def build_source(
    entry: Mapping[str, Any],
    *,
    domain_ranges: Mapping[str, ConditioningRanges],
    summary: DataSummary,
    spec: ConditioningSpec = DEFAULT_SPEC,
    min_size: int = 16,
    channels: str = "gray",
    raw_mode: str = "packed",
    cache_mb: int = 1024,
) -> ImageFrameSource:
    """One ImageFrameSource from a config entry (see module docstring); bad files are skipped.

    Raises ValueError naming the source when none of its files is readable.
    """
    entry = dict(entry)
    if "simulator" in entry:
        return _build_simulated_source(
            entry, domain_ranges=domain_ranges, summary=summary, spec=spec
        )
    unknown = set(entry) - _SOURCE_KEYS
    if unknown:
        raise ValueError(f"unknown source fields {sorted(unknown)} in {entry}")
    domain_name = entry["domain"]
    domain = spec.domain_index(domain_name)
    name = entry.get("name") or f"{domain_name}:{entry['paths']}"
    calibration = load_calibration(entry.get("calibration"))
    conditioning = entry.get("conditioning")
    files = expand_paths(entry["paths"], summary)
    frames = []
    num_files = 0
    for path in files:
        try:
            file_frames, meta = _frames_of_file(
                path,
                domain=domain,
                calibration=calibration,
                ranges=domain_ranges[domain_name],
                split=entry.get("split", "columns"),
                channels=entry.get("channels", channels),
                raw_mode=entry.get("raw_mode", raw_mode),
                min_size=min_size,
                cache_bytes=int(cache_mb) << 20,
            )
        except readers.UnreadableImageError as e:
            reason = str(e).removeprefix(f"{path}: ")
            log.warning("Skipping unreadable file %s: %s", path, reason)
            summary.skipped.append((path, reason))
            continue
        if conditioning is not None:
            gain = calibration.gain if calibration.gain is not None else meta.gain
            first = file_frames[0]
            fixed = {
                "s": None if gain is None else gain * (first.white - max(first.black)),
                "r": calibration.read_noise
                if calibration.read_noise is not None
                else meta.read_noise,
                "b": calibration.background,
            }
            ranges = _ranges(conditioning, domain_ranges[domain_name], fixed)
            file_frames = [dataclasses.replace(f, ranges=ranges) for f in file_frames]
        frames += file_frames
        num_files += 1
    if not frames:
        raise ValueError(f"data source {name!r} has no readable image files (looked at {files})")
    summary.sources.append(
        {"name": name, "domain": domain_name, "files": num_files, "frames": len(frames)}
    )
    return ImageFrameSource(frames, name)


def _build_simulated_source(entry, *, domain_ranges, summary, spec) -> ImageFrameSource:
    """The ImageFrameSource of a simulator entry (see _SIMULATOR_KEYS); nothing is rendered yet."""
    unknown = set(entry) - _SIMULATOR_KEYS
    if unknown:
        raise ValueError(f"unknown simulated-source fields {sorted(unknown)} in {entry}")
    domain_name = entry["domain"]
    name = entry.get("name") or f"{domain_name}:{entry['simulator']}"
    ranges = _ranges(entry.get("conditioning"), domain_ranges[domain_name], {})
    frames = simulators.simulated_frames(
        entry["simulator"],
        tuple(entry.get("indices", (0, 1000))),
        size=int(entry.get("size", 256)),
        seed=int(entry.get("seed", 0)),
        domain=spec.domain_index(domain_name),
        ranges=ranges,
        split=entry.get("split", "train"),
    )
    summary.sources.append({"name": name, "domain": domain_name, "files": 0, "frames": len(frames)})
    return ImageFrameSource(frames, name)
