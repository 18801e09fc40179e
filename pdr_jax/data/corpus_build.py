"""Build the offline training corpus (`pdr-corpus`; `pdr_jax.data.corpus` reads it).

`build(root)` fetches the packages of `PACKAGES` with ``apt-get download`` and unpacks them with
``dpkg -x`` under ``root/packages`` (nothing is installed system-wide), selects the images the
table names, refuses the reserved ones (`reserved_reason`), turns each into one image in
[0, 1] (`process`: photographs keep their colour, as the file encodes it (sRGB), the rest is
gray), drops exact and near duplicates, splits by whole image (80/10/10 per domain, fixed seed)
and writes the images and the manifest that `pdr_jax.data.corpus` describes. Rerunning skips
packages already unpacked and images whose source sha256 and output file are already in the
manifest.

Images of one scene (the HST frame and its drizzled copies, say) are not both taken.
Simulated images take disjoint index ranges per split.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import hashlib
import json
import logging
import os
import pathlib
import re
import subprocess
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from pdr_jax.data.corpus import (
    DEFAULT_ROOT,
    FRACTIONS,
    MANIFEST_VERSION,
    read_manifest,
    summarize,
)
from pdr_jax.io import readers

log = logging.getLogger(__name__)

# Bumped whenever `process` changes what it keeps or writes: a rerun reprocesses images whose
# record has another version instead of reusing them.
PROCESSING_VERSION = 4  # 3: photographs kept in colour; 4: their downsampling by the short side


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which files of an unpacked package become corpus images, and how they are processed."""

    domain: str
    pattern: str  # glob inside the package tree
    names: frozenset[str] | None = None  # file stems (or wallpaper folder names) to keep; None: all
    kind: str = "photo"  # "photo" (8-bit JPEG/PNG photographs), "render" (8-bit astronomy
    # renditions), "frame" (real detector frames with their own noise)
    largest_per_folder: int | None = None  # plasma: keep the largest landscape file of the folder
    # that many levels up (its variants are the same picture at other sizes)


# Real photographs only, chosen by eye from each package (the rest are illustrations, vector art,
# gradients and patterns): 13 + 2 from lomiri, the 12 of mate's nature/ folder, 12 from plasma.
PACKAGES: dict[str, tuple[Selection, ...]] = {
    "lomiri-wallpapers-16.04": (
        Selection(
            "photography",
            "usr/share/backgrounds/*.jpg",
            frozenset(
                {
                    "Bridge_by_Sander_Klootwijk",
                    "Dragonfly_by_Bolly",
                    "Picture_0B_by_freespace",
                    "Picture_1A_by_freespace",
                    "Wine_by_Jakkub_Mede",
                    "aitzgorri_by_Aitzol_Berasategi",
                    "free_by_Peter_Nerlich",
                    "friends_by_Aitzol_Berasategi",
                    "greentock_by_Peter_Nerlich",
                    "life_by_Aitzol_Berasategi",
                    "picosdeeuropa_by_Aitzol_Berasategi",
                    "seeding_by_Clements_Engelhardt",
                    "sunset_by_Aitzol_Berasategi",
                }
            ),
        ),
    ),
    "lomiri-wallpapers-20.04": (
        Selection(
            "photography",
            "usr/share/backgrounds/*.jpg",
            frozenset({"Infinite-Sea_by_Aury88", "Kleiber_by_Lukas_Baubkus"}),
        ),
    ),
    "mate-backgrounds": (Selection("photography", "usr/share/backgrounds/mate/nature/*.jpg"),),
    "plasma-workspace-wallpapers": (
        Selection(
            "photography",
            "usr/share/wallpapers/*/contents/images/*",
            frozenset(
                {
                    "BytheWater",
                    "ColdRipple",
                    "DarkestHour",
                    "EveningGlow",
                    "FallenLeaf",
                    "Grey",
                    "Kite",
                    "MilkyWay",
                    "OneStandsOut",
                    "Path",
                    "Volna",
                    "summer_1am",
                }
            ),
            largest_per_folder=2,
        ),
    ),
    "stellarium-data": (
        Selection("astronomy", "usr/share/stellarium/nebulae/default/*.png", kind="render"),
    ),
    # One ACS/WFC exposure of 47 Tuc in electrons; input1/input3 and the reference_* files are
    # the same exposure copied or drizzled, so they are not taken (one scene, one image).
    "python-drizzle-testdata": (
        Selection(
            "astronomy", "usr/share/python-drizzle/test_data/j8bt06nyq_flt.fits", kind="frame"
        ),
    ),
    # Sky images only (no spectra, flats, arcs or chopped IR cubes): a raw CCD frame, an ISAAC
    # IR frame, two DSS plates and an XMM-Newton EPIC photon-count image.
    "eso-midas-testdata": tuple(
        Selection("astronomy", f"usr/lib/eso-midas/*/test/prim/{name}", kind="frame")
        for name in (
            "ccd.fits",
            "ISAAC.*.fits",
            "dss_test1.fits",
            "dss_test2.fits",
            "image_M12c.fits",
        )
    ),
}

