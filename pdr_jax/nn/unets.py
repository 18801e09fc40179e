"""EDM's U-Nets in flax.linen, NHWC: SongUNet (DDPM++/NCSN++) and DhariwalUNet (ADM).

Submodules are named exactly as EDM's ``enc``/``dec`` ModuleDict keys prefixed by the
container (``enc.64x64_block0``, ``dec.16x16_in0``), so ``".".join(path)`` of every parameter is
its EDM state_dict key below ``model.``. The block list of each network is computed once by a
plain function (``songunet_layout``/``dhariwal_layout``) that also documents the architecture.

Both networks are fully convolutional: the names come from `img_resolution` (the resolution the
network was built for), but any input size divisible by 2**(levels-1) is accepted.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from pdr_jax.nn.layers import (
    Conv2d,
    FourierEmbedding,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    UNetBlock,
)

Dtype = Any


class LayerSpec(NamedTuple):
    """One entry of an encoder/decoder: EDM's key, its kind and constructor arguments."""

    name: str  # e.g. "64x64_block0"
    kind: str  # "conv", "block", "aux_down", "aux_skip", "aux_residual", "aux_up", "aux_norm", "aux_conv"
    in_channels: int
    out_channels: int
    kwargs: dict


def _label_dropout(module: nn.Module, labels, rate: float, train: bool):
    """Zero each sample's whole label row with probability `rate` (training only)."""
    if not (train and rate):
        return labels
    keep = jax.random.uniform(module.make_rng("dropout"), (labels.shape[0], 1)) >= rate
    return labels * keep.astype(labels.dtype)


def songunet_layout(
    img_resolution: int,
    in_channels: int,
    out_channels: int,
    model_channels: int,
    channel_mult: Sequence[int],
    num_blocks: int,
    attn_resolutions: Sequence[int],
    encoder_type: str,
    decoder_type: str,
) -> tuple[list[LayerSpec], list[LayerSpec]]:
    """SongUNet's encoder and decoder entries in EDM's insertion order."""
    enc, dec = [], []
    cout = caux = in_channels
    for level, mult in enumerate(channel_mult):
        res = img_resolution >> level
        if level == 0:
            cin, cout = cout, model_channels
            enc.append(LayerSpec(f"{res}x{res}_conv", "conv", cin, cout, {}))
        else:
            enc.append(LayerSpec(f"{res}x{res}_down", "block", cout, cout, dict(down=True)))
            if encoder_type == "skip":
                enc.append(LayerSpec(f"{res}x{res}_aux_down", "aux_down", caux, caux, {}))
                enc.append(LayerSpec(f"{res}x{res}_aux_skip", "aux_skip", caux, cout, {}))
            if encoder_type == "residual":
                enc.append(LayerSpec(f"{res}x{res}_aux_residual", "aux_residual", caux, cout, {}))
                caux = cout
        for idx in range(num_blocks):
            cin, cout = cout, model_channels * mult
            attn = res in attn_resolutions
            enc.append(
                LayerSpec(f"{res}x{res}_block{idx}", "block", cin, cout, dict(attention=attn))
            )
    skips = [spec.out_channels for spec in enc if "aux" not in spec.name]
    for level, mult in reversed(list(enumerate(channel_mult))):
        res = img_resolution >> level
        if level == len(channel_mult) - 1:
            dec.append(LayerSpec(f"{res}x{res}_in0", "block", cout, cout, dict(attention=True)))
            dec.append(LayerSpec(f"{res}x{res}_in1", "block", cout, cout, {}))
        else:
            dec.append(LayerSpec(f"{res}x{res}_up", "block", cout, cout, dict(up=True)))
        for idx in range(num_blocks + 1):
            cin, cout = cout + skips.pop(), model_channels * mult
            attn = idx == num_blocks and res in attn_resolutions
            dec.append(
                LayerSpec(f"{res}x{res}_block{idx}", "block", cin, cout, dict(attention=attn))
            )
        if decoder_type == "skip" or level == 0:
            if decoder_type == "skip" and level < len(channel_mult) - 1:
                dec.append(
                    LayerSpec(f"{res}x{res}_aux_up", "aux_up", out_channels, out_channels, {})
                )
            dec.append(LayerSpec(f"{res}x{res}_aux_norm", "aux_norm", cout, cout, {}))
            dec.append(LayerSpec(f"{res}x{res}_aux_conv", "aux_conv", cout, out_channels, {}))
    return enc, dec


