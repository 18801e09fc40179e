"""The methods the benchmark compares, as one plain dict: METHODS[name](options) -> Method.

    "pdr"          pdr_jax.restore.restore with its default (tuned) settings, or PdrSettings
    "conditional"  the concat-conditioned restoration model (pdr_jax.conditional) through the
                   same call with CONDITIONAL_SETTINGS (EDM Euler from noise, no guidance)
    "pdr-vst"      the same call with num_steps=0 and estimate_ensemble=1: one call of the
                   prior (GAT, the prior's denoiser at the stabilised noise level, the unbiased
                   inverse: GAT+BM3D with the prior in BM3D's place)
    "pdr-gray"     mode rgb: the grayscale prior restoring each colour channel on its own
    "pdr-opp"      modes rgb and raw: the grayscale prior on the opponent channels, averaged
                   over COLOUR_ENSEMBLE flips and transposes, with COLOUR_SAMPLER (pdr-restore's
                   default for a 3-channel input; "pdr" in these modes is the colour prior,
                   pdr-restore --colour joint)
    "pdr-lc"       modes rgb and raw: the colour prior's chrominance, the grayscale prior's
                   luminance, MOSAIC_SAMPLER (pdr-restore's default for a mosaic)
    "gat-bm3d"     generalized Anscombe + BM3D + closed-form unbiased inverse (pdr_jax.baselines),
                   per channel
    "gat-cbm3d"    mode rgb: GAT per channel + colour BM3D (opponent colour space) + the inverse
    "gat-bm3d-menon"  mode raw: GAT+BM3D per Bayer plane, then Menon 2007 demosaicking
    "nlm"          generalized Anscombe + non-local means + the same inverse
    "noisy"        (y - b) / s
    "noisy-raw"    mode raw: (y - b) / (s g) of each pixel, demosaicked (Menon 2007)
    "rl"           --psf: scikit-image's Richardson-Lucy on (y - b) / s, its iteration count
                   per photon level (RL_ITERATIONS)
    "rl-oracle"    --psf: Richardson-Lucy at the count best for each image against its truth
    "rl-tv"        --psf: Richardson-Lucy with total-variation regularisation (Dey et al. 2006)
    "gat-bm3d-rl"  --psf: GAT+BM3D of the blurred measurement, then Richardson-Lucy

Modes (pdr_jax.evaluation.benchmark.MODES): in "rgb" and "raw" the default prior is the colour
one (DEFAULT_RGB_CHECKPOINT) and a mosaic's forward operator reaches "pdr" in its Physics.

A factory raises MethodUnavailable (with the reason) when it cannot run, e.g. no model; the
caller reports it and goes on. Ablations are variants of the diffusion methods (ABLATABLE) with
other `PdrSettings`:
`parse_ablation("likelihood=wls,exact")` -> [("likelihood", "wls"), ("likelihood", "exact")],
and `pdr_variants` names them "pdr[likelihood=exact]" (or "pdr-lc[...]": each diffusion
method named gets its variants).

Processing resolution: `PdrSettings.tiling` = None restores each batch of crops in one piece;
TilingSettings(tile=T) runs the network on overlapping tiles fused at every denoiser call
(pdr_jax.restore.tiling.tiled_denoiser) over the reflection-padded crop.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from pdr_jax import baselines, cpu, model_io
from pdr_jax.evaluation.benchmark import Method
from pdr_jax.physics.operators import IDENTITY
from pdr_jax.presets import DEFAULT_CHECKPOINT, DEFAULT_RGB_CHECKPOINT  # the shipped models
from pdr_jax.presets import DEFAULT_CONDITIONAL_CHECKPOINT as DEFAULT_CONDITIONAL
from pdr_jax.restore import (
    CONDITIONAL_SETTINGS,
    GuidanceSettings,
    Physics,
    Prior,
    SamplerSettings,
    TilingSettings,
    colour_denoiser,
    parse_kappa,
    restore,
    tiling,
)
from pdr_jax.settings import ENSEMBLE_SIZES


class MethodUnavailable(RuntimeError):
    """A method cannot run in this setting; the message says why and what would fix it."""


@dataclasses.dataclass(frozen=True)
class PdrSettings:
    """How "pdr" calls pdr_jax.restore.restore; the defaults are the API's (the tuned ones)."""

    guidance: GuidanceSettings = GuidanceSettings()
    # The SamplerSettings fields this run sets, as (name, value) pairs, over the method's own
    # default sampler (SamplerSettings(), or its colour mode's: COLOUR_SAMPLER, MOSAIC_SAMPLER),
    # so that steps=10 on pdr-lc keeps MOSAIC_SAMPLER's thresholds (and refine_min_noise=0.4
    # there is not a no-op). sampler_over(base) is the sampler.
    sampler: tuple[tuple[str, object], ...] = ()
    tiling: TilingSettings | None = None  # None: each batch of crops in one piece
    conditioning: bool = True  # False: the all-zero conditioning vector (unconditional)
    num_samples: int = 1
    # The denoiser averaged over this many flips and transposes; None: the colour mode's default
    # (COLOUR_ENSEMBLE for pdr-opp, else 1).
    self_ensemble: int | None = None

    def __post_init__(self):
        names = {field.name for field in dataclasses.fields(SamplerSettings)}
        unknown = [name for name, _ in self.sampler if name not in names]
        if unknown:
            raise ValueError(f"unknown SamplerSettings field(s) {unknown}; known: {sorted(names)}")
        self.sampler_over(SamplerSettings())  # validates the values
        if self.self_ensemble not in (None, *ENSEMBLE_SIZES):
            raise ValueError(
                f"self_ensemble must be one of {ENSEMBLE_SIZES}, got {self.self_ensemble}"
            )

    def sampler_over(self, base: SamplerSettings) -> SamplerSettings:
        """base with this run's sampler fields set."""
        return dataclasses.replace(base, **dict(self.sampler))


