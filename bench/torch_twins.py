"""PyTorch twins of the U-Net baseline and the default BTSegDiff network: a JAX vs PyTorch speed check.

The twins have the Flax models' layers, shapes and parameter counts (`diffseg_jax/models/`), in PyTorch's
NCHW layout; `load_flax_params` copies Flax parameters in, so tests/test_torch_twins.py can check that both
compute the same function (their losses and train step: bench/torch_twin_training.py). Shape rules
(GroupNorm groups, level widths) are imported from the project, so the twins follow its config fields.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import ml_collections
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffseg_jax.methods.base import unet_kwargs
from diffseg_jax.modalities import MODALITIES
from diffseg_jax.models.dual_encoder import DualEncoderNet
from diffseg_jax.models.layers import groups_for
from diffseg_jax.models.unet import UNet, level_features

EPS = 1e-6  # Flax GroupNorm / LayerNorm epsilon (PyTorch's default is 1e-5)
Batch = dict[str, torch.Tensor]
LossFn = Callable[[Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


# ----------------------------------------------------------------------------------------------- layers


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups_for(channels), channels, eps=EPS)


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """Flax's 'SAME' 3x3 convolution at stride 1: one pixel of padding on every side."""
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


def same_pads(size: int, kernel: int = 3, stride: int = 2) -> tuple[int, int]:
    """XLA's 'SAME' padding (before, after) of one axis; at stride 2 on an even side it pads only after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[B] -> [B, dim]: cosines then sines, as `layers.timestep_embedding`."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class FlaxTree(nn.Module):
    """A module whose `flax_children` names its submodules as Flax names them (for `load_flax_params`)."""

    def flax_children(self) -> dict[str, nn.Module]:
        raise NotImplementedError


class TimeEmbedding(FlaxTree):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.dense0 = nn.Linear(dim, 4 * dim)
        self.dense1 = nn.Linear(4 * dim, 4 * dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.dense1(F.silu(self.dense0(timestep_embedding(t, self.dim))))

    def flax_children(self) -> dict[str, nn.Module]:
        return {"Dense_0": self.dense0, "Dense_1": self.dense1}


class ResBlock(FlaxTree):
    """GroupNorm-SiLU-Conv twice with a residual, plus the projected time embedding when `temb_dim`."""

    def __init__(self, in_channels: int, features: int, temb_dim: int | None, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = conv3x3(in_channels, features)
        self.temb = nn.Linear(temb_dim, features) if temb_dim else None
        self.norm2 = group_norm(features)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(features, features)
        nn.init.zeros_(self.conv2.weight)  # as the Flax block: starts as the identity
        self.skip = nn.Conv2d(in_channels, features, 1) if in_channels != features else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.temb is not None:
            h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.skip is None else self.skip(x)) + h

    def flax_children(self) -> dict[str, nn.Module]:
        names = {"GroupNorm_0": self.norm1, "Conv_0": self.conv1, "Dense_0": self.temb}
        names |= {"GroupNorm_1": self.norm2, "Conv_1": self.conv2, "Conv_2": self.skip}
        return {k: v for k, v in names.items() if v is not None}


class HeadLayerNorm(nn.Module):
    """LayerNorm over each head's features with one scale shared by the heads, no bias (Flax's QK norm)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, None, EPS)


class MultiHeadAttention(FlaxTree):
    """Flax's MultiHeadDotProductAttention with `normalize_qk`: Q, K, V projections, QK layer norms, out."""

    def __init__(self, channels: int, num_heads: int = 4):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, channels // num_heads
        self.query, self.key, self.value = (nn.Linear(channels, channels) for _ in range(3))
        self.query_ln, self.key_ln = HeadLayerNorm(self.head_dim), HeadLayerNorm(self.head_dim)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.num_heads, self.head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.query_ln(self._heads(self.query(x))).transpose(1, 2)
        k = self.key_ln(self._heads(self.key(x))).transpose(1, 2)
        v = self._heads(self.value(x)).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), as Flax
        return self.out(y.transpose(1, 2).reshape(x.shape))

    def flax_children(self) -> dict[str, nn.Module]:
        names = ("query", "key", "value", "query_ln", "key_ln", "out")
        return {name: getattr(self, name) for name in names}


