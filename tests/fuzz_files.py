"""Seeded fuzzing of the file readers and the torch/EDM reader (run by tests/test_fuzz.py in a
subprocess whose address space is capped, so that a reader asking for absurd memory gets a
MemoryError instead of the machine's OOM killer).

    python tests/fuzz_files.py OUT_DIR [--per-seed 40] [--seed 0]

Every seed file (PNG, TIFF, FITS, .npy, torch zip and legacy state_dicts, all small; half as
many of an EDM snapshot pickle from the fixtures, converted) is mutated --per-seed times: bytes flipped, the file cut short, a chunk copied over another place,
a 2- or 4-byte field set to an extreme value. Each mutant is read through the public entry
point (readers.read_image and its first frame forced into memory; torch_pickle.load;
convert_edm), and its outcome recorded: "ok", "named" (UnreadableImageError, TorchFileError,
ConversionError) or "other: TYPE".
Prints one JSON line: counts per outcome and the slowest file's seconds.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys
import time

import numpy as np


def _seeds(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    import tifffile
    from astropy.io import fits
    from PIL import Image

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from test_convert import _tensors, write_torch_file

    rng = np.random.default_rng(0)
    image = (rng.random((24, 20)) * 60000).astype(np.uint16)
    paths = {name: folder / f"seed.{name}" for name in ("png", "tif", "fits", "npy")}
    Image.fromarray((image >> 8).astype(np.uint8)).save(paths["png"])
    tifffile.imwrite(paths["tif"], image)
    hdu = fits.PrimaryHDU(image.astype(np.float32))
    hdu.header["GAIN"], hdu.header["RDNOISE"] = 1.5, 2.0
    hdu.writeto(paths["fits"])
    np.save(paths["npy"], image)
    state = _tensors({"w": rng.random((4, 3)), "b": rng.random(5)})
    paths["pt"], paths["legacy.pt"] = folder / "seed.pt", folder / "seed.legacy.pt"
    write_torch_file(paths["pt"], state)
    write_torch_file(paths["legacy.pt"], state, legacy=True)
    paths["edm.pkl"] = pathlib.Path(__file__).parent / "fixtures" / "edm" / "iddpm_adm_rgb32.pkl"
    return paths


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:  # flip bytes
        for at in rng.integers(0, len(data), rng.integers(1, 9)):
            data[at] ^= int(rng.integers(1, 256))
    elif kind == 1:  # cut short
        del data[int(rng.integers(0, len(data))) :]
    elif kind == 2:  # copy a chunk over another place
        size = int(rng.integers(1, 64))
        src, dst = rng.integers(0, max(len(data) - size, 1), 2)
        data[dst : dst + size] = data[src : src + size]
    else:  # an extreme integer field
        value = int(rng.choice([0, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000]))
        width = int(rng.choice([2, 4]))
        at = int(rng.integers(0, max(len(data) - width, 1)))
        data[at : at + width] = value.to_bytes(4, "little")[:width]
    return bytes(data)


def _read(path: pathlib.Path, kind: str) -> None:
    if kind == "edm.pkl":  # an EDM snapshot, converted: file and structure checks
        from pdr_jax.convert import convert_edm

        convert_edm(path, max_bytes=64 << 20)
    elif kind.endswith("pt"):
        from pdr_jax.convert import torch_pickle

        torch_pickle.load(path, max_bytes=64 << 20)
    else:
        from pdr_jax.io import readers

        array, _ = readers.read_image(path)
        np.asarray(array[0])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--per-seed", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from pdr_jax.convert import ConversionError, TorchFileError
    from pdr_jax.io.readers import UnreadableImageError

    rng = np.random.default_rng(args.seed)
    counts, others, slowest = collections.Counter(), [], (0.0, "")
    for kind, seed in _seeds(args.out).items():
        data = seed.read_bytes()
        for i in range(args.per_seed if kind != "edm.pkl" else args.per_seed // 2):
            path = args.out / f"mutant{i:03d}.{kind}"
            path.write_bytes(_mutate(data, rng))
            start = time.perf_counter()
            try:
                _read(path, kind)
                outcome = "ok"
            except (UnreadableImageError, TorchFileError, ConversionError):
                outcome = "named"
            except Exception as e:  # noqa: BLE001 - what the fuzz test counts
                outcome = f"other: {type(e).__name__}"
                others.append(f"{path.name}: {type(e).__name__}: {str(e)[:200]}")
            seconds = time.perf_counter() - start
            slowest = max(slowest, (seconds, path.name))
            counts[outcome] += 1
    print(
        json.dumps(
            {
                "files": sum(counts.values()),
                "counts": counts,
                "others": others[:20],
                "slowest_s": slowest[0],
                "slowest": slowest[1],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