@dataclasses.dataclass(frozen=True)
class MethodOptions:
    """What the method factories need from the command line."""

    checkpoint: str | None = None  # the prior for "pdr"; None: the mode's default if it exists
    conditional_checkpoint: str | None = None  # for "conditional"; None: DEFAULT_CONDITIONAL
    pdr: PdrSettings = PdrSettings()
    mode: str = "gray"  # benchmark.MODES: the prior's channels (gray 1, rgb and raw 3)
    psf: str | None = None  # --psf: the cases are blurred (the deconvolution methods need it)


# Ablations.


def _int_or_none(text: str) -> int | None:
    return None if text.strip().lower() == "none" else int(text)


_BOOLEANS = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}


def _boolean(text: str) -> bool:
    """An ablation's on/off value."""
    if text.lower() not in _BOOLEANS:
        raise ValueError(f"expected one of {sorted(_BOOLEANS)}, got {text!r}")
    return _BOOLEANS[text.lower()]


# Ablation field -> (the PdrSettings part it lives in, its attribute there, the value parser).
ABLATION_FIELDS = {
    "guidance": ("guidance", "mode", str),
    "likelihood": ("guidance", "likelihood", str),
    "kappa": ("guidance", "kappa", parse_kappa),
    "schedule": ("guidance", "schedule", str),
    "steps": ("sampler", "num_steps", int),
    "solver": ("sampler", "solver", str),
    "start": ("sampler", "start", str),
    "start_factor": ("sampler", "start_factor", float),
    "latent_scale": ("sampler", "latent_scale", float),
    "estimate_sigma_factor": ("sampler", "estimate_sigma_factor", float),
    "refine_min_noise": ("sampler", "refine_min_noise", float),
    "planes_min_noise": ("sampler", "planes_min_noise", float),
    "polish_factor": ("sampler", "polish_factor", float),
    "measured_luminance": ("sampler", "measured_luminance", _boolean),
    "estimate_ensemble": ("sampler", "estimate_ensemble", int),
    "deblur_iterations": ("sampler", "deblur_iterations", _int_or_none),
    "deblur_noise": ("sampler", "deblur_noise", float),
    "conserve_flux": ("sampler", "conserve_flux", str),
    "cg_iterations": ("guidance", "cg_iterations", int),
    "num_samples": (None, "num_samples", int),
    "self_ensemble": (None, "self_ensemble", int),
    "conditioning": (None, "conditioning", _boolean),
}


