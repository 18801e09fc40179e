"""The offline training corpus, as the data pipeline and the evaluation read it.

    python tools/prepare_corpus.py                       # -> ~/.cache/pdr_jax/corpus
    config.data.sources = [{"corpus": ""}]               # train on it (configs/corpus.py)
    python tools/evaluate.py --clean corpus:test ...     # benchmark on its held-out images

`pdr_jax.data.corpus_build` builds it (Debian's photographs and astronomy images, plus
simulators); this module reads what that wrote:

    root/images/<domain>/<id>.npy    [H, W] or [H, W, 3] uint16, value / 65535 = the file's
                                     value / 255 (sRGB-encoded for photographs; memory-mapped)
    root/manifest.json               see MANIFEST_VERSION below

Manifest: {"version", "seed", "fractions", "images": [{"id", "domain", "package",
"package_version", "path" (inside the package), "sha256" (of the source file), "licence"
(from the package's debian/copyright), "height", "width", "channels" (1 or 3), "pixels", "processing" (what was
done, in words and numbers), "processing_version", "split", "file" (relative to root)}], "skipped": [{"package",
"path", "reason"}], "simulators": [{"simulator", "domain", "split", "indices", "size", "seed"}],
"summary"}.

Splits: whole images, never crops of one image in two splits; simulated images take disjoint
index ranges per split. `source_entries(root)` turns the manifest into data-pipeline sources.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable
from typing import Any

MANIFEST_VERSION = 1
DEFAULT_ROOT = (
    pathlib.Path(os.environ.get("PDR_JAX_CACHE", "~/.cache/pdr_jax")).expanduser() / "corpus"
)
FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
SPLITS = tuple(FRACTIONS)


def read_manifest(root: pathlib.Path) -> dict[str, Any] | None:
    """root/manifest.json, or None where there is none; ValueError if it is unreadable or of
    another MANIFEST_VERSION."""
    path = root / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); delete it to rebuild the corpus") from e
    if manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(
            f"{path}: manifest version {manifest.get('version')}, expected {MANIFEST_VERSION}"
        )
    return manifest


def summarize(manifest: dict[str, Any]) -> dict[str, Any]:
    """{domain: {split: {"images", "megapixels", "licences": {licence: images}}}}, simulated too."""
    summary: dict[str, Any] = {}
    for record in manifest["images"]:
        cell = summary.setdefault(record["domain"], {}).setdefault(
            record["split"], {"images": 0, "megapixels": 0.0, "licences": {}}
        )
        cell["images"] += 1
        cell["megapixels"] = round(cell["megapixels"] + record["pixels"] / 1e6, 3)
        cell["licences"][record["licence"]] = cell["licences"].get(record["licence"], 0) + 1
    for entry in manifest["simulators"]:
        cell = summary.setdefault(entry["domain"], {}).setdefault(
            entry["split"], {"images": 0, "megapixels": 0.0, "licences": {}}
        )
        count = entry["indices"][1] - entry["indices"][0]
        cell[f"simulated_{entry['simulator']}"] = count
        cell["megapixels"] = round(cell["megapixels"] + count * entry["size"] ** 2 / 1e6, 3)
    summary["skipped"] = len(manifest["skipped"])
    return summary


def load(root: pathlib.Path | str = DEFAULT_ROOT) -> dict[str, Any]:
    """The manifest of a built corpus; FileNotFoundError saying how to build one."""
    root = pathlib.Path(root or DEFAULT_ROOT).expanduser()
    manifest = read_manifest(root)
    if manifest is None:
        raise FileNotFoundError(
            f"no corpus at {root} (manifest.json missing): run python tools/prepare_corpus.py --root {root}"
        )
    return manifest


def source_entries(
    root: pathlib.Path | str = DEFAULT_ROOT,
    splits: Iterable[str] = ("train", "val"),
    domains: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """Data-pipeline source entries (pipeline.default_config().sources) for the given splits.

    Real images become one file entry per domain and split (split "val" for val and test:
    whole images, held out); simulators one entry each. The test split is for reporting only.
    """
    root = pathlib.Path(root or DEFAULT_ROOT).expanduser()
    manifest = load(root)
    splits = tuple(splits)
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown corpus splits {sorted(unknown)}: expected some of {SPLITS}")
    domains = None if domains is None else set(domains)
    entries = []
    for split in splits:
        pipeline_split = "train" if split == "train" else "val"
        by_domain: dict[str, list[str]] = {}
        for record in manifest["images"]:
            if record["split"] == split and (domains is None or record["domain"] in domains):
                by_domain.setdefault(record["domain"], []).append(str(root / record["file"]))
        for domain, paths in sorted(by_domain.items()):
            entries.append(
                {
                    "name": f"corpus-{domain}-{split}",
                    "domain": domain,
                    "paths": paths,
                    "split": pipeline_split,
                }
            )
        for sim in manifest["simulators"]:
            if sim["split"] == split and (domains is None or sim["domain"] in domains):
                entries.append(
                    {
                        "name": f"corpus-{sim['simulator']}-{split}",
                        "domain": sim["domain"],
                        "simulator": sim["simulator"],
                        "indices": tuple(sim["indices"]),
                        "size": sim["size"],
                        "seed": sim["seed"],
                        "split": pipeline_split,
                    }
                )
    return entries


def summary_markdown(manifest: dict[str, Any]) -> str:
    """The per-domain, per-split table of a manifest (README, closing notes)."""
    lines = [
        "| domain | split | real images | simulated | megapixels | licences |",
        "|---|---|---:|---:|---:|---|",
    ]
    summary = manifest.get("summary") or summarize(manifest)
    for domain in sorted(k for k in summary if k != "skipped"):
        for split in SPLITS:
            cell = summary[domain].get(split)
            if not cell:
                continue
            simulated = sum(v for k, v in cell.items() if k.startswith("simulated_"))
            licences = ", ".join(f"{k} ({v})" for k, v in sorted(cell["licences"].items()))
            lines.append(
                f"| {domain} | {split} | {cell['images']} | {simulated} | {cell['megapixels']:.1f} | {licences or '-'} |"
            )
    lines.append(
        f"\nskipped: {summary['skipped']} files (reserved, duplicate, unreadable or posterised)"
    )
    return "\n".join(lines)