# Simulated images per split (pdr_jax.data.simulators): index ranges are disjoint per split.
SIMULATED = (
    ("fluorescence", "microscopy", {"train": 1500, "val": 48, "test": 48}),
    ("brightfield", "microscopy", {"train": 750, "val": 24, "test": 24}),
    ("astronomy", "astronomy", {"train": 1000, "val": 32, "test": 32}),
)
SIMULATED_SIZE = 256
_SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}

# Reserved for independent evaluation (never trained, tuned or tested on): by name, and for
# sky images by position. Fornax cluster: centre (RA 54.62, Dec -35.45) deg, radius 6 deg
# (about its virial radius at 20 Mpc), which includes NGC 1316 / Fornax A at 3.7 deg.
RESERVED_NAMES = ("moon", "luna", "m13", "n6205", "ngc6205", "n1316", "ngc1316", "fornax")
RESERVED_REGIONS = (
    ("M13", 250.423, 36.461, 1.0),
    ("Fornax cluster / NGC 1316", 54.62, -35.45, 6.0),
)


def reserved_reason(path: str, centre: tuple[float, float] | None = None) -> str | None:
    """Why an image may not be used (a reserved name or sky position), or None."""
    stem = re.sub(r"[^a-z0-9]", "", pathlib.Path(path).stem.lower())
    for name in RESERVED_NAMES:
        if stem.startswith(name) or (len(name) > 4 and name in stem):
            return f"reserved for evaluation: name matches {name!r}"
    if centre is not None:
        ra, dec = np.radians(centre)
        for label, ra0, dec0, radius in RESERVED_REGIONS:
            ra0, dec0 = np.radians(ra0), np.radians(dec0)
            cos_d = np.sin(dec) * np.sin(dec0) + np.cos(dec) * np.cos(dec0) * np.cos(ra - ra0)
            distance = np.degrees(np.arccos(np.clip(cos_d, -1, 1)))
            if distance < radius:
                return f"reserved for evaluation: {distance:.1f} deg from {label}"
    return None


# Fetching.


def fetch_package(
    name: str, packages_dir: pathlib.Path, *, run: Callable = subprocess.run
) -> pathlib.Path:
    """Download a Debian package and unpack it under packages_dir/name (once); its tree.

    Uses ``apt-get download`` (no installation) and ``dpkg -x``. Raises FileNotFoundError
    naming the package when apt cannot get it.
    """
    tree = packages_dir / name
    if (tree / ".unpacked").exists():
        return tree
    debs = packages_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{name}_*.deb"))
    if not found:
        result = run(["apt-get", "download", name], cwd=debs, capture_output=True, text=True)
        found = sorted(debs.glob(f"{name}_*.deb"))
        if result.returncode or not found:
            raise FileNotFoundError(
                f"package {name}: apt-get download failed: {result.stderr.strip()[-300:]}"
            )
    tree.mkdir(parents=True, exist_ok=True)
    result = run(["dpkg", "-x", str(found[-1]), str(tree)], capture_output=True, text=True)
    if result.returncode:
        raise FileNotFoundError(f"package {name}: dpkg -x failed: {result.stderr.strip()[-300:]}")
    (tree / ".unpacked").write_text(found[-1].name)
    return tree