def with_field(settings: PdrSettings, field: str, value) -> PdrSettings:
    """settings with one ablation field set (validated by the settings records)."""
    part, attribute, _ = ABLATION_FIELDS[field]
    if part is None:
        return dataclasses.replace(settings, **{attribute: value})
    if part == "sampler":
        fields = {**dict(settings.sampler), attribute: value}
        return dataclasses.replace(settings, sampler=tuple(fields.items()))
    updated = dataclasses.replace(getattr(settings, part), **{attribute: value})
    return dataclasses.replace(settings, **{part: updated})


def parse_ablation(text: str) -> list[tuple[str, object]]:
    """'field=v1,v2' -> [(field, v1), (field, v2)] with values converted and validated."""
    field, sep, values = text.partition("=")
    field = field.strip()
    if not sep or field not in ABLATION_FIELDS or not values.strip():
        raise ValueError(
            f"ablation {text!r}: expected FIELD=V1,V2 with FIELD one of {sorted(ABLATION_FIELDS)}"
        )
    try:
        parsed = [(field, ABLATION_FIELDS[field][2](v.strip())) for v in values.split(",")]
        for name, value in parsed:  # validate through the settings
            with_field(PdrSettings(), name, value)
    except (KeyError, ValueError, argparse.ArgumentTypeError) as e:
        raise ValueError(f"ablation {text!r}: bad value ({e})") from None
    return parsed


# The diffusion methods whose PdrSettings an ablation varies (each has a "NAME[FIELD=V]" variant).
ABLATABLE = ("pdr", "pdr-lc", "pdr-opp", "pdr-gray")


def pdr_variants(base: PdrSettings, ablations, method: str = "pdr") -> dict[str, PdrSettings]:
    """{"METHOD[field=value]": settings} varying one field of base at a time; settings equal to
    base itself are left out (that is `method` itself)."""
    variants = {}
    for field, value in ablations:
        settings = with_field(base, field, value)
        if settings != base:
            text = {True: "on", False: "off"}[value] if isinstance(value, bool) else value
            variants[f"{method}[{field}={text}]"] = settings
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
    default = DEFAULT_CHECKPOINT if options.mode == "gray" else DEFAULT_RGB_CHECKPOINT
    if (model_io.resolve_model(default) / model_io.NETWORK_FILE).exists():
        return str(default)
    raise MethodUnavailable(
        f"no model: pass --checkpoint DIR (the shipped default {default} has no "
        f"{model_io.NETWORK_FILE} yet)"
    )


def restore_pdr(
    prior: Prior,
    y,
    *,
    s,
    r,
    b,
    domain,
    key,
    settings: PdrSettings,
    operator=IDENTITY,
    colour: str | None = None,
    gray: Prior | None = None,
):
    """Restore crops y [N, H, W, C'] electrons, measured through `operator` (one domain, scalar
    s, r, b) -> x [N, H, W, C], or (x, std) where num_samples > 1 gave a posterior std.
    colour: how the prior restores colour (pdr_jax.restore.colour_denoiser: "opponent" with a
    grayscale prior, "luma" with a colour prior and the grayscale `gray`); its self-ensemble
    is the default where settings leaves it at None, and its sampler the mode's default with
    the fields that settings.sampler sets."""
    prior = dataclasses.replace(prior, conditioned=settings.conditioning)
    if gray is not None:
        gray = dataclasses.replace(gray, conditioned=settings.conditioning)
    denoiser, sampler = colour_denoiser(
        prior, colour, gray=gray, self_ensemble=settings.self_ensemble
    )
    result = restore(
        denoiser,
        y,
        physics=Physics(s, r, b, domain, operator),
        guidance=settings.guidance,
        sampler=settings.sampler_over(sampler),
        tiling_settings=settings.tiling,
        num_samples=settings.num_samples,
        key=key,
    )
    return result.image if result.std is None else (result.image, result.std)


