"""Networks of the anomaly detectors: a reconstruction U-Net and UMA-DDPM's modality-aware module (MAM).

Every detector reconstructs a healthy version of its input; they differ in what they corrupt and how
they train. One U-Net serves them all: time-conditioned for the diffusion models, not for the DAE, and
with the MAM in its bottleneck for UMA-DDPM.

MAM (UMA-DDPM): modality-aware self-prompting with a weight vector, one weight per prompt:
A_i = cos(pool(h) ⊙ Q, K_i) with learnable Q and prompt blocks K_i, V_p = Σ_i A_i V_i (a vector, added at
every pixel); two residual blocks give h_res; h_p = h_res + V_p; then a Mamba block over the bottleneck's
pixels as a sequence (pre-norm, residual). The prompts let one network tell T1 from T2 in unified mode
without being told which it sees.

With `amplitude_head` the network also outputs UMA-DDPM's amplitude spectrum A_rec: the decoder emits twice
the image's channels, the second half through a softplus (amplitudes are >= 0), laid out on the image's
own H x W frequency grid (unshifted `fft2` order).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from diffseg_jax.models.layers import TimeEmbedding, res_block_type
from diffseg_jax.models.ssm import MambaBlock
from diffseg_jax.models.unet import Bottleneck, Decoder, UNetShape, check_divisible, level_features


class ModalityAwarePrompting(nn.Module):
    """MASP: the weight vector A (cosine similarity of the pooled, Q-modulated features with each prompt
    block K_i) mixes the prompt components V_i into one prompt per image, broadcast over its pixels."""

    num_prompts: int = 4

    @nn.compact
    def __call__(self, h: jnp.ndarray) -> jnp.ndarray:
        channels = h.shape[-1]
        q = self.param("Q", nn.initializers.ones, (channels,))
        k = self.param("K", nn.initializers.normal(1.0), (self.num_prompts, channels))
        v = self.param("V", nn.initializers.normal(0.02), (self.num_prompts, channels))
        query = jnp.mean(h, axis=(1, 2)) * q  # [B, C]
        query = query / (jnp.linalg.norm(query, axis=-1, keepdims=True) + 1e-6)
        keys = k / (jnp.linalg.norm(k, axis=-1, keepdims=True) + 1e-6)
        weights = query @ keys.T  # [B, N]: A_i in [-1, 1], one per prompt
        return (weights @ v)[:, None, None, :]


class ModalityAwareModule(nn.Module):
    """MASP + two residual blocks + a Mamba block over the flattened feature map."""

    num_prompts: int = 4
    d_state: int = 16
    dropout: float = 0.0

    @nn.compact
    def __call__(self, h: jnp.ndarray, temb: jnp.ndarray | None, train: bool) -> jnp.ndarray:
        b, hh, ww, c = h.shape
        prompt = ModalityAwarePrompting(self.num_prompts)(h)
        block = res_block_type(False)
        h_res = block(c, self.dropout)(block(c, self.dropout)(h, temb, train), temb, train)
        h_p = (h_res + prompt).reshape(b, hh * ww, c)
        h_p = h_p + MambaBlock(c, self.d_state)(nn.LayerNorm()(h_p))
        return h_p.reshape(b, hh, ww, c)


class ReconstructionUNet(UNetShape):
    """U-Net from a corrupted image to its reconstruction (out_channels = the image's channels).

    `t` given -> time-conditioned ResBlocks (the diffusion detectors); `modality_aware` puts the MAM
    after the usual bottleneck; `amplitude_head` appends A_rec's channels to the output.
    """

    time_conditioned: bool = True
    modality_aware: bool = False
    amplitude_head: bool = False
    num_prompts: int = 4
    mamba_state: int = 16

    @nn.compact
    def __call__(self, x: jnp.ndarray, t: jnp.ndarray | None = None, train: bool = False) -> jnp.ndarray:
        check_divisible(x.shape[1], len(self.multipliers))
        if self.time_conditioned != (t is not None):
            raise ValueError("pass t exactly when the network is time-conditioned")
        feats = level_features(self.base_features, self.multipliers)
        temb = TimeEmbedding(self.base_features)(t) if t is not None else None
        h, skips = self.encode(nn.Conv(feats[0], (3, 3))(x), feats, temb, train)
        h = Bottleneck(feats[-1], self.dropout, self.remat)(h, temb, train)
        if self.modality_aware:
            h = ModalityAwareModule(self.num_prompts, self.mamba_state, self.dropout)(h, temb, train)
        attn = tuple(self.attention_levels)
        outputs = self.out_channels * (2 if self.amplitude_head else 1)
        out = Decoder(feats, attn, self.num_res_blocks, outputs, self.dropout, self.remat)(
            h, skips, temb, train
        )
        if not self.amplitude_head:
            return out
        reconstruction, amplitude = jnp.split(out, 2, axis=-1)
        return jnp.concatenate([reconstruction, nn.softplus(amplitude)], axis=-1)
