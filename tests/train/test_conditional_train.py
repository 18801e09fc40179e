"""The conditional model in the training loop: configs/conditional.py:tiny, 16x16 pairs."""

import json
import os

import numpy as np

from pdr_jax import conditional, model_io
from pdr_jax.configs import conditional as conditional_config
from pdr_jax.train import loop


def _records(workdir, key):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if key in r]


def test_tiny_conditional_run_learns_and_exports_a_conditional_model(tmp_path, monkeypatch):
    """32 steps of batch 8: the validation loss (fixed t, fixed noise, held-out pairs) falls.
    config.cpu_conv (no $PDR_CPU_CONV) builds the programs and is recorded in the workdir's
    config.json and the model's network.json."""
    workdir = str(tmp_path)
    monkeypatch.delenv("PDR_CPU_CONV", raising=False)
    config = conditional_config.get_config("tiny")
    config.cpu_conv = "plain"  # "auto" would be "xla" here (tests/conftest.py: 8 devices)
    config.train.update(num_devices=1, val_every_kimg=0.064, log_every_kimg=0.064)
    config.checkpoint.every_kimg = 0.128
    config.stages[0]["kimg"] = 0.256
    state = loop.train(config, workdir)
    assert int(state.step) == 32

    val = [r["val_loss"] for r in _records(workdir, "val_loss")]
    assert len(val) == 4 and np.all(np.isfinite(val))
    assert val[-1] < 0.8 * val[0], val
    assert os.path.exists(os.path.join(workdir, "restorations_stage0_16px.png"))

    description = model_io.read_network_json(os.path.join(workdir, "model"))
    assert description["kind"] == "conditional"
    assert description["source"]["cpu_conv"] == "plain"
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["cpu_conv"] == "plain"
    assert description["network"]["parameterization"] == config.model.parameterization
    net, _ = model_io.load_model(os.path.join(workdir, "model"))
    assert isinstance(net, conditional.ConditionalDenoiser)