def load_prior(options: MethodOptions) -> Prior:
    """The prior of options.checkpoint (or the mode's shipped default) for the benchmark: the
    mode's channels (gray 1, rgb and raw 3), 6-D physics conditioning or none; MethodUnavailable
    otherwise."""
    net, variables = load_checkpoint(checkpoint_dir(options))
    channels = 1 if options.mode == "gray" else 3
    if net.model.in_channels != channels:
        raise MethodUnavailable(
            f"the benchmark (mode {options.mode}) has {channels} channel(s); the model has "
            f"{net.model.in_channels}"
        )
    try:
        return Prior(net, variables)
    except ValueError as e:
        raise MethodUnavailable(str(e)) from None


def pdr_method(options: MethodOptions, settings: PdrSettings | None = None) -> Method:
    """The "pdr" method with `settings` (default options.pdr) and the options' (or the default)
    model."""
    prior, settings = load_prior(options), settings or options.pdr

    def restore_fn(y, *, s, r, b, domain, key, operator=IDENTITY):
        return restore_pdr(
            prior, y, s=s, r=r, b=b, domain=domain, key=key, settings=settings, operator=operator
        )

    return Method(restore_fn, jitted=True)


def gray_per_channel_method(options: MethodOptions) -> Method:
    """ "pdr-gray" (mode rgb): the grayscale prior (DEFAULT_CHECKPOINT) restoring each channel
    on its own with options.pdr, as pdr-restore does with --checkpoint pdr-gray-default."""
    if options.mode != "rgb":
        raise MethodUnavailable("pdr-gray restores the channels of --mode rgb crops")
    gray = dataclasses.replace(options, checkpoint=DEFAULT_CHECKPOINT, mode="gray")
    method = pdr_method(gray)

    def restore_fn(y, *, key, **args):
        channels = [
            method.restore(y[..., c : c + 1], key=jax.random.fold_in(key, c), **args)
            for c in range(y.shape[-1])
        ]
        return np.concatenate([np.asarray(c) for c in channels], axis=-1)

    return Method(restore_fn, jitted=True)


def opponent_method(options: MethodOptions) -> Method:
    """ "pdr-opp" (modes rgb and raw): the grayscale prior (DEFAULT_CHECKPOINT, or a grayscale
    --checkpoint) on the opponent channels, self-ensembled, with COLOUR_SAMPLER, as
    pdr-restore restores a colour input by default (colour_denoiser "opponent")."""
    if options.mode == "gray":
        raise MethodUnavailable("pdr-opp restores the colour crops of --mode rgb or raw")
    checkpoint = options.checkpoint or DEFAULT_CHECKPOINT
    prior = load_prior(dataclasses.replace(options, checkpoint=checkpoint, mode="gray"))
    return Method(
        functools.partial(_restore_colour, prior, "opponent", None, options.pdr), jitted=True
    )


def luma_chroma_method(options: MethodOptions) -> Method:
    """ "pdr-lc" (modes rgb and raw): the colour prior's chrominance (DEFAULT_RGB_CHECKPOINT,
    or a colour --checkpoint) with the grayscale prior (DEFAULT_CHECKPOINT) on the luminance,
    with MOSAIC_SAMPLER, as pdr-restore restores a mosaic by default (colour_denoiser "luma")."""
    if options.mode == "gray":
        raise MethodUnavailable("pdr-lc restores the colour crops of --mode rgb or raw")
    colour = load_prior(options)
    gray = load_prior(dataclasses.replace(options, checkpoint=DEFAULT_CHECKPOINT, mode="gray"))
    return Method(
        functools.partial(_restore_colour, colour, "luma", gray, options.pdr), jitted=True
    )


