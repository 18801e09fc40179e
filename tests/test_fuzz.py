"""Fuzzing the readers of untrusted files (tests/fuzz_files.py): a few hundred seeded mutants of
small PNG/TIFF/FITS/.npy files and torch state_dicts. Every failure must be the project's named
error (UnreadableImageError, TorchFileError, ConversionError), never another exception type, and no file may
take long. Runs in a subprocess with its address space capped at 4 GiB."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PER_SEED = 50  # x 6 seed files + 25 EDM snapshots = 325 mutants
MAX_SECONDS_PER_FILE = 5.0


def test_mutated_files_fail_only_with_the_named_errors(tmp_path):
    cap = (
        "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
        f"sys.argv = ['fuzz_files.py', {str(tmp_path)!r}, '--per-seed', '{PER_SEED}']; "
        f"runpy.run_path({str(ROOT / 'tests' / 'fuzz_files.py')!r}, run_name='__main__')"
    )
    out = subprocess.run(
        [sys.executable, "-c", cap],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(result)  # the counts, for the record (pytest -s)
    assert result["files"] == 6 * PER_SEED + PER_SEED // 2
    assert result["others"] == [], result["others"]
    assert set(result["counts"]) <= {"ok", "named"} and result["counts"]["named"] > PER_SEED
    assert result["slowest_s"] < MAX_SECONDS_PER_FILE, result
