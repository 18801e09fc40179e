"""Named intermediate activations of the EDM U-Nets, captured with Flax's `capture_intermediates`.

    layers = list_layers(net)                       # stable names, EDM keys, sizes
    acts = capture_activations(net, variables, x, sigma, labels,
                               layers=["encoder_block_0", "midblock", "dec.16x16_in0"])
    acts["midblock"]                                # [B, h, w, c] float32

`net` is a preconditioned network from `pdr_jax.precond` (build_network, load_model or
load_edm_pickle) whose `model` is a SongUNet (DDPM++/NCSN++) or a DhariwalUNet (ADM).
Nothing in the networks' math changes: the requested modules' `__call__` outputs are recorded
by `Module.apply(..., capture_intermediates=filter)`, so D(x; sigma) is the same with and
without capturing (bit for bit on CPU, tested; on a GPU, XLA may fuse a program with extra
outputs differently, so compare there with a float32 tolerance).

Stable names (the same for both U-Nets; ``{r}`` is a resolution in EDM's key, e.g. 16x16),
each with the EDM module whose output it is (what a PyTorch forward hook on it records):

- ``encoder_block_{i}``: the i-th entry of ``model.enc`` that is a conv or a UNetBlock, in
  EDM's order (``{r}_conv``, ``{r}_down``, ``{r}_block{j}``; the ``aux_*`` convs of the
  skip/residual encoders are not counted). These are exactly the tensors the decoder later
  receives as skip connections.
- ``encoder_bottleneck``: the last of them, i.e. encoder_block_{n-1}: the lowest-resolution
  encoder block.
- ``midblock``: ``model.dec.{r}_in1`` at the lowest resolution: the output of the in0/in1
  pair that opens the decoder (in0 has the attention layer).
- ``decoder_block_{i}``: the i-th decoder UNetBlock after in1, in EDM's order (``{r}_up`` and
  ``{r}_block{j}``; ``aux_*`` modules are not counted). The last one is the full-resolution
  block before the output head.

Caveats of the mapping: a SongUNet with encoder_type "skip"/"residual" adds an aux branch to
a ``{r}_down`` block's output after the block; encoder_block_{i} is the block's own output
(what EDM's hook sees), not the sum. For a 4-level DDPM++ with 4 blocks per level there are
1 + 4 + 3 * 5 = 20 encoder blocks and 4 * 5 + 3 = 23 decoder blocks.

Any EDM module path below ``model.`` is accepted as a name as well, with or without the
``model.`` prefix: ``"enc.16x16_block0"``, ``"dec.8x8_in0"``, ``"map_layer1"``, ``"out_norm"``,
``"enc.16x16_block0.conv0"``. The result dict is keyed by the names as given.

Shapes: 4-D activations are NHWC [B, h, w, c] where h = H * r / img_resolution for an input
of size H; embedding layers (``map_*``) give [B, c]. Values are in the U-Net's compute dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from pdr_jax import cpu
from pdr_jax.nn.unets import DhariwalUNet

Array = jax.Array


class LayerInfo(NamedTuple):
    """One stable name: the EDM module it denotes and its output size at img_resolution."""

    name: str  # e.g. "encoder_block_3"
    path: str  # EDM key below `model.`, e.g. "enc.16x16_block0"
    resolution: int  # output height = width at the network's img_resolution
    channels: int


def _unet(net):
    model = getattr(net, "model", None)
    if model is None or not hasattr(model, "layout"):
        raise TypeError(
            f"expected a pdr_jax.precond network around a SongUNet/DhariwalUNet, got {type(net)}"
        )
    return model


def _info(name: str, container: str, spec) -> LayerInfo:
    """LayerInfo of a layout entry; its resolution is the leading number of its key (16x16_...)."""
    resolution = int(spec.name.split("x", 1)[0])
    return LayerInfo(name, f"{container}.{spec.name}", resolution, spec.out_channels)


def list_layers(net) -> list[LayerInfo]:
    """The stable names of `net`'s U-Net in forward order, each with its EDM key and size.

    Order: encoder_block_0.., encoder_bottleneck, midblock, decoder_block_0.. . Computed from the
    U-Net's layout: no parameters are needed (works on a 296M-parameter net without init).
    """
    enc_specs, dec_specs = _unet(net).layout
    encoder = [spec for spec in enc_specs if spec.kind in ("conv", "block")]
    mid = next(i for i, spec in enumerate(dec_specs) if spec.name.endswith("_in1"))
    decoder = [spec for spec in dec_specs[mid + 1 :] if spec.kind == "block"]
    return [
        *(_info(f"encoder_block_{i}", "enc", spec) for i, spec in enumerate(encoder)),
        _info("encoder_bottleneck", "enc", encoder[-1]),
        _info("midblock", "dec", dec_specs[mid]),
        *(_info(f"decoder_block_{i}", "dec", spec) for i, spec in enumerate(decoder)),
    ]


def module_keys(net) -> list[str]:
    """EDM's top-level module keys of `net`'s U-Net below `model.` (map_*, enc.*, dec.*, out_*)."""
    model = _unet(net)
    enc_specs, dec_specs = model.layout
    keys = ["map_noise"]
    keys += ["map_augment"] if model.augment_dim else []
    keys += ["map_label"] if model.label_dim else []
    keys += ["map_layer0", "map_layer1"]
    keys += [f"enc.{spec.name}" for spec in enc_specs] + [f"dec.{spec.name}" for spec in dec_specs]
    if isinstance(model, DhariwalUNet):  # SongUNet's output head is the dec.*_aux_* modules
        keys += ["out_norm", "out_conv"]
    return keys


def _flax_path(edm_path: str) -> tuple[str, ...]:
    """EDM module path below `model.` -> Flax module path (enc/dec keys keep their prefix)."""
    parts = edm_path.split(".")
    if parts[0] in ("enc", "dec") and len(parts) > 1:
        parts = [f"{parts[0]}.{parts[1]}", *parts[2:]]
    return ("model", *parts)


def resolve_layers(net, layers: Iterable[str] | None = None) -> dict[str, str]:
    """{name as given: EDM module path below `model.`} for stable names and EDM paths.

    None means every stable name. Raises KeyError naming the unknown entries and the valid names.
    Paths below a top-level key (e.g. ``enc.16x16_block0.conv0``) are checked when captured.
    """
    stable = {info.name: info.path for info in list_layers(net)}
    if layers is None:
        return dict(stable)
    keys = set(module_keys(net))
    resolved, unknown = {}, []
    for name in layers:
        path = name.removeprefix("model.")
        if name in stable:
            resolved[name] = stable[name]
        elif _flax_path(path)[1] in keys:  # its top-level module exists
            resolved[name] = path
        else:
            unknown.append(name)
    if unknown:
        raise KeyError(
            f"unknown layer(s) {unknown}; stable names: {sorted(stable)}; "
            f"or an EDM module path below one of: {module_keys(net)}"
        )
    return resolved


@functools.lru_cache(maxsize=16)
def _capture_program(net, flax_paths: frozenset):
    """A jitted (variables, x, sigma, labels, augment_labels) -> (D, intermediates) for `net`."""

    def wanted(module, method_name: str) -> bool:
        return method_name == "__call__" and module.path in flax_paths

    def run(variables, x, sigma, class_labels, augment_labels):
        D, state = net.apply(
            variables,
            x,
            sigma,
            class_labels,
            augment_labels=augment_labels,
            capture_intermediates=wanted,
            mutable=["intermediates"],
        )
        return D, state.get("intermediates", {})  # absent when no module matched

    return cpu.jit(run)


def _lookup(tree: Mapping, flax_path: tuple[str, ...], name: str):
    node = tree
    for part in flax_path:
        if part not in node:
            raise KeyError(f"layer {name!r}: no module at {'.'.join(flax_path)!r} was called")
        node = node[part]
    return node["__call__"][0]


def capture_activations(
    net,
    variables,
    x,
    sigma,
    class_labels=None,
    layers: Sequence[str] | None = None,
    *,
    augment_labels=None,
    return_output: bool = False,
):
    """The outputs of the named modules in one forward pass of D(x; sigma, class_labels).

    Args:
      net, variables: a `pdr_jax.precond` network and its variables.
      x: [B, H, W, C] float32, noisy images (EDM scaling, x = y + sigma n).
      sigma: [B] float32 or a scalar.
      class_labels: [B, label_dim] float32 or None (zeros for a conditional net).
      layers: stable names and/or EDM module paths (see the module docstring); None = all
        stable names.
      augment_labels: [B, augment_dim] or None.
      return_output: also return D(x; sigma) [B, H, W, C] float32.

    Returns:
      {name: [B, h, w, c] (or [B, c] for embedding layers)}, or (that dict, D). One jitted
      program per (network, set of modules); D equals ``net.apply(variables, x, sigma, ...)``.
    """
    chex.assert_rank(x, 4)
    paths = resolve_layers(net, layers)
    flax_paths = {name: _flax_path(path) for name, path in paths.items()}
    program = _capture_program(net, frozenset(flax_paths.values()))
    sigma = jnp.asarray(sigma, jnp.float32)
    D, intermediates = program(
        variables, jnp.asarray(x, jnp.float32), sigma, class_labels, augment_labels
    )
    activations = {name: _lookup(intermediates, path, name) for name, path in flax_paths.items()}
    return (activations, D) if return_output else activations


# ----------------------------------------------------------------------------------------------
# Per-channel statistics that merge across batches.


def channel_summary(a) -> dict[str, Array]:
    """Per-channel moments of one batch of activations a: [B, h, w, c] or [B, c].

    Returns float32 arrays of shape [c]: mean, m2 (sum of squared deviations from the mean),
    min, max, absmax; and count (values per channel, a Python-int-valued scalar). Merge batches
    with `merge_summaries`; a pure function, so it can run under jit next to the capture.
    """
    a = jnp.asarray(a, jnp.float32).reshape(-1, a.shape[-1])
    mean = jnp.mean(a, axis=0)
    return dict(
        count=jnp.asarray(a.shape[0], jnp.float32),
        mean=mean,
        m2=jnp.sum(jnp.square(a - mean), axis=0),
        min=jnp.min(a, axis=0),
        max=jnp.max(a, axis=0),
        absmax=jnp.max(jnp.abs(a), axis=0),
    )


def merge_summaries(first: Mapping | None, second: Mapping) -> dict[str, np.ndarray]:
    """Two channel summaries as one, in float64 (Chan et al.'s pairwise mean/variance update)."""
    second = {k: np.asarray(v, np.float64) for k, v in second.items()}
    if first is None:
        return second
    n1, n2 = first["count"], second["count"]
    n = n1 + n2
    delta = second["mean"] - first["mean"]
    return dict(
        count=n,
        mean=first["mean"] + delta * n2 / n,
        m2=first["m2"] + second["m2"] + np.square(delta) * n1 * n2 / n,
        min=np.minimum(first["min"], second["min"]),
        max=np.maximum(first["max"], second["max"]),
        absmax=np.maximum(first["absmax"], second["absmax"]),
    )


def layer_statistics(summary: Mapping, dead_threshold: float = 1e-6) -> dict:
    """Layer-wide statistics from a (merged) channel summary.

    mean and std are over all values of the layer (images, positions and channels; population
    std). A channel is dead when ``|a| <= dead_threshold`` at every position of every image seen.
    Returns plain Python numbers and lists (JSON-ready).
    """
    count, mean, m2 = summary["count"], np.asarray(summary["mean"]), np.asarray(summary["m2"])
    num_channels = mean.shape[0]
    layer_mean = float(np.mean(mean))
    # Total sum of squares = within-channel + between-channel parts.
    total_m2 = float(np.sum(m2) + count * np.sum(np.square(mean - layer_mean)))
    dead = np.flatnonzero(np.asarray(summary["absmax"]) <= dead_threshold)
    return dict(
        mean=layer_mean,
        std=float(np.sqrt(total_m2 / (count * num_channels))),
        min=float(np.min(summary["min"])),
        max=float(np.max(summary["max"])),
        num_channels=int(num_channels),
        dead_channels=[int(c) for c in dead],
        dead_fraction=float(len(dead) / num_channels),
        channel_mean=[float(v) for v in mean],
        channel_std=[float(v) for v in np.sqrt(m2 / count)],
        channel_absmax=[float(v) for v in np.asarray(summary["absmax"])],
    )


def pool_activations(a) -> Array:
    """Spatial mean: [B, h, w, c] -> [B, c] float32 ([B, c] passes through)."""
    a = jnp.asarray(a, jnp.float32)
    return jnp.mean(a, axis=(1, 2)) if a.ndim == 4 else a