def _restore_colour(prior, colour, gray, settings, y, *, s, r, b, domain, key, operator=IDENTITY):
    """restore_pdr in a colour mode (the restore function of pdr-opp and pdr-lc)."""
    return restore_pdr(
        prior,
        y,
        s=s,
        r=r,
        b=b,
        domain=domain,
        key=key,
        settings=settings,
        operator=operator,
        colour=colour,
        gray=gray,
    )


def vst_prior_method(options: MethodOptions) -> Method:
    """ "pdr-vst": options.pdr with num_steps=0, start "vst" and estimate_ensemble=1: the
    one-call estimate, one network call."""
    fast = {**dict(options.pdr.sampler), "start": "vst", "num_steps": 0, "estimate_ensemble": 1}
    return pdr_method(options, dataclasses.replace(options.pdr, sampler=tuple(fast.items())))


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
    if (model_io.resolve_model(DEFAULT_CONDITIONAL) / model_io.NETWORK_FILE).exists():
        return str(DEFAULT_CONDITIONAL)
    raise MethodUnavailable(
        f"the concat-conditioned restoration model has no model directory: pass "
        f"--conditional-checkpoint DIR ({DEFAULT_CONDITIONAL} is missing)"
    )


def conditional_method(options: MethodOptions) -> Method:
    """The conditional model (kind "conditional") through pdr_jax.restore.restore with
    CONDITIONAL_SETTINGS, crops in batches as "pdr" (tiling=None), the measurement conditioning
    every call."""
    from pdr_jax.conditional import ConditionalModel

    net, variables = load_checkpoint(conditional_checkpoint_dir(options))
    if net.img_channels != 1:
        raise MethodUnavailable(
            f"the benchmark is grayscale; the model has {net.img_channels} channels"
        )
    model = ConditionalModel(net, variables)

    def restore_fn(y, *, s, r, b, domain, key, operator=IDENTITY):
        del operator  # gray benchmarks only (checked above)
        tiles = None if y.shape[1] <= model.img_resolution else TilingSettings()
        return restore(
            model,
            y,
            physics=Physics(s, r, b, domain),
            tiling_settings=tiles,
            key=key,
            **CONDITIONAL_SETTINGS,
        ).image

    return Method(restore_fn, jitted=True)


def _per_image(estimate, modes=("gray", "rgb")):
    """A Method from estimate(y [H, W, C], s, r, b) -> x [H, W, C], applied image by image, for
    the benchmark modes `modes` (identity measurements), or with modes ("raw",)
    estimate(y, operator, s, r, b) for mosaics."""

    def restore(y, *, s, r, b, domain, key, operator=IDENTITY):
        del domain, key
        if modes == ("raw",):
            return np.stack([estimate(image, operator, s, r, b) for image in np.asarray(y)])
        return np.stack([estimate(image, s, r, b) for image in np.asarray(y)])

    def factory(options: MethodOptions) -> Method:
        if options.mode not in modes:
            raise MethodUnavailable(f"it runs in modes {modes}, not {options.mode}")
        return Method(restore)

    return factory


def _noisy_mosaic(y, operator, s, r, b):
    """(y - b) / s of a mosaic, each colour divided by its gain, demosaicked (operator.fill)."""
    del r
    return np.clip(operator.fill((y - b) / s) / operator.channel_gains, 0, 1).astype(np.float32)


