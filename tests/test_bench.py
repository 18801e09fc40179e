"""tools/bench.py on its `tiny` configuration: every figure is there and plausible.

The side-by-side PyTorch EDM timing runs only where PDR_TORCH_PYTHON (a Python with torch) and
PDR_EDM_PATH (a checkout of NVlabs/edm) are set; the project itself never needs torch.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from pdr_jax import cpu
from pdr_jax.evaluation import scaling

bench_tool = importlib.import_module("pdr_jax.cli.bench")

_FAST = ["--config", "tiny", "--repeats", "1", "--rounds", "1", "--data-batches", "2"]


def test_tiny_json_report(capsys):
    bench_tool.main([*_FAST, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["config"] == "tiny" and report["batch"] == 2 and report["resolution"] == 16
    assert set(report["compile_s"]) == {"train", "forward", "heun"}
    assert all(seconds > 0 for seconds in report["compile_s"].values())
    results = report["results"]
    for part in ("forward", "heun", "train"):
        assert results[part]["images_per_s"] > 0 and len(results[part]["times_s"]) == 1
    assert results["data"]["images_per_s"] > 0
    (restore,) = results["restore"]
    assert restore["size"] == 24 and restore["tiles"] == 4 and restore["megapixels_per_s"] > 0
    train_memory = report["program_memory"]["train"]
    assert train_memory is None or train_memory["argument_bytes"] > 0
    assert report["peak_host_memory_mib"] > 0
    assert len(report["environment"]["load_average_before"]) == 3


def test_text_report_and_skip(capsys, monkeypatch):
    """Also the oneDNN bf16 path end to end (training step, forward) via --cpu-conv."""
    monkeypatch.setenv("PDR_CPU_CONV", "auto")  # restored after the test; main() overwrites it
    bench_tool.main([*_FAST, "--skip", "data", "restore", "heun", "--cpu-conv", "bf16"])
    text = capsys.readouterr().out
    assert "convolutions bf16" in text.splitlines()[0]
    assert "train" in text and "images/s" in text and "peak host memory" in text
    parts = {line.split()[0] for line in text.splitlines()[2:]}
    assert {"forward", "train"} <= parts and not parts & {"heun", "data", "restore"}


def test_plain_is_a_mode_of_the_cpu_record(capsys, monkeypatch):
    """--cpu-conv plain: the benchmark's programs are built under cpu.NONE, XLA's defaults
    everywhere (the 'before' figures). The timing itself is test_tiny_json_report's."""
    monkeypatch.setenv("PDR_CPU_CONV", "auto")  # restored after the test; main() overwrites it
    monkeypatch.setattr(bench_tool, "run", lambda args: {"record": repr(cpu.current())})
    bench_tool.main(["--config", "tiny", "--cpu-conv", "plain", "--json"])
    assert json.loads(capsys.readouterr().out)["record"] == repr(cpu.NONE)


def test_configs_are_the_issue_reference_points():
    config, resolution, batch, _, num_steps = bench_tool.bench_config("bench-64")
    assert (resolution, batch, num_steps) == (64, 8, 18)
    model = config.model
    assert (model.precond, model.arch, model.img_channels, model.label_dim) == (
        "edm",
        "ddpmpp",
        1,
        6,
    )
    assert (model.model_channels, tuple(model.channel_mult), model.num_blocks) == (64, (1, 2, 2), 2)
    assert tuple(model.attn_resolutions) == (16,) and model.dropout == 0
    assert bench_tool.bench_config("bench-128")[1:3] == (128, 4)
    with pytest.raises(KeyError, match="unknown config"):
        bench_tool.bench_config("nope")


@pytest.mark.skipif(
    not (os.environ.get("PDR_TORCH_PYTHON") and os.environ.get("PDR_EDM_PATH")),
    reason="set PDR_TORCH_PYTHON and PDR_EDM_PATH to time PyTorch EDM side by side",
)
def test_torch_side_by_side(capsys):
    bench_tool.main(
        [
            *_FAST,
            "--json",
            "--skip",
            "data",
            "restore",
            "--torch-python",
            os.environ["PDR_TORCH_PYTHON"],
            "--edm-path",
            os.environ["PDR_EDM_PATH"],
        ]
    )
    report = json.loads(capsys.readouterr().out)
    for part in ("forward", "heun", "train"):
        assert report["results"][part]["speedup_vs_torch"] > 0


def test_torch_worker_is_a_module_that_imports_no_jax():
    """pdr_jax.evaluation.torch_worker runs under a Python that may have torch but no jax: the
    module itself imports neither (torch only when it runs)."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, pdr_jax.evaluation.torch_worker as w; "
            "print(callable(w.main), sorted(m for m in ('jax', 'torch') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["True", "[]"], out.stdout + out.stderr


def test_restore_scaling_report_format():
    clean, y = scaling._synthetic_measurement(40, 10.0, 2.0)
    assert clean.shape == y.shape == (40, 40) and 0.1 <= clean.min() <= clean.max() <= 0.9
    row = dict(size=40, tiles=1, restore_s=2.0, restore_s_per_megapixel=1250.0)
    row.update(peak_rss_mib=900.0, image_mib=0.01, chi_square=1.01)
    report = dict(steps=6, solver="euler", network_calls=7, batch=8, checkpoint="m", fit={})
    text = scaling.format_scaling({**report, "sizes": [row]})
    assert text.splitlines()[0].endswith("batch 8, m") and "1250.0" in text