def dhariwal_layout(
    img_resolution: int,
    in_channels: int,
    model_channels: int,
    channel_mult: Sequence[int],
    num_blocks: int,
    attn_resolutions: Sequence[int],
) -> tuple[list[LayerSpec], list[LayerSpec]]:
    """DhariwalUNet's encoder and decoder entries in EDM's insertion order."""
    enc, dec = [], []
    cout = in_channels
    for level, mult in enumerate(channel_mult):
        res = img_resolution >> level
        if level == 0:
            cin, cout = cout, model_channels * mult
            enc.append(LayerSpec(f"{res}x{res}_conv", "conv", cin, cout, {}))
        else:
            enc.append(LayerSpec(f"{res}x{res}_down", "block", cout, cout, dict(down=True)))
        for idx in range(num_blocks):
            cin, cout = cout, model_channels * mult
            attn = res in attn_resolutions
            enc.append(
                LayerSpec(f"{res}x{res}_block{idx}", "block", cin, cout, dict(attention=attn))
            )
    skips = [spec.out_channels for spec in enc]
    for level, mult in reversed(list(enumerate(channel_mult))):
        res = img_resolution >> level
        if level == len(channel_mult) - 1:
            dec.append(LayerSpec(f"{res}x{res}_in0", "block", cout, cout, dict(attention=True)))
            dec.append(LayerSpec(f"{res}x{res}_in1", "block", cout, cout, {}))
        else:
            dec.append(LayerSpec(f"{res}x{res}_up", "block", cout, cout, dict(up=True)))
        for idx in range(num_blocks + 1):
            cin, cout = cout + skips.pop(), model_channels * mult
            attn = res in attn_resolutions
            dec.append(
                LayerSpec(f"{res}x{res}_block{idx}", "block", cin, cout, dict(attention=attn))
            )
    return enc, dec


def _run_decoder_block(block, spec: LayerSpec, x, skips: list, emb, train: bool):
    """EDM's concat rule: the next skip is appended (second) only when channels mismatch."""
    if x.shape[-1] != spec.in_channels:
        x = jnp.concatenate([x, skips.pop().astype(x.dtype)], axis=-1)
    return block(x, emb, train)