class SelfAttention(FlaxTree):
    """Residual multi-head self-attention over the H*W positions."""

    def __init__(self, channels: int, num_heads: int = 4):
        super().__init__()
        self.norm = group_norm(channels)
        self.attention = MultiHeadAttention(channels, num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x).reshape(b, c, h * w).transpose(1, 2)
        y = self.attention(y).transpose(1, 2).reshape(b, c, h, w)
        return x + y

    def flax_children(self) -> dict[str, nn.Module]:
        return {"GroupNorm_0": self.norm, "MultiHeadDotProductAttention_0": self.attention}


class Downsample(FlaxTree):
    """Stride-2 3x3 convolution padded as XLA's 'SAME' (after only, on even sides)."""

    def __init__(self, in_channels: int, features: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, features, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_pads(x.shape[2])
        left, right = same_pads(x.shape[3])
        return self.conv(F.pad(x, (left, right, top, bottom)))

    def flax_children(self) -> dict[str, nn.Module]:
        return {"Conv_0": self.conv}


class Upsample(FlaxTree):
    """Nearest-neighbour x2 (`jnp.repeat` on both axes), then a 3x3 convolution."""

    def __init__(self, in_channels: int, features: int):
        super().__init__()
        self.conv = conv3x3(in_channels, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))

    def flax_children(self) -> dict[str, nn.Module]:
        return {"Conv_0": self.conv}


class FeatureLayerNorm(nn.Module):
    """Layer norm over a whole feature map (C, H, W), per-channel scale and bias (`feature_layer_norm`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.layer_norm(x, x.shape[1:], eps=EPS)
        return h * self.weight[:, None, None] + self.bias[:, None, None]


# ------------------------------------------------------------------------------------------ U-Net pieces


class EncoderLevel(FlaxTree):
    """ResBlocks (each followed by attention at attention levels) at one resolution."""

    def __init__(
        self, features: int, num_res_blocks: int, attention: bool, temb_dim: int | None, dropout: float
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock(features, features, temb_dim, dropout) for _ in range(num_res_blocks)
        )
        self.attentions = nn.ModuleList(
            SelfAttention(features) for _ in range(num_res_blocks if attention else 0)
        )

    def forward(self, h: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            h = block(h, temb)
            if self.attentions:
                h = self.attentions[i](h)
        return h

    def flax_children(self) -> dict[str, nn.Module]:
        return _numbered("ResBlock", self.blocks) | _numbered("SelfAttention", self.attentions)


class Bottleneck(FlaxTree):
    def __init__(self, features: int, temb_dim: int | None, dropout: float):
        super().__init__()
        self.block0 = ResBlock(features, features, temb_dim, dropout)
        self.attention = SelfAttention(features)
        self.block1 = ResBlock(features, features, temb_dim, dropout)

    def forward(self, h: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        return self.block1(self.attention(self.block0(h, temb)), temb)

    def flax_children(self) -> dict[str, nn.Module]:
        return {"ResBlock_0": self.block0, "SelfAttention_0": self.attention, "ResBlock_1": self.block1}


class Decoder(FlaxTree):
    """Coarse-to-fine: each level's skip concatenated, ResBlocks (+attention), upsample; then the head."""

    def __init__(
        self,
        feats: tuple[int, ...],
        attention_levels: tuple[int, ...],
        num_res_blocks: int,
        out_channels: int,
        temb_dim: int | None,
        dropout: float,
    ):
        super().__init__()
        self.blocks, self.attentions, self.upsamples = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        self.plan: list[tuple[int, list[int], list[int]]] = []  # (level, its block and attention indices)
        channels = feats[-1]
        for level in reversed(range(len(feats))):
            blocks, attentions = [], []
            for i in range(num_res_blocks):
                in_channels = channels + feats[level] if i == 0 else feats[level]
                blocks.append(len(self.blocks))
                self.blocks.append(ResBlock(in_channels, feats[level], temb_dim, dropout))
                if level in attention_levels:
                    attentions.append(len(self.attentions))
                    self.attentions.append(SelfAttention(feats[level]))
            self.plan.append((level, blocks, attentions))
            channels = feats[level]
            if level > 0:
                self.upsamples.append(Upsample(channels, feats[level - 1]))
                channels = feats[level - 1]
        self.norm = group_norm(channels)
        self.head = conv3x3(channels, out_channels)

    def forward(self, h: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor | None) -> torch.Tensor:
        for step, (level, blocks, attentions) in enumerate(self.plan):
            h = torch.cat([h, skips[level]], dim=1)
            for i, b in enumerate(blocks):
                h = self.blocks[b](h, temb)
                if attentions:
                    h = self.attentions[attentions[i]](h)
            if level > 0:
                h = self.upsamples[step](h)
        return self.head(F.silu(self.norm(h)))

    def flax_children(self) -> dict[str, nn.Module]:
        names = _numbered("ResBlock", self.blocks) | _numbered("SelfAttention", self.attentions)
        return names | _numbered("Upsample", self.upsamples) | {"GroupNorm_0": self.norm, "Conv_0": self.head}


