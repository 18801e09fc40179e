"""The methods the benchmark compares, as one plain dict: METHODS[name](options) -> Method.

    "pdr"          likelihood-guided EDM restoration (pdr_jax.restore.restore_image)
    "conditional"  the concat-conditioned restoration model (pdr_jax.conditional), DDIM
    "pdr-vst"      one call of the prior: GAT, the prior's denoiser at the stabilised noise
                   level, the unbiased inverse (GAT+BM3D with the prior in BM3D's place)
    "gat-bm3d"     generalized Anscombe + BM3D + closed-form unbiased inverse (pdr_jax.baselines)
    "nlm"          generalized Anscombe + non-local means + the same inverse
    "noisy"        (y - b) / s

A factory raises MethodUnavailable (with the reason) when it cannot run, e.g. no model; the
caller reports it and goes on. Ablations are variants of "pdr" with other `PdrSettings`:
`parse_ablation("likelihood=wls,exact")` -> [("likelihood", "wls"), ("likelihood", "exact")],
and `pdr_variants` names them "pdr[likelihood=exact]".

Processing resolution: `PdrSettings.tile` = None restores each crop in one piece; a tile size
runs the network on overlapping tiles fused at every denoiser call
(pdr_jax.restore.tiling.tiled_denoiser) over the reflection-padded crop.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from pdr_jax import baselines, model_io, samplers
from pdr_jax.evaluation.benchmark import Method
from pdr_jax.physics import conditioning, noise
from pdr_jax.physics import guidance as physics_guidance
from pdr_jax.restore import guided, tiling

# The shipped default model, relative to the repository root (once it exists).
DEFAULT_CHECKPOINT = pathlib.Path(__file__).resolve().parents[2] / "models" / "pdr-gray-default"
DEFAULT_CONDITIONAL = DEFAULT_CHECKPOINT.parent / "conditional-gray-default"


class MethodUnavailable(RuntimeError):
    """A method cannot run in this setting; the message says why and what would fix it."""


@dataclasses.dataclass(frozen=True)
class PdrSettings:
    """How the diffusion restoration runs (the fields the ablations vary)."""

    steps: int = 18  # sampler steps (Heun: 2 steps - 1 network calls)
    guidance: str = "x0"  # pdr_jax.physics.guidance.MODES
    likelihood: str = "wls"  # a key of pdr_jax.physics.noise.LOG_LIKELIHOODS
    kappa: float | str = "auto"  # guidance step-size scale; "auto": restore.guided.auto_kappa
    conditioning: bool = True  # False: the all-zero conditioning vector (unconditional)
    tile: int | None = None  # processing resolution; None: the whole crop at once
    tile_overlap: int = 16
    tile_batch: int = 8  # tiles per network call

    def __post_init__(self):
        if self.guidance not in physics_guidance.MODES:
            raise ValueError(f"guidance must be one of {physics_guidance.MODES}: {self.guidance}")
        if self.likelihood not in noise.LOG_LIKELIHOODS:
            raise ValueError(
                f"likelihood must be one of {tuple(noise.LOG_LIKELIHOODS)}: {self.likelihood}"
            )
        kappa_ok = self.kappa == "auto" or (not isinstance(self.kappa, str) and self.kappa >= 0)
        if self.steps < 1 or not kappa_ok:  # (nan >= 0 is False: refused too)
            raise ValueError(f"need steps >= 1 and kappa >= 0 or 'auto', got {self.steps}, {self.kappa}")


@dataclasses.dataclass(frozen=True)
class MethodOptions:
    """What the method factories need from the command line."""

    checkpoint: str | None = None  # the prior for "pdr"; None: DEFAULT_CHECKPOINT if it exists
    conditional_checkpoint: str | None = None  # for "conditional"; None: DEFAULT_CONDITIONAL
    pdr: PdrSettings = PdrSettings()


# Ablations.


_BOOLEANS = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}
ABLATION_FIELDS = {
    "likelihood": str, "guidance": str, "kappa": guided.parse_kappa, "steps": int,
    "conditioning": lambda v: _BOOLEANS[v.lower()],
}  # fmt: skip


def parse_ablation(text: str) -> list[tuple[str, object]]:
    """'field=v1,v2' -> [(field, v1), (field, v2)] with values converted and validated."""
    field, sep, values = text.partition("=")
    field = field.strip()
    if not sep or field not in ABLATION_FIELDS or not values.strip():
        raise ValueError(
            f"ablation {text!r}: expected FIELD=V1,V2 with FIELD one of {sorted(ABLATION_FIELDS)}"
        )
    try:
        parsed = [(field, ABLATION_FIELDS[field](v.strip())) for v in values.split(",")]
    except (KeyError, ValueError, argparse.ArgumentTypeError) as e:
        raise ValueError(f"ablation {text!r}: bad value ({e})") from None
    for name, value in parsed:  # validate through the settings
        dataclasses.replace(PdrSettings(), **{name: value})
    return parsed


def pdr_variants(base: PdrSettings, ablations) -> dict[str, PdrSettings]:
    """{"pdr[field=value]": settings} varying one field of base at a time; settings equal to
    base itself are left out (that is the "pdr" method)."""
    variants = {}
    for field, value in ablations:
        settings = dataclasses.replace(base, **{field: value})
        if settings != base:
            text = (
                {True: "on", False: "off"}.get(value, value) if field == "conditioning" else value
            )
            variants[f"pdr[{field}={text}]"] = settings
    return variants


# The diffusion restoration.


@functools.lru_cache(maxsize=4)
def load_checkpoint(directory: str):
    """(net, variables) of a model directory, loaded once per process."""
    return model_io.load_model(directory)


def checkpoint_dir(options: MethodOptions) -> str:
    """The model directory: options.checkpoint, else the shipped default; MethodUnavailable
    when neither is there."""
    if options.checkpoint is not None:
        return options.checkpoint
    if (DEFAULT_CHECKPOINT / model_io.NETWORK_FILE).exists():
        return str(DEFAULT_CHECKPOINT)
    raise MethodUnavailable(
        f"no model: pass --checkpoint DIR (the shipped default {DEFAULT_CHECKPOINT} has no "
        f"{model_io.NETWORK_FILE} yet)"
    )


def _downsampling(net) -> int:
    """The U-Net's total downsampling factor: tile sizes must be multiples of it."""
    return 2 ** (len(net.model.channel_mult) - 1)