# Deconvolution baselines (cases blurred by --psf). Richardson-Lucy's iteration count is its
# regulariser; one count per photon level s (electrons at intensity 1; other s take the nearest
# level in log s), chosen on corpus:val: 4 crops per domain (microscopy, astronomy), the three
# PSFs of docs/deconvolution.md, r = 2 (python -m pdr_jax.evaluation.deconvolution). Mean PSNR
# at s = 10 / 50 / 250: RL at 1 iteration 22.00 / 29.15 / 31.64, at 2 20.57 / 28.45 / 31.79, at
# 5 17.92 / 25.67 / 29.37 (more amplify the noise); GAT+BM3D then RL at 1 28.67 / 31.46 /
# 32.35, at 2 28.30 / 31.59 / 32.75, at 5 26.61 / 29.53 / 30.62.
RL_ITERATIONS = {10.0: 1, 50.0: 1, 250.0: 2}
# RL-TV (iterations, TV weight) over (2, 5, 10) x (0.01, 0.02, 0.05, 0.1): best 21.66 / 29.02 /
# 31.91 dB (a first grid of 10-50 iterations peaked at its corner, 10 and 0.02).
RL_TV = {10.0: (2, 0.1), 50.0: (2, 0.05), 250.0: (2, 0.02)}
GAT_BM3D_RL_ITERATIONS = {10.0: 1, 50.0: 2, 250.0: 2}
ORACLE_COUNTS = (1, 2, 3, 5, 8, 12, 20, 30, 50, 80, 120, 200)


def at_level(table: dict, s: float):
    """table's value at the photon level nearest s in log s."""
    return table[min(table, key=lambda level: abs(np.log(level / s)))]


def _kernel(operator) -> np.ndarray:
    if not operator.radius:
        raise ValueError("a deconvolution method needs blurred cases (pdr-evaluate --psf)")
    return operator.array


def _deconvolution(estimate):
    """A Method factory from estimate(y [H, W, C], kernel, s, r, b) -> x, image by image, for
    cases blurred by --psf (mode gray)."""

    def restore(y, *, s, r, b, domain, key, operator=IDENTITY):
        del domain, key
        kernel = _kernel(operator)
        return np.stack([estimate(image, kernel, s, r, b) for image in np.asarray(y)])

    def factory(options: MethodOptions) -> Method:
        if options.psf is None or options.mode != "gray":
            raise MethodUnavailable("it deconvolves: give --psf (mode gray)")
        return Method(restore)

    return factory


def _rl(y, kernel, s, r, b):
    return baselines.richardson_lucy(y, kernel, s, r, b, iterations=at_level(RL_ITERATIONS, s))


def _rl_tv(y, kernel, s, r, b):
    iterations, weight = at_level(RL_TV, s)
    return baselines.richardson_lucy_tv(y, kernel, s, r, b, iterations=iterations, weight=weight)


def _gat_bm3d_rl(y, kernel, s, r, b):
    iterations = at_level(GAT_BM3D_RL_ITERATIONS, s)
    return baselines.gat_bm3d_rl(y, kernel, s, r, b, iterations=iterations)


def rl_oracle_method(options: MethodOptions) -> Method:
    """Richardson-Lucy with the iteration count of ORACLE_COUNTS that is best (PSNR) for each
    image against its truth: the bound on any rule for stopping it."""
    if options.psf is None or options.mode != "gray":
        raise MethodUnavailable("it deconvolves: give --psf (mode gray)")

    def best(image, kernel, s, b, clean):
        intensity = np.clip((np.asarray(image, np.float64) - b) / s, 0.0, None)
        channels = []
        for c in range(intensity.shape[-1]):
            trace = baselines.richardson_lucy_trace(intensity[..., c], kernel, ORACLE_COUNTS)
            clipped = [np.clip(x, 0, 1) for x in trace.values()]
            channels.append(max(clipped, key=lambda x: -np.mean((x - clean[..., c]) ** 2)))
        return np.stack(channels, axis=-1).astype(np.float32)

    def restore(y, *, s, r, b, domain, key, operator=IDENTITY, clean):
        del r, domain, key
        kernel = _kernel(operator)
        return np.stack([best(image, kernel, s, b, x) for image, x in zip(np.asarray(y), clean)])

    return Method(restore, oracle=True)


