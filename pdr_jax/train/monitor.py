"""What a training run reports: console progress, a JSONL metrics file, TensorBoard events, PNGs
(the loss curve, and the end-of-stage figures: prior samples or conditional restorations)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger("pdr_jax.train")


def _format_eta(seconds: float) -> str:
    if not 0 <= seconds < 1e8:  # no throughput measured yet (the first step compiles)
        return "--:--:--"
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class MetricsLogger:
    """Writes `metrics.jsonl` and TensorBoard events under the workdir and a progress line to stderr."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = open(self.path, "a") if enabled else None  # noqa: SIM115 - closed by close()
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter  # tensorboard event files without TensorFlow

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self._tty = sys.stderr.isatty()

    def info(self, message: str) -> None:
        if self.enabled:
            print(("\n" if self._tty else "") + message, file=sys.stderr, flush=True)

    def scalars(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {
            "step": int(step),
            "time": time.time(),
            **{k: float(v) for k, v in values.items()},
        }
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for key, value in values.items():
            self._tb.add_scalar(key, float(value), int(step))

    def progress(
        self,
        *,
        step: int,
        stage: int,
        kimg: float,
        loss: float,
        img_per_s: float,
        eta_s: float,
        run_eta_s: float,
        **extra,
    ) -> None:
        """One progress record and line. eta_s: to the end of this stage at the current rate;
        run_eta_s: to the end of the run (pdr_jax.train.loop: the later stages at this rate
        scaled by their pixels per image; adaptive stages may end sooner)."""
        self.scalars(
            step, {"loss": loss, "kimg": kimg, "stage": stage, "img_per_s": img_per_s, **extra}
        )
        if self.enabled:
            line = (
                f"stage {stage} | step {step:6d} | kimg {kimg:8.2f} | loss {loss:.4f} | "
                f"{img_per_s:6.1f} img/s | stage ETA {_format_eta(eta_s)} | "
                f"run ETA {_format_eta(run_eta_s)}"
            )
            sys.stderr.write(("\r" + line) if self._tty else (line + "\n"))
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()


def save_sample_grid(rows, path: str, row_labels=None) -> None:
    """rows: list of [N, H, W, C] arrays in [0, 1] -> one PNG, a row per entry, each row's
    label (row_labels) written in a margin on its left."""
    from PIL import Image, ImageDraw, ImageFont

    tiles = [np.concatenate(list(np.clip(r, 0, 1)), axis=1) for r in rows]
    grid = np.concatenate(tiles, axis=0)
    grid = np.round((grid[..., 0] if grid.shape[-1] == 1 else grid) * 255).astype(np.uint8)
    image = Image.fromarray(grid)
    if row_labels:
        font = ImageFont.load_default()
        margin = 8 + max(int(ImageDraw.Draw(image).textlength(t, font=font)) for t in row_labels)
        labelled = Image.new(image.mode, (image.width + margin, image.height), color="white")
        labelled.paste(image, (margin, 0))
        draw, row_height = ImageDraw.Draw(labelled), image.height // len(rows)
        for i, text in enumerate(row_labels):
            draw.text(
                (4, i * row_height + row_height // 2), text, fill="black", font=font, anchor="lm"
            )
        image = labelled
    image.save(path)


def stage_starts(records) -> list[tuple[float, int, int | None]]:
    """(kimg, stage, resolution or None) where each stage's records begin in metrics.jsonl."""
    starts, current = [], None
    for record in records:
        if "stage" in record and record["stage"] != current:
            current = record["stage"]
            resolution = record.get("resolution")
            starts.append(
                (record["kimg"], int(current), None if resolution is None else int(resolution))
            )
    return starts


def save_loss_plot(metrics_path: str, path: str) -> None:
    """Training and validation loss against kimg from metrics.jsonl, a dashed line and the
    resolution where each stage begins (the validation loss jumps with the crop size: not
    overfitting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    train = [(r["kimg"], r["loss"]) for r in records if "loss" in r]
    val = [(r["kimg"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss (batch)", alpha=0.6)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss (EMA, fixed sigmas)")
    for kimg, stage, resolution in stage_starts(records):
        ax.axvline(kimg, color="gray", lw=0.8, ls="--")
        label = f"stage {stage}" + (f": {resolution} px" if resolution else "")
        ax.annotate(
            label,
            (kimg, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -10),
            textcoords="offset points",
            fontsize=7,
            color="gray",
        )
    ax.set_xlabel("kimg")
    ax.set_ylabel("EDM loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def etas(rate: float, remaining_images: float, resolution: int, later_stages) -> tuple:
    """(seconds to the end of the stage, seconds to the end of the run) at `rate` images/s;
    later_stages: (kimg, resolution) of each later stage, timed at this rate scaled by its
    pixels per image."""
    rate = max(rate, 1e-9)
    eta_s = remaining_images / rate
    later_s = sum(kimg * 1000 / rate * (res / resolution) ** 2 for kimg, res in later_stages)
    return eta_s, eta_s + later_s


def done_message(source: dict, workdir: str, model_dir: str, kind: str, domain_weights) -> str:
    """The last line of a finished run: how far it trained (source: the exported model's
    "source" record), where the model and loss curve are, and the commands to try it on the
    domain it was trained on most."""
    conditional = kind == "conditional"
    method = " --method conditional" if conditional else ""
    domain = max(domain_weights, key=lambda name: float(domain_weights[name]))
    sample = (
        "" if conditional else f"\n  pdr-sample {model_dir} samples/ --num 12 --domain {domain}"
    )
    return (
        f"done: {source['kimg']:.2f} kimg in this run ({source['kimg_total']:.2f} in all); the "
        f"model is {model_dir}, the loss curve {os.path.join(workdir, 'loss.png')}. "
        f"Next:\n  pdr-restore noisy.tif --output restored.tif --checkpoint {model_dir}{method} "
        f"--domain {domain} --scale 10 --read-noise 2{sample}"
    )


# End-of-stage figures (the objective's stage_figure, pdr_jax.train.steps.OBJECTIVES).


def stage_samples(net, state, config, stage, workdir, val_batch=None) -> str:
    """A PNG grid of EMA samples, a row per domain (fixed seeds, Heun), written at the end of a
    stage; returns its path."""
    from pdr_jax.physics.conditioning import DOMAINS, conditioning_vector
    from pdr_jax.samplers import edm_sampler, network_sampler_args

    n = config.sample.per_domain
    variables = jax.device_get(state.variables(ema=True))
    rows = []
    for d, domain in enumerate(DOMAINS):
        s = config.sample.scales[domain]
        labels = jnp.broadcast_to(
            conditioning_vector(domain, s, config.sample.read_noise, 0.0), (n, net.model.label_dim)
        )
        shape = (n, stage.resolution, stage.resolution, net.model.in_channels)
        latents = jax.random.normal(jax.random.key(config.sample.seed + d), shape)
        x = edm_sampler(
            latents=latents,
            num_steps=config.sample.num_steps,
            **network_sampler_args(net, variables, labels),
        )
        rows.append(np.asarray((x + 1) / 2))
    path = os.path.join(workdir, f"samples_stage{stage.index}_{stage.resolution}px.png")
    save_sample_grid(rows, path, row_labels=DOMAINS)
    return path


def stage_restorations(net, state, config, stage, workdir, val_batch) -> str:
    """A PNG grid of held-out crops: clean, noisy ((y - b) / s) and the EMA model's restoration
    (pdr_jax.restore.restore with CONDITIONAL_SETTINGS and config.sample.num_steps, image by
    image: each has its own s, r, b), written at the end of a stage; returns its path."""
    from pdr_jax.conditional import ConditionalModel
    from pdr_jax.physics.conditioning import DOMAINS
    from pdr_jax.restore import CONDITIONAL_SETTINGS, Physics, restore

    n = min(config.sample.per_domain * 3, val_batch["clean"].shape[0])
    batch = {k: np.asarray(v[:n]) for k, v in val_batch.items()}
    model = ConditionalModel(net, jax.device_get(state.variables(ema=True)))
    sampler = dataclasses.replace(
        CONDITIONAL_SETTINGS["sampler"], num_steps=config.sample.num_steps
    )
    restored = []
    for i in range(n):
        domain = DOMAINS[int(np.argmax(batch["cond"][i, : len(DOMAINS)]))]
        physics = Physics(float(batch["s"][i]), float(batch["r"][i]), float(batch["b"][i]), domain)
        result = restore(
            model,
            batch["noisy"][i],
            physics=physics,
            guidance=CONDITIONAL_SETTINGS["guidance"],
            sampler=sampler,
            tiling_settings=None,
            key=jax.random.key(config.sample.seed + i),
        )
        restored.append(result.image)
    noisy = (batch["noisy"] - batch["b"][:, None, None, None]) / batch["s"][:, None, None, None]
    rows = [batch["clean"], noisy, np.stack(restored)]
    path = os.path.join(workdir, f"restorations_stage{stage.index}_{stage.resolution}px.png")
    save_sample_grid(rows, path, row_labels=("clean", "noisy", "restored"))
    return path
