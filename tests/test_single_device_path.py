"""The path a single-device CPU user gets (PDR_CPU_CONV=auto: oneDNN float32 convolutions), end
to end, against XLA's convolutions.

The rest of the suite forces 8 host devices (tests/conftest.py), where `auto` means XLA's
convolutions; here one subprocess without forced devices trains `configs/base.py:tiny` for 4
steps and restores a 2 e-/px measurement, once with `auto` and once with `xla`. Switching the
mode in the same process must compile new programs (the pdr_jax.cpu record is part of the
cache key), so the two runs also check that.

Tolerances: per-step training losses within 1e-4 relative; the same model's restorations
within 1e-4 in [0, 1] units and their chi-squares within 1e-4. (Measured: bitwise equal, since
at the tiny model's 8-16 channels oneDNN and XLA sum in the same order; a 64-channel layer
differs by ~4e-6.) That oneDNN ran is checked by its plans: every convolution traced with oneDNN
asks `onednn._plan` for one, and the `xla` run asks for none.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import jax, numpy as np
    from pdr_jax import cpu
    from pdr_jax.cpu import onednn
    from pdr_jax.configs import base
    from pdr_jax.restore import Physics, Prior, restore
    from pdr_jax.train import loop

    root, out = sys.argv[1], {"devices": jax.device_count()}
    clean = np.clip(np.add.outer(np.linspace(0, 1, 24), np.linspace(0, 1, 24)) / 2, 0, 1)
    y = np.random.default_rng(0).poisson(2.0 * clean).astype(np.float32)
    plan_calls = lambda: sum(onednn._plan.cache_info()[:2])  # hits + misses
    for mode in ("auto", "xla"):
        os.environ["PDR_CPU_CONV"] = mode
        calls_before = plan_calls()
        config = base.get_config("tiny")
        config.stages[0]["kimg"] = 0.032
        # A loss every step; one validation and one checkpoint, at the end: the checks are
        # about the convolutions, and 3 more saves per run only cost time.
        config.train.val_every_kimg = config.checkpoint.every_kimg = 0.032
        workdir = os.path.join(root, mode)
        loop.train(config, workdir)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
        prior = Prior.load(os.path.join(root, "auto", "model"))  # one model for both modes
        result = restore(prior, y, physics=Physics(2.0, 0.5, domain="photography"))
        out[mode] = {
            "conv": cpu.options().conv,
            "onednn_plans": plan_calls() - calls_before,
            "losses": losses,
            "image": np.asarray(result.image).tolist(),
            "chi_square": float(result.report["chi_square"]),
        }
    print(json.dumps(out))
    """
)


def test_auto_single_device_training_and_restoration_equal_xla(tmp_path):
    # No forced host devices: one CPU device; the suite's compile flags (tests/conftest.py).
    env = {**os.environ, "XLA_FLAGS": os.environ["PDR_TESTS_XLA_COMPILE_FLAGS"]}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    auto, xla = out["auto"], out["xla"]
    assert out["devices"] == 1
    assert (auto["conv"], xla["conv"]) == ("f32", "xla")
    assert auto["onednn_plans"] > 0 and xla["onednn_plans"] == 0, out
    assert len(auto["losses"]) == len(xla["losses"]) >= 4
    np.testing.assert_allclose(auto["losses"], xla["losses"], rtol=1e-4)
    image = np.asarray(auto["image"])
    assert image.shape == (24, 24) and np.all(np.isfinite(image))
    np.testing.assert_allclose(image, np.asarray(xla["image"]), atol=1e-4)
    assert abs(auto["chi_square"] - xla["chi_square"]) < 1e-4