METHODS = {
    "pdr": pdr_method,
    "conditional": conditional_method,
    "pdr-vst": vst_prior_method,
    "pdr-gray": gray_per_channel_method,
    "pdr-opp": opponent_method,
    "pdr-lc": luma_chroma_method,
    "gat-bm3d": _per_image(baselines.gat_bm3d),
    "gat-cbm3d": _per_image(baselines.gat_cbm3d, modes=("rgb",)),
    "gat-bm3d-menon": _per_image(baselines.gat_bm3d_menon, modes=("raw",)),
    "nlm": _per_image(baselines.gat_nlm),
    "noisy": _per_image(baselines.noisy_estimate),
    "noisy-raw": _per_image(_noisy_mosaic, modes=("raw",)),
    "rl": _deconvolution(_rl),
    "rl-oracle": rl_oracle_method,
    "rl-tv": _deconvolution(_rl_tv),
    "gat-bm3d-rl": _deconvolution(_gat_bm3d_rl),
}


def build_methods(names, options: MethodOptions, ablations=(), log=print) -> dict[str, Method]:
    """Methods by name (and "pdr" ablation variants), skipping unavailable ones with a message.

    names: keys of METHODS. ablations: (field, value) pairs from parse_ablation: variants
    "NAME[FIELD=V]" of each ABLATABLE method in names (of "pdr" where none is), which run only
    where their model loads. Raises KeyError for an unknown name.
    """
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise KeyError(f"unknown methods {unknown}; known: {sorted(METHODS)}")
    methods = {}
    # The variants of each diffusion method named (of "pdr" where none is): (factory, options).
    variants = {
        name: (METHODS[method], dataclasses.replace(options, pdr=settings))
        for method in [n for n in names if n in ABLATABLE] or ["pdr"]
        for name, settings in pdr_variants(options.pdr, ablations, method).items()
    }
    built = [(n, METHODS[n], options) for n in names] + [(n, *v) for n, v in variants.items()]
    for name, factory, method_options in built:
        try:
            methods[name] = factory(method_options)
        except MethodUnavailable as e:
            log(f"SKIPPED method {name}: {e}")
    return methods


def network_memory_bytes(prior: Prior, shape, settings: PdrSettings) -> int:
    """XLA's compiled memory (arguments + outputs + temporaries) of one denoiser evaluation on
    crops of `shape` [N, H, W, C] at settings' processing resolution: the part of the
    sampler's memory that grows with it (the network's activations on a batch of crops or on
    one chunk of tiles, plus the padded image buffers). Compiles the program, does not run
    it; -1 where the backend gives no memory analysis."""
    tiled = settings.tiling
    rows = shape[0] if tiled is None else tiled.batch
    physics = Physics(1.0, 0.0)  # values do not change the size
    denoise_fn = prior.sampler_args(physics, rows)["denoise_fn"]
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    if tiled is not None:
        plan = tile_plan(prior, shape[1], shape[2], tiled)
        denoise_fn = tiling.tiled_denoiser(denoise_fn, plan, batch=tiled.batch)
        x = jax.ShapeDtypeStruct((shape[0], *plan.padded_shape, shape[3]), jnp.float32)
    lowered = cpu.jit(lambda fn, x, sigma: fn(x, sigma)).lower(denoise_fn, x, jnp.float32(1.0))
    stats = lowered.compile().memory_analysis()
    if stats is None:
        return -1
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes)


def tile_plan(prior: Prior, height: int, width: int, tiled: TilingSettings) -> tiling.TilePlan:
    """The TilePlan restore uses for an H x W crop at tiled.tile (overlap capped at a quarter)."""
    return tiling.plan_tiles(
        height,
        width,
        tile=tiled.tile,
        overlap=min(tiled.overlap, tiled.tile // 4),
        multiple=prior.downsampling,
    )