def tile_plan(net, height: int, width: int, settings: PdrSettings) -> tiling.TilePlan:
    """The TilePlan of an H x W crop at settings.tile (overlap capped at a quarter tile)."""
    return tiling.plan_tiles(
        height, width, tile=settings.tile, overlap=_overlap(settings), multiple=_downsampling(net)
    )


def _overlap(settings: PdrSettings) -> int:
    return min(settings.tile_overlap, settings.tile // 4)


def _labels(net, domain: str, s: float, r: float, b: float, rows: int, on: bool):
    """[rows, D] conditioning vectors (all zero when not on), or None for an unconditional net."""
    if not net.model.label_dim:
        return None
    if not on:
        return conditioning.unconditional(rows)
    return conditioning.conditioning_vector(domain, jnp.full((rows,), s), r, b)


def _restore_tiled_fn():
    """pdr_jax.restore.tiled.restore_tiled (tools/restore.py's entry point) if this checkout
    has it, else None."""
    try:
        from pdr_jax.restore.tiled import restore_tiled
    except ImportError:
        return None
    return restore_tiled


def _restore_padded(net, variables, y, *, s, r, b, domain, key, settings: PdrSettings):
    """Tiled restoration of crops y [N, H, W, C]: reflection padding (mask 0: not data), the
    tiled denoiser at every sampler step, crop back. The same steps as restore_tiled, for a
    batch of crops and with the conditioning switch."""
    from pdr_jax import restore

    plan = tile_plan(net, y.shape[1], y.shape[2], settings)
    labels = _labels(net, domain, s, r, b, settings.tile_batch, settings.conditioning)
    sampler_args = samplers.network_sampler_args(net, variables, labels)
    denoise_fn = tiling.tiled_denoiser(sampler_args["denoise_fn"], plan, batch=settings.tile_batch)
    inside = np.zeros((*plan.padded_shape, y.shape[3]), np.float32)
    inside[
        plan.pad_top : plan.pad_top + plan.height, plan.pad_left : plan.pad_left + plan.width
    ] = 1
    mask = jnp.broadcast_to(jnp.asarray(inside), (y.shape[0], *inside.shape))
    x, _ = restore.restore_with_denoiser(
        denoise_fn, tiling.pad(jnp.asarray(y), plan), s=s, r=r, b=b, mask=mask, key=key,
        num_steps=settings.steps, guidance_mode=settings.guidance,
        likelihood=settings.likelihood, kappa=settings.kappa,
        sigma_min=sampler_args["sigma_min"], sigma_max=sampler_args["sigma_max"],
        round_sigma=sampler_args["round_sigma"],
    )  # fmt: skip
    return np.asarray(tiling.unpad(x, plan))


def restore_pdr(net, variables, y, *, s, r, b, domain, key, settings: PdrSettings):
    """Restore y [N, H, W, C] electrons (one domain, scalar s, r, b) -> x [N, H, W, C] in [0, 1].

    Whole crops: pdr_jax.restore.restore_image (with all-zero labels through
    restore_with_denoiser when conditioning is off). Tiles: restore_tiled crop by crop (key
    fold_in(key, i)) where this checkout has it and conditioning is on, else `_restore_padded`.
    """
    from pdr_jax import restore  # being finished alongside; imported when pdr runs

    sampling = {"num_steps": settings.steps, "likelihood": settings.likelihood,
                "kappa": settings.kappa}  # fmt: skip
    if settings.tile is None and settings.conditioning:
        x, _ = restore.restore_image(net, variables, y, domain=domain, s=s, r=r, b=b, key=key,
                                     guidance=settings.guidance, **sampling)  # fmt: skip
        return np.asarray(x)
    if settings.tile is None:
        labels = _labels(net, domain, s, r, b, y.shape[0], on=False)
        sampler_args = samplers.network_sampler_args(net, variables, labels)
        x, _ = restore.restore_with_denoiser(
            sampler_args.pop("denoise_fn"), y, s=s, r=r, b=b, key=key,
            guidance_mode=settings.guidance, **sampling, **sampler_args,
        )  # fmt: skip
        return np.asarray(x)
    restore_tiled = _restore_tiled_fn()
    if restore_tiled is None or not settings.conditioning:
        return _restore_padded(
            net, variables, y, s=s, r=r, b=b, domain=domain, key=key, settings=settings
        )
    return np.stack([
        restore_tiled(
            net, variables, image, domain=domain, s=s, r=r, b=b, tile=settings.tile,
            overlap=_overlap(settings), batch=settings.tile_batch, guidance=settings.guidance,
            key=jax.random.fold_in(key, i), **sampling,
        )[0]
        for i, image in enumerate(np.asarray(y))
    ])  # fmt: skip


def pdr_method(options: MethodOptions) -> Method:
    """The "pdr" method with options.pdr settings and the options' (or the default) model."""
    net, variables = load_checkpoint(checkpoint_dir(options))
    if net.model.in_channels != 1:
        raise MethodUnavailable(f"the benchmark is grayscale; the model has "
                                f"{net.model.in_channels} channels")  # fmt: skip
    label_dim = net.model.label_dim
    if label_dim not in (0, conditioning.DEFAULT_SPEC.dim):
        raise MethodUnavailable(
            f"the model's label_dim {label_dim} is not the {conditioning.DEFAULT_SPEC.dim}-D "
            "physics conditioning"
        )

    def restore(y, *, s, r, b, domain, key):
        return restore_pdr(
            net, variables, y, s=s, r=r, b=b, domain=domain, key=key, settings=options.pdr
        )

    return Method(restore, jitted=True)


# The conditional model's sampler in the benchmark (pdr_jax.conditional.run_sampler).
CONDITIONAL_SAMPLER = dict(sampler="ddim", num_steps=20, eta=0.0)


def conditional_checkpoint_dir(options: MethodOptions) -> str:
    """options.conditional_checkpoint if given (it must be a conditional model), else the
    shipped DEFAULT_CONDITIONAL; MethodUnavailable otherwise."""
    if options.conditional_checkpoint is not None:
        directory = options.conditional_checkpoint
        kind = model_io.read_network_json(directory).get("kind", "prior")
        if kind != "conditional":
            raise MethodUnavailable(
                f"--conditional-checkpoint {directory} is a {kind} model (network.json 'kind'); "
                "expected a conditional one (launch/train.py --config configs/conditional.py)"
            )
        return directory
    if (DEFAULT_CONDITIONAL / model_io.NETWORK_FILE).exists():
        return str(DEFAULT_CONDITIONAL)
    raise MethodUnavailable(
        f"the concat-conditioned restoration model has no model directory: pass "
        f"--conditional-checkpoint DIR ({DEFAULT_CONDITIONAL} is missing)"
    )


def conditional_method(options: MethodOptions) -> Method:
    """The conditional model (kind "conditional"), crop by crop through restore_tiled_conditional:
    tiles of the network's resolution, the measurement's tiles conditioning each tile."""
    from pdr_jax.restore.tiled import restore_tiled_conditional

    net, variables = load_checkpoint(conditional_checkpoint_dir(options))
    if net.img_channels != 1:
        raise MethodUnavailable(f"the benchmark is grayscale; the model has {net.img_channels} channels")

    def restore(y, *, s, r, b, domain, key):
        key = jax.random.key(0) if key is None else key
        return np.stack([
            restore_tiled_conditional(
                net, variables, image, domain=domain, s=s, r=r, b=b, key=jax.random.fold_in(key, i),
                **CONDITIONAL_SAMPLER,
            )[0]
            for i, image in enumerate(np.asarray(y))
        ])  # fmt: skip

    return Method(restore, jitted=True)


def vst_prior_method(options: MethodOptions) -> Method:
    """"pdr-vst": the one-call variance-stabilised estimate, GAT+BM3D with the prior in BM3D's
    place: generalized Anscombe transform, the prior's denoiser D once at the stabilised
    image's noise level (unit std there, scaled into [0, 1] as for BM3D, then into model
    space), the closed-form unbiased inverse (pdr_jax.baselines). Conditioned on the crop's
    domain and (s, r, b)."""
    net, variables = load_checkpoint(checkpoint_dir(options))
    apply = jax.jit(lambda x, sigma, labels: net.apply(variables, x, sigma, labels))

    def restore(y, *, s, r, b, domain, key):
        del key
        labels = _labels(net, domain, s, r, b, 1, options.pdr.conditioning)

        def denoise_unit(image, sigma):
            # [0, 1] -> model space 2 u - 1, where the noise std is 2 sigma.
            x = jnp.asarray(2 * image - 1, jnp.float32)[None, :, :, None]
            denoised = apply(x, jnp.full((1,), 2 * sigma, jnp.float32), labels)
            return (np.asarray(denoised[0, :, :, 0], np.float64) + 1) / 2

        return np.stack([baselines.stabilised(denoise_unit, image, s, r, b) for image in np.asarray(y)])

    return Method(restore, jitted=True)


def _per_image(estimate):
    """A Method from estimate(y [H, W, C], s, r, b) -> x [H, W, C], applied image by image."""

    def restore(y, *, s, r, b, domain, key):
        del domain, key
        return np.stack([estimate(image, s, r, b) for image in np.asarray(y)])

    return lambda options: Method(restore)


METHODS = {
    "pdr": pdr_method,
    "conditional": conditional_method,
    "pdr-vst": vst_prior_method,
    "gat-bm3d": _per_image(baselines.gat_bm3d),
    "nlm": _per_image(baselines.gat_nlm),
    "noisy": _per_image(baselines.noisy_estimate),
}


def build_methods(names, options: MethodOptions, ablations=(), log=print) -> dict[str, Method]:
    """Methods by name (and "pdr" ablation variants), skipping unavailable ones with a message.

    names: keys of METHODS. ablations: (field, value) pairs from parse_ablation; their variants
    run only when the model loads. Raises KeyError for an unknown name.
    """
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise KeyError(f"unknown methods {unknown}; known: {sorted(METHODS)}")
    methods = {}
    variants = {name: dataclasses.replace(options, pdr=settings)
                for name, settings in pdr_variants(options.pdr, ablations).items()}  # fmt: skip
    for name, method_options in [(n, options) for n in names] + list(variants.items()):
        factory = METHODS["pdr" if name in variants else name]
        try:
            methods[name] = factory(method_options)
        except MethodUnavailable as e:
            log(f"SKIPPED method {name}: {e}")
    return methods


def network_memory_bytes(net, variables, shape, settings: PdrSettings) -> int:
    """XLA's compiled memory (arguments + outputs + temporaries) of one denoiser evaluation on
    crops of `shape` [N, H, W, C] at settings' processing resolution: the part of the
    sampler's memory that grows with it (the network's activations on a batch of crops or on
    one chunk of tiles, plus the padded image buffers). Compiles the program, does not run
    it; -1 where the backend gives no memory analysis."""
    rows = shape[0] if settings.tile is None else settings.tile_batch
    labels = _labels(net, "", 1.0, 0.0, 0.0, rows, on=False)  # values do not change the size
    denoise_fn = samplers.network_sampler_args(net, variables, labels)["denoise_fn"]
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    if settings.tile is not None:
        plan = tile_plan(net, shape[1], shape[2], settings)
        denoise_fn = tiling.tiled_denoiser(denoise_fn, plan, batch=settings.tile_batch)
        x = jax.ShapeDtypeStruct((shape[0], *plan.padded_shape, shape[3]), jnp.float32)
    lowered = jax.jit(lambda fn, x, sigma: fn(x, sigma)).lower(denoise_fn, x, jnp.float32(1.0))
    stats = lowered.compile().memory_analysis()
    if stats is None:
        return -1
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes)