def _numbered(kind: str, modules: nn.ModuleList) -> dict[str, nn.Module]:
    return {f"{kind}_{i}": m for i, m in enumerate(modules)}


class TorchUNet(FlaxTree):
    """`models.unet.UNet`: the deterministic baseline. [B, 4, H, W] sequences -> [B, out, H, W] logits."""

    def __init__(
        self,
        out_channels: int,
        base_features: int = 32,
        multipliers: tuple[int, ...] = (1, 2, 4),
        num_res_blocks: int = 1,
        attention_levels: tuple[int, ...] = (2,),
        dropout: float = 0.0,
        in_channels: int = len(MODALITIES),
    ):
        super().__init__()
        feats = level_features(base_features, multipliers)
        self.conv_in = conv3x3(in_channels, feats[0])
        self.levels = nn.ModuleList(
            EncoderLevel(f, num_res_blocks, i in attention_levels, None, dropout) for i, f in enumerate(feats)
        )
        self.downs = nn.ModuleList(Downsample(feats[i], feats[i + 1]) for i in range(len(feats) - 1))
        self.bottleneck = Bottleneck(feats[-1], None, dropout)
        self.decoder = Decoder(feats, tuple(attention_levels), num_res_blocks, out_channels, None, dropout)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(image)
        skips = []
        for level, encoder_level in enumerate(self.levels):
            h = encoder_level(h, None)
            skips.append(h)
            if level < len(self.downs):
                h = self.downs[level](h)
        return self.decoder(self.bottleneck(h, None), skips, None)

    def flax_children(self) -> dict[str, nn.Module]:
        names = {"Conv_0": self.conv_in} | _numbered("EncoderLevel", self.levels)
        return (
            names
            | _numbered("Downsample", self.downs)
            | {"Bottleneck_0": self.bottleneck, "Decoder_0": self.decoder}
        )


# ------------------------------------------------------------------------------------ BTSegDiff pieces