def package_version(tree: pathlib.Path) -> str:
    """The version in the unpacked .deb's file name (name_version_arch.deb), or ''."""
    marker = tree / ".unpacked"
    parts = marker.read_text().split("_") if marker.exists() else []
    return parts[1].replace("%3a", ":") if len(parts) > 2 else ""


def licence_of(tree: pathlib.Path, package: str, path: str) -> str:
    """The licence of `path` from the package's machine-readable debian/copyright.

    DEP-5: the last Files stanza whose pattern matches wins; patterns are matched against the
    installed path's tail (packages install from another layout). 'unknown' if none.
    """
    copyright_file = tree / "usr/share/doc" / package / "copyright"
    if not copyright_file.exists():
        return "unknown"
    licence = "unknown"
    for stanza in re.split(r"\n\s*\n", copyright_file.read_text(errors="replace")):
        files = re.search(r"^Files:(.*(?:\n[ \t].*)*)", stanza, re.MULTILINE)
        name = re.search(r"^License:[ \t]*(\S.*)$", stanza, re.MULTILINE)
        if not (files and name):
            continue
        for pattern in files.group(1).split():
            if (
                pattern == "*"
                or fnmatch.fnmatch(path, "*" + pattern)
                or (os.path.basename(pattern) == os.path.basename(path))
            ):
                licence = name.group(1).strip()
    return licence


# Selecting and processing.


def _candidates(tree: pathlib.Path, selection: Selection) -> list[pathlib.Path]:
    """Files of the selection, sorted; symlinks left out (plasma links its sizes together)."""
    files = [pathlib.Path(p) for p in sorted(glob.glob(str(tree / selection.pattern)))]
    files = [f for f in files if f.is_file() and not f.is_symlink()]
    if selection.largest_per_folder:

        def folder(f):
            return f.parents[selection.largest_per_folder].name

        best = {}
        for f in files:
            if selection.names is not None and folder(f) not in selection.names:
                continue
            try:
                w, h = (int(v) for v in f.stem.split("x"))
            except ValueError:
                continue
            if w >= h and w * h > best.get(folder(f), (0, None))[0]:
                best[folder(f)] = (w * h, f)
        return sorted(f for _, f in best.values())
    if selection.names is not None:
        files = [f for f in files if f.stem in selection.names]
    return files


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def noise_level(x: np.ndarray) -> float:
    """Robust std of pixel noise: MAD of the diagonal second difference (1 for unit white noise)."""
    d = (x[1:, 1:] - x[:-1, 1:] - x[1:, :-1] + x[:-1, :-1]) / 2
    if np.mean(d == 0) > 0.2:
        # Sparse data (photon-count images: mostly zeros) would give a MAD of 0: measure the
        # pixels that change.
        d = d[d != 0]
        if d.size == 0:
            return 0.0
    return float(1.4826 * np.median(np.abs(d - np.median(d))))


def _read(path: pathlib.Path, colour: bool) -> np.ndarray:
    """The file as float64 in its physical units (first frame): [H, W, 3] when `colour` and the
    file is RGB(A) (alpha dropped), else [H, W] gray as readers do."""
    array, meta = readers.read_image(path)
    x = np.asarray(array[0], np.float64) * meta.scale + meta.offset
    if colour and tuple((meta.channel_names or ())[:3]) == ("R", "G", "B"):
        return x[..., :3]
    return readers.to_gray(x, meta.channel_names)[..., 0]


