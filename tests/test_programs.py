"""The programs as a newcomer meets them: --help without importing jax, pdr-train's configs found
by name from any folder, a missing config in one line."""

import os
import subprocess
import sys

import pytest

from pdr_jax import configs

HELP_WITHOUT_JAX = """
import contextlib, io, sys
from pdr_jax.cli import convert, inspect, prepare_corpus, restore, sample, train
out = io.StringIO()
for program in (restore, sample, prepare_corpus, convert, inspect):
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        program.main(["--help"])
sys.argv = ["pdr-train", "--help"]
with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
    train.run()
assert out.getvalue().count("examples:") == 6, out.getvalue()[-2000:]
print("jax imported:", "jax" in sys.modules)
"""


def test_help_does_not_import_jax():
    """pdr-restore, pdr-sample, pdr-corpus, pdr-convert, pdr-inspect and pdr-train: importing jax
    is what made --help take 2.7 s (6-11 s on a busy machine)."""
    out = subprocess.run(
        [sys.executable, "-c", HELP_WITHOUT_JAX], capture_output=True, text=True, check=True
    )
    assert "jax imported: False" in out.stdout, out.stdout + out.stderr


def test_pdr_train_help_exits_zero():
    out = subprocess.run(
        [sys.executable, "-m", "pdr_jax.cli.train", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "pdr-train --config progressive.py:cpu" in out.stdout


def test_configs_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    installed = os.path.join(configs.FOLDER, "progressive.py")
    for spec in ("progressive.py", "configs/progressive.py", "pdr_jax.configs/progressive.py"):
        assert configs.resolve(spec) == installed
        assert configs.resolve(spec + ":cpu") == installed + ":cpu"
    (tmp_path / "progressive.py").write_text("# a local copy wins over the installed one\n")
    assert configs.resolve("progressive.py:tiny") == "progressive.py:tiny"
    with pytest.raises(FileNotFoundError, match=f"installed configs \\({configs.FOLDER}: base.py"):
        configs.resolve("prog.py:cpu")


def test_a_missing_config_is_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pdr_jax.cli.train", "--config", "missing.py:cpu", "--workdir", "w"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.splitlines() == [
        f"pdr-train: --config missing.py:cpu: no such file, and no config of that name in the "
        f"installed configs ({configs.FOLDER}: base.py, conditional.py, corpus.py, progressive.py, rgb.py)"
    ]
    assert not (tmp_path / "w").exists()


def test_every_pdr_restore_example_parses():
    """The examples --help shows are commands the parser accepts as written."""
    import shlex

    from pdr_jax.cli import restore, restore_args

    for example in restore_args.EXAMPLES:
        args = restore.parse_args(shlex.split(example)[1:])
        assert args.output and args.domain, example