class SpectralWeight(nn.Module):
    """The learnable complex map W, stored as real and imaginary parts of shape [C, H, W//2+1]."""

    def __init__(self, channels: int, height: int, width: int, std: float = 0.02):
        super().__init__()
        shape = (channels, height, width // 2 + 1)
        self.real = nn.Parameter(torch.randn(shape) * std)
        self.imag = nn.Parameter(torch.randn(shape) * std)

    def forward(self) -> torch.Tensor:
        return torch.complex(self.real, self.imag)


class FourierFusion(FlaxTree):
    """m~ = irfft2(sigma(rfft2(m_x) W + rfft2(m_I) W)), sigma the centred split sigmoid (`fourier.py`)."""

    def __init__(self, channels: int, height: int, width: int):
        super().__init__()
        self.weight = SpectralWeight(channels, height, width)

    def forward(self, m_x: torch.Tensor, m_image: torch.Tensor) -> torch.Tensor:
        w = self.weight()
        z = (
            torch.fft.rfft2(m_x.float(), norm="ortho") * w
            + torch.fft.rfft2(m_image.float(), norm="ortho") * w
        )
        gated = torch.complex(torch.sigmoid(z.real) - 0.5, torch.sigmoid(z.imag) - 0.5)
        return torch.fft.irfft2(gated, s=m_x.shape[-2:], norm="ortho").to(m_x.dtype)

    def flax_children(self) -> dict[str, nn.Module]:
        return {"SpectralWeight_0": self.weight}


class BTSegDiffGuidance(FlaxTree):
    """A = LN(m_x) + LN(m_I) plus, with `fourier`, the Fourier fusion."""

    def __init__(self, channels: int, height: int, width: int, fourier: bool = True):
        super().__init__()
        self.norm_x, self.norm_image = FeatureLayerNorm(channels), FeatureLayerNorm(channels)
        self.fourier = FourierFusion(channels, height, width) if fourier else None

    def forward(self, m_x: torch.Tensor, m_image: torch.Tensor) -> torch.Tensor:
        h = self.norm_x(m_x) + self.norm_image(m_image)
        return h if self.fourier is None else h + self.fourier(m_x, m_image)

    def flax_children(self) -> dict[str, nn.Module]:
        names = {"LayerNorm_0": self.norm_x, "LayerNorm_1": self.norm_image}
        return names | ({"FourierFusion_0": self.fourier} if self.fourier is not None else {})


class TorchDualEncoderNet(FlaxTree):
    """`models.dual_encoder.DualEncoderNet` with fusion 'btsegdiff' at every level (the default)."""

    def __init__(
        self,
        out_channels: int,
        image_size: int,
        base_features: int = 32,
        multipliers: tuple[int, ...] = (1, 2, 4),
        num_res_blocks: int = 1,
        attention_levels: tuple[int, ...] = (2,),
        dropout: float = 0.0,
        fourier: bool = True,
        in_channels: int = len(MODALITIES),
    ):
        super().__init__()
        feats = level_features(base_features, multipliers)
        temb_dim = 4 * feats[0]
        self.time_embed = TimeEmbedding(feats[0])
        self.cond_in = conv3x3(in_channels, feats[0])
        self.noisy_in = conv3x3(out_channels, feats[0])

        def levels(temb: int | None) -> nn.ModuleList:
            return nn.ModuleList(
                EncoderLevel(f, num_res_blocks, i in attention_levels, temb, dropout)
                for i, f in enumerate(feats)
            )

        def downs() -> nn.ModuleList:
            return nn.ModuleList(Downsample(feats[i], feats[i + 1]) for i in range(len(feats) - 1))

        self.cond_levels, self.noisy_levels = levels(None), levels(temb_dim)
        self.cond_down, self.noisy_down = downs(), downs()
        sides = [image_size // 2**i for i in range(len(feats))]
        self.fusions = nn.ModuleList(
            BTSegDiffGuidance(f, s, s, fourier) for f, s in zip(feats, sides, strict=True)
        )
        self.bottleneck = Bottleneck(feats[-1], temb_dim, dropout)
        self.decoder = Decoder(
            feats, tuple(attention_levels), num_res_blocks, out_channels, temb_dim, dropout
        )

    def encode_condition(self, image: torch.Tensor) -> list[torch.Tensor]:
        """EC: the per-level sequence features, computed once per image at sampling."""
        h = self.cond_in(image)
        features = []
        for level, block in enumerate(self.cond_levels):
            h = block(h, None)
            features.append(h)
            if level < len(self.cond_down):
                h = self.cond_down[level](h)
        return features

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: list[torch.Tensor]) -> torch.Tensor:
        """EU + fusion + decoder: the output for the noisy mask x_t at steps t."""
        temb = self.time_embed(t)
        h = self.noisy_in(x_t)
        skips = []
        for level, block in enumerate(self.noisy_levels):
            h = self.fusions[level](block(h, temb), cond[level])
            skips.append(h)
            if level < len(self.noisy_down):
                h = self.noisy_down[level](h)
        return self.decoder(self.bottleneck(h, temb), skips, temb)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.denoise(x_t, t, self.encode_condition(image))

    def flax_children(self) -> dict[str, nn.Module]:
        names: dict[str, nn.Module] = {"time_embed": self.time_embed, "cond_in": self.cond_in}
        names |= {"noisy_in": self.noisy_in, "bottleneck": self.bottleneck, "decoder": self.decoder}
        for prefix in ("cond_levels", "noisy_levels", "cond_down", "noisy_down", "fusions"):
            names |= {f"{prefix}_{i}": m for i, m in enumerate(getattr(self, prefix))}
        return names


# --------------------------------------------------------------------------------- building, weights


def parameter_count(module: nn.Module) -> int:
    """Trainable values, counted as `sum(x.size for x in jax.tree.leaves(params))` counts Flax's."""
    return sum(p.numel() for p in module.parameters())


def build_twin(config: ml_collections.ConfigDict) -> nn.Module:
    """The twin of `config.method`'s network ('unet_baseline' or 'btsegdiff'), from the same config fields."""
    kwargs = unet_kwargs(config)
    if kwargs.pop("remat"):
        raise ValueError("model.remat has no twin here; benchmark with remat off")
    if config.method == "unet_baseline":
        return TorchUNet(**kwargs)
    if config.method == "btsegdiff":
        fourier = config.model.fourier_fusion
        return TorchDualEncoderNet(image_size=config.data.image_size, fourier=fourier, **kwargs)
    raise ValueError(f"no PyTorch twin for method {config.method!r}; expected unet_baseline or btsegdiff")


def flax_network(config: ml_collections.ConfigDict) -> UNet | DualEncoderNet:
    """The Flax network `config.method` builds (`methods/unet_baseline.py`, `methods/btsegdiff.py`)."""
    if config.method == "unet_baseline":
        return UNet(**unet_kwargs(config))
    if config.method == "btsegdiff":
        return DualEncoderNet(**unet_kwargs(config), fusion="btsegdiff", fourier=config.model.fourier_fusion)
    raise ValueError(f"no twin for method {config.method!r}; expected unet_baseline or btsegdiff")


def _leaf_values(module: nn.Module, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One Flax layer's arrays in the twin's layout: conv HWIO -> OIHW, dense [in, ...] -> [out, in]."""
    if isinstance(module, nn.Conv2d):
        return {"weight": params["kernel"].transpose(3, 2, 0, 1), "bias": params["bias"]}
    if isinstance(module, nn.Linear):
        kernel = params["kernel"].reshape(module.in_features, module.out_features)
        return {"weight": kernel.T, "bias": params["bias"].reshape(-1)}
    if isinstance(module, nn.GroupNorm | FeatureLayerNorm):
        return {"weight": params["scale"], "bias": params["bias"]}
    if isinstance(module, HeadLayerNorm):
        return {"weight": params["scale"]}
    if isinstance(module, SpectralWeight):  # [H, W//2+1, C] -> [C, H, W//2+1]
        return {part: params[part].transpose(2, 0, 1) for part in ("real", "imag")}
    raise TypeError(f"no Flax layout for {type(module).__name__}")


def load_flax_params(module: nn.Module, flax_params: Mapping) -> None:
    """Copies a Flax parameter tree into the twin in place; every value on both sides must be used once."""
    loaded = _load(module, flax_params, "")
    if loaded != parameter_count(module):
        raise ValueError(f"loaded {loaded} values into a twin with {parameter_count(module)} parameters")


def _load(module: nn.Module, tree: Mapping, path: str) -> int:
    if not isinstance(module, FlaxTree):
        values = _leaf_values(module, {k: np.asarray(v) for k, v in tree.items()})
        with torch.no_grad():
            for name, value in values.items():
                target = getattr(module, name)
                if tuple(target.shape) != value.shape:
                    raise ValueError(f"{path}/{name}: twin {tuple(target.shape)} vs Flax {value.shape}")
                target.copy_(torch.from_numpy(np.array(value, np.float32)))
        return sum(v.size for v in values.values())
    children = module.flax_children()
    if set(children) != set(tree):
        raise ValueError(f"{path or '/'}: twin has {sorted(children)}, Flax has {sorted(tree)}")
    return sum(_load(children[name], tree[name], f"{path}/{name}") for name in tree)