class SongUNet(nn.Module):
    """DDPM++ / NCSN++ U-Net of Song et al. (2021) as configured by EDM."""

    img_resolution: int
    in_channels: int
    out_channels: int
    label_dim: int = 0
    augment_dim: int = 0
    model_channels: int = 128
    channel_mult: Sequence[int] = (1, 2, 2, 2)
    channel_mult_emb: int = 4
    num_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.10
    label_dropout: float = 0.0
    embedding_type: str = "positional"  # "positional" (DDPM++) or "fourier" (NCSN++)
    channel_mult_noise: int = 1
    encoder_type: str = "standard"  # "standard", "skip" or "residual"
    decoder_type: str = "standard"  # "standard" or "skip"
    resample_filter: Sequence[int] = (1, 1)
    dtype: Dtype = jnp.float32  # compute dtype of the U-Net body; embeddings stay float32
    remat: bool = False  # rematerialise each UNetBlock in the backward pass

    def setup(self):
        if self.embedding_type not in ("positional", "fourier"):
            raise ValueError(
                f"embedding_type must be 'positional' or 'fourier', got {self.embedding_type!r}"
            )
        if self.encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(
                f"encoder_type must be standard/skip/residual, got {self.encoder_type!r}"
            )
        if self.decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type must be standard/skip, got {self.decoder_type!r}")

    @property
    def layout(self):
        return songunet_layout(
            self.img_resolution,
            self.in_channels,
            self.out_channels,
            self.model_channels,
            self.channel_mult,
            self.num_blocks,
            self.attn_resolutions,
            self.encoder_type,
            self.decoder_type,
        )

    @nn.compact
    def __call__(
        self, x, noise_labels, class_labels=None, augment_labels=None, train: bool = False
    ):
        """x: [B, H, W, in_channels]; noise_labels: [B]; class_labels: [B, label_dim] -> [B, H, W, out]."""
        emb_channels = self.model_channels * self.channel_mult_emb
        noise_channels = self.model_channels * self.channel_mult_noise
        init = FrozenDict(init_mode="xavier_uniform")
        init_zero = FrozenDict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = FrozenDict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        block_cls = nn.remat(UNetBlock, static_argnums=(3,)) if self.remat else UNetBlock
        block = functools.partial(
            block_cls,
            num_heads=1,
            dropout=self.dropout,
            skip_scale=math.sqrt(0.5),
            eps=1e-6,
            resample_filter=tuple(self.resample_filter),
            resample_proj=True,
            adaptive_scale=False,
            layer_init=init,
            zero_init=init_zero,
            attn_init=init_attn,
            dtype=self.dtype,
        )

        # Mapping (float32).
        if self.embedding_type == "positional":
            emb = PositionalEmbedding(noise_channels, endpoint=True, name="map_noise")(noise_labels)
        else:
            emb = FourierEmbedding(noise_channels, name="map_noise")(noise_labels)
        emb = jnp.concatenate(
            [emb[:, noise_channels // 2 :], emb[:, : noise_channels // 2]], axis=1
        )
        if self.label_dim:
            labels = _label_dropout(self, class_labels, self.label_dropout, train)
            emb = emb + Linear(noise_channels, name="map_label", **init)(
                labels * math.sqrt(self.label_dim)
            )
        if self.augment_dim and augment_labels is not None:
            emb = emb + Linear(noise_channels, bias=False, name="map_augment", **init)(
                augment_labels
            )
        emb = nn.silu(Linear(emb_channels, name="map_layer0", **init)(emb))
        emb = nn.silu(Linear(emb_channels, name="map_layer1", **init)(emb))

        enc_specs, dec_specs = self.layout
        conv = functools.partial(
            Conv2d, dtype=self.dtype, resample_filter=tuple(self.resample_filter)
        )

        # Encoder.
        x = x.astype(self.dtype)
        skips, aux = [], x
        for spec in enc_specs:
            name = f"enc.{spec.name}"
            if spec.kind == "aux_down":
                aux = conv(spec.out_channels, 0, down=True, name=name)(aux)
            elif spec.kind == "aux_skip":
                x = skips[-1] = x + conv(spec.out_channels, 1, name=name, **init)(aux)
            elif spec.kind == "aux_residual":
                m = conv(spec.out_channels, 3, down=True, fused_resample=True, name=name, **init)
                x = skips[-1] = aux = (x + m(aux)) / math.sqrt(2)
            elif spec.kind == "conv":
                x = conv(spec.out_channels, 3, name=name, **init)(x)
                skips.append(x)
            else:
                x = block(spec.out_channels, name=name, **spec.kwargs)(x, emb, train)
                skips.append(x)

        # Decoder.
        aux = tmp = None
        for spec in dec_specs:
            name = f"dec.{spec.name}"
            if spec.kind == "aux_up":
                aux = conv(spec.out_channels, 0, up=True, name=name)(aux)
            elif spec.kind == "aux_norm":
                tmp = GroupNorm(eps=1e-6, dtype=self.dtype, name=name)(x)
            elif spec.kind == "aux_conv":
                tmp = conv(spec.out_channels, 3, name=name, **init_zero)(nn.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                m = block(spec.out_channels, name=name, **spec.kwargs)
                x = _run_decoder_block(m, spec, x, skips, emb, train)
        return aux


class DhariwalUNet(nn.Module):
    """ADM U-Net of Dhariwal & Nichol (2021) as configured by EDM."""

    img_resolution: int
    in_channels: int
    out_channels: int
    label_dim: int = 0
    augment_dim: int = 0
    model_channels: int = 192
    channel_mult: Sequence[int] = (1, 2, 3, 4)
    channel_mult_emb: int = 4
    num_blocks: int = 3
    attn_resolutions: Sequence[int] = (32, 16, 8)
    dropout: float = 0.10
    label_dropout: float = 0.0
    dtype: Dtype = jnp.float32
    remat: bool = False

    @property
    def layout(self):
        return dhariwal_layout(
            self.img_resolution,
            self.in_channels,
            self.model_channels,
            self.channel_mult,
            self.num_blocks,
            self.attn_resolutions,
        )

    @nn.compact
    def __call__(
        self, x, noise_labels, class_labels=None, augment_labels=None, train: bool = False
    ):
        """x: [B, H, W, in_channels]; noise_labels: [B]; class_labels: [B, label_dim] -> [B, H, W, out]."""
        emb_channels = self.model_channels * self.channel_mult_emb
        init = FrozenDict(
            init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3)
        )
        init_zero = FrozenDict(init_mode="kaiming_uniform", init_weight=0.0, init_bias=0.0)
        block_cls = nn.remat(UNetBlock, static_argnums=(3,)) if self.remat else UNetBlock
        block = functools.partial(
            block_cls,
            channels_per_head=64,
            dropout=self.dropout,
            layer_init=init,
            zero_init=init_zero,
            dtype=self.dtype,
        )

        # Mapping (float32); ADM adds the label after map_layer1 and applies SiLU last.
        emb = PositionalEmbedding(self.model_channels, name="map_noise")(noise_labels)
        if self.augment_dim and augment_labels is not None:
            emb = emb + Linear(self.model_channels, bias=False, name="map_augment", **init_zero)(
                augment_labels
            )
        emb = nn.silu(Linear(emb_channels, name="map_layer0", **init)(emb))
        emb = Linear(emb_channels, name="map_layer1", **init)(emb)
        if self.label_dim:
            labels = _label_dropout(self, class_labels, self.label_dropout, train)
            emb = emb + Linear(
                emb_channels,
                bias=False,
                init_mode="kaiming_normal",
                init_weight=math.sqrt(self.label_dim),
                name="map_label",
            )(labels)
        emb = nn.silu(emb)

        enc_specs, dec_specs = self.layout
        x = x.astype(self.dtype)
        skips = []
        for spec in enc_specs:
            name = f"enc.{spec.name}"
            if spec.kind == "conv":
                x = Conv2d(spec.out_channels, 3, name=name, dtype=self.dtype, **init)(x)
            else:
                x = block(spec.out_channels, name=name, **spec.kwargs)(x, emb, train)
            skips.append(x)
        for spec in dec_specs:
            m = block(spec.out_channels, name=f"dec.{spec.name}", **spec.kwargs)
            x = _run_decoder_block(m, spec, x, skips, emb, train)
        x = nn.silu(GroupNorm(dtype=self.dtype, name="out_norm")(x))
        return Conv2d(self.out_channels, 3, name="out_conv", dtype=self.dtype, **init_zero)(x)


# Named variants (EDM's train.py --arch). The data-specific sizes come from pdr_jax.presets.NETWORKS.
DDPMpp = functools.partial(
    SongUNet,
    embedding_type="positional",
    encoder_type="standard",
    decoder_type="standard",
    channel_mult_noise=1,
    resample_filter=(1, 1),
    model_channels=128,
    channel_mult=(2, 2, 2),
)
NCSNpp = functools.partial(
    SongUNet,
    embedding_type="fourier",
    encoder_type="residual",
    decoder_type="standard",
    channel_mult_noise=2,
    resample_filter=(1, 3, 3, 1),
    model_channels=128,
    channel_mult=(2, 2, 2),
)
ADM = functools.partial(DhariwalUNet, model_channels=192, channel_mult=(1, 2, 3, 4))

UNETS = {
    "ddpmpp": DDPMpp,
    "ncsnpp": NCSNpp,
    "adm": ADM,
    "songunet": SongUNet,
    "dhariwalunet": DhariwalUNet,
}