def _downsample(x: np.ndarray, factor: int) -> np.ndarray:
    """Anti-aliased downsampling of the first two axes ([H, W] or [H, W, C])."""
    from skimage.transform import resize

    if factor == 1:
        return x
    shape = (x.shape[0] // factor, x.shape[1] // factor, *x.shape[2:])
    return resize(x, shape, order=1, anti_aliasing=True, preserve_range=True)


# Real frames are kept when their own noise after processing is below this (intensity units):
# a fifth of the smallest noise the prior is trained to remove (s = 1e4 at intensity 0.1 is ~3e-3).
MAX_FRAME_NOISE = 2e-3


def process(path: pathlib.Path, kind: str) -> tuple[np.ndarray, dict[str, Any]]:
    """One file -> ([H, W] or [H, W, 3] float32 in [0, 1], the processing applied). Raises
    UnreadableImageError.

    photo: 8-bit values / 255, in colour (the file's sRGB encoding kept; a gray file stays
    gray), downsampled by 2-4 (so that the short side stays >= 384 px) with a
    Gaussian anti-aliasing filter: JPEG blocks and ringing shrink below the noise the prior sees.
    render: 8-bit astronomy renditions as they are (already small); refused when posterised
    (< 64 distinct gray levels, e.g. palette-quantised). frame: detector data; black = 0.5th,
    white = 99.9th percentile, then binned by 1, 2, 4 or 8 until its noise_level is below
    MAX_FRAME_NOISE (else refused).
    """
    x = _read(path, colour=kind == "photo")
    if not np.isfinite(x).any():
        raise readers.UnreadableImageError(f"{path}: no finite values")
    if kind in ("photo", "render"):
        x = np.clip(x / 255.0, 0, 1)
        levels = len(np.unique(np.round(x * 255)))
        info: dict[str, Any] = {"source_shape": list(x.shape), "gray_levels": levels}
        if kind == "render" and levels < 64:
            raise readers.UnreadableImageError(f"posterised: {levels} gray levels (< 64)")
        factor = int(np.clip(min(x.shape[:2]) // 384, 2, 4)) if kind == "photo" else 1
        x = _downsample(x, factor)
        info.update(
            downsample=factor,
            steps=("RGB (sRGB-encoded) / 255" if x.ndim == 3 else "gray (Rec. 709) / 255")
            + (f", {factor}x anti-aliased downsampling" if factor > 1 else ""),
        )
    else:
        x = np.nan_to_num(x, nan=float(np.nanmedian(x)))
        black, white = np.percentile(x, [0.5, 99.9])
        if white <= black:
            raise readers.UnreadableImageError(f"{path}: constant image")
        x = np.clip((x - black) / (white - black), 0, 1)
        info = {"source_shape": list(x.shape), "black": float(black), "white": float(white)}
        for factor in (1, 2, 4, 8):
            binned = _downsample(x, factor)
            sigma = noise_level(binned)
            if sigma < MAX_FRAME_NOISE and min(binned.shape) >= 64:
                break
        else:
            raise readers.UnreadableImageError(
                f"noise {sigma:.2g} after 8x binning is above {MAX_FRAME_NOISE:g}: the prior would learn it"
            )
        x = binned
        info.update(
            downsample=factor,
            noise=sigma,
            steps=(
                f"(v - p0.5) / (p99.9 - p0.5) clipped, {factor}x anti-aliased binning; "
                f"residual noise {sigma:.1e}"
            ),
        )
    return np.clip(x, 0, 1).astype(np.float32), info


def thumbnail(x: np.ndarray, size: int = 64) -> np.ndarray:
    """[2, size^2]: the zero-mean, unit-norm thumbnail and its detail layer (thumbnail minus a
    2-px blur of it), for near-duplicate tests. The detail layer tells apart pictures that are
    alike at low resolution (two star clusters centred in their frames) and keeps two sizes or
    encodings of one picture alike."""
    from scipy import ndimage
    from skimage.transform import resize

    x = np.asarray(x, np.float64)
    t = resize(x.mean(axis=2) if x.ndim == 3 else x, (size, size), anti_aliasing=True)
    layers = [t, t - ndimage.gaussian_filter(t, 2.0)]
    out = []
    for layer in layers:
        layer = layer.ravel() - layer.mean()
        out.append(layer / (np.linalg.norm(layer) + 1e-12))
    return np.stack(out)


# Both thumbnail layers must correlate above this for two images to be near duplicates.
NEAR_DUPLICATE_CORRELATION = 0.9


def near_duplicate(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two thumbnail() results are of the same picture."""
    return bool(np.all(np.sum(a * b, axis=1) > NEAR_DUPLICATE_CORRELATION))


def _split_rank(seed: int, image_id: str) -> str:
    return hashlib.sha256(f"{seed}:{image_id}".encode()).hexdigest()


def assign_splits(records: list[dict], seed: int) -> None:
    """Set record["split"]: per domain, images ranked by sha256(seed:id); the first 10 % are
    val, the next 10 % test (at least one each from 3 images on), the rest train.

    The rank of an image does not depend on the others, so adding or dropping an image (a
    package update, a new refusal rule) moves no other image across splits unless the counts
    change.
    """
    by_domain: dict[str, list[dict]] = {}
    for record in records:
        by_domain.setdefault(record["domain"], []).append(record)
    for items in by_domain.values():
        items = sorted(items, key=lambda r: _split_rank(seed, r["id"]))
        n_held = max(1, round(FRACTIONS["val"] * len(items))) if len(items) >= 3 else 0
        for rank, item in enumerate(items):
            item["split"] = "val" if rank < n_held else "test" if rank < 2 * n_held else "train"


def _image_id(package: str, path: str) -> str:
    return f"{package}/" + re.sub(r"[^A-Za-z0-9._-]+", "_", path.removeprefix("usr/share/"))


def _sky_centres(tree: pathlib.Path) -> dict[str, tuple[float, float]]:
    """Stellarium: image file -> (RA, Dec) centre in degrees from textures.json's corners."""
    centres = {}
    number = r"-?(?:\d+\.?\d*|\.\d+)"
    for textures in tree.glob("usr/share/stellarium/nebulae/*/textures.json"):
        # Not strict JSON (numbers such as -.97): read each tile's image and corners by pattern.
        for block in textures.read_text(errors="replace").split("imageCredits")[1:]:
            url = re.search(r'"imageUrl"\s*:\s*"([^"]+)"', block)
            coords = re.search(r'"worldCoords"\s*:\s*\[\[(.*?)\]\]', block, re.DOTALL)
            if not (url and coords):
                continue
            values = [float(v) for v in re.findall(number, coords.group(1))]
            corners = np.asarray(values[: len(values) // 2 * 2], np.float64).reshape(-1, 2)
            tile = {"imageUrl": url.group(1)}
            if len(corners):
                # mean of unit vectors: robust at RA = 0/360
                ra, dec = np.radians(corners[:, 0]), np.radians(corners[:, 1])
                v = np.stack(
                    [np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]
                ).mean(1)
                centres[tile["imageUrl"]] = (
                    float(np.degrees(np.arctan2(v[1], v[0])) % 360),
                    float(np.degrees(np.arcsin(v[2] / np.linalg.norm(v)))),
                )
    return centres


def build(
    root: pathlib.Path | str = DEFAULT_ROOT,
    *,
    packages: dict[str, tuple[Selection, ...]] | None = None,
    packages_dir: pathlib.Path | str | None = None,
    seed: int = 0,
    simulated: Iterable = SIMULATED,
    fetch: Callable[[str, pathlib.Path], pathlib.Path] = fetch_package,
    progress: Callable[[Iterable], Iterable] = lambda items: items,
) -> dict[str, Any]:
    """Build (or complete) the corpus under root; returns the manifest (also written).

    packages: the selection table (default PACKAGES); packages_dir: where packages are
    unpacked (default root/packages); fetch(name, packages_dir) -> unpacked tree (tests pass a
    fake). A missing package or an unreadable, reserved or duplicate file is skipped, logged
    and listed in manifest["skipped"] with the reason.
    """
    root = pathlib.Path(root).expanduser()
    packages = PACKAGES if packages is None else packages
    packages_dir = pathlib.Path(packages_dir) if packages_dir else root / "packages"
    previous = {r["id"]: r for r in (read_manifest(root) or {}).get("images", [])}
    records, skipped, thumbs, hashes = [], [], [], {}

    def skip(package, path, reason):
        log.warning("corpus: skipping %s %s: %s", package, path, reason)
        skipped.append({"package": package, "path": path, "reason": reason})

    work = []
    for package, selections in packages.items():
        try:
            tree = pathlib.Path(fetch(package, packages_dir))
        except (FileNotFoundError, OSError) as e:
            skip(package, "", f"package unavailable: {e}")
            continue
        centres = _sky_centres(tree)
        for selection in selections:
            for file in _candidates(tree, selection):
                work.append((package, tree, selection, file, centres.get(file.name)))
    for package, tree, selection, file, centre in progress(work):
        rel = str(file.relative_to(tree))
        reason = reserved_reason(rel, centre)
        if reason:
            skip(package, rel, reason)
            continue
        sha = _sha256(file)
        if sha in hashes:
            skip(package, rel, f"exact duplicate of {hashes[sha]}")
            continue
        hashes[sha] = rel
        image_id = _image_id(package, rel)
        out = root / "images" / selection.domain / f"{image_id.replace('/', '__')}.npy"
        old = previous.get(image_id)
        if (
            old
            and old["sha256"] == sha
            and old.get("processing_version") == PROCESSING_VERSION
            and out.exists()
        ):
            x = np.load(out, mmap_mode="r").astype(np.float32) / 65535
            record = dict(old, sky_centre=None if centre is None else list(centre))
        else:
            try:
                x, info = process(file, selection.kind)
            except Exception as e:  # noqa: BLE001 (corrupt files raise many types; each is named and skipped)
                skip(
                    package,
                    rel,
                    str(e).removeprefix(f"{file}: ")
                    if isinstance(e, readers.UnreadableImageError)
                    else f"{type(e).__name__}: {e}",
                )
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            np.save(out, np.round(x * 65535).astype(np.uint16))
            record = {
                "id": image_id,
                "domain": selection.domain,
                "package": package,
                "package_version": package_version(tree),
                "path": rel,
                "sha256": sha,
                "processing_version": PROCESSING_VERSION,
                "licence": licence_of(tree, package, rel),
                "height": int(x.shape[0]),
                "width": int(x.shape[1]),
                "channels": int(x.shape[2]) if x.ndim == 3 else 1,
                "pixels": int(x.shape[0] * x.shape[1]),
                "processing": info,
                "file": str(out.relative_to(root)),
                "sky_centre": None if centre is None else list(centre),
            }
        thumb = thumbnail(x)
        aspect = x.shape[1] / x.shape[0]
        twin = next(
            (r for r, t, a in thumbs if abs(a / aspect - 1) < 0.1 and near_duplicate(t, thumb)),
            None,
        )
        if twin is not None:
            skip(
                package,
                rel,
                f"near duplicate of {twin['id']} (thumbnail and detail correlation > {NEAR_DUPLICATE_CORRELATION})",
            )
            continue
        thumbs.append((record, thumb, aspect))
        records.append(record)
    assign_splits(records, seed)
    leaked = reserved_images({"images": records})
    if leaked:  # cannot happen (checked per file above); a guard for edits to the tables
        raise RuntimeError(f"reserved images in the corpus: {leaked}")
    manifest = {
        "version": MANIFEST_VERSION,
        "seed": seed,
        "fractions": FRACTIONS,
        "images": records,
        "skipped": skipped,
        "simulators": _simulator_entries(simulated, seed),
    }
    manifest["summary"] = summarize(manifest)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(root / "manifest.json")  # a crash mid-write keeps the previous manifest
    return manifest


def reserved_images(manifest: dict[str, Any]) -> list[str]:
    """Ids of manifest images that are reserved for evaluation (by name or sky position)."""
    return [
        r["id"]
        for r in manifest["images"]
        if reserved_reason(r["path"], tuple(r["sky_centre"]) if r.get("sky_centre") else None)
    ]


def _simulator_entries(simulated, seed: int) -> list[dict[str, Any]]:
    return [
        {
            "simulator": name,
            "domain": domain,
            "split": split,
            "size": SIMULATED_SIZE,
            "seed": seed,
            "indices": [_SPLIT_OFFSET[split], _SPLIT_OFFSET[split] + count],
        }
        for name, domain, counts in simulated
        for split, count in counts.items()
    ]
