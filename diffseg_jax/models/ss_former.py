"""MedSegDiff-V2's SS-Former: semantic and noisy embeddings attend to each other in spectrum space.

Each block takes rfft2 of both feature maps, treats every frequency (real and imaginary parts) as a token,
runs cross-attention, filters the result with the NBP filter (a learnable spectrum that adapts to the
diffusion step), and returns to the spatial domain with irfft2. The spectrum sees the whole map at once,
so the noisy embedding is conditioned globally at the bottleneck.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from diffseg_jax.models.fourier import inverse_spectrum, spectrum


class NBPFilter(nn.Module):
    """Neural band-pass filter: gain(t) = 2 sigmoid(A + sum_k g_k(t) B_k), real, per frequency and channel.

    A and the basis spectra B_k are learned; g(t) comes from the step embedding, so which band passes can
    change with t (the noise level). Starts as the all-pass filter (gain 1).
    """

    rank: int = 4

    @nn.compact
    def __call__(self, z: jnp.ndarray, temb: jnp.ndarray) -> jnp.ndarray:
        _, h, wf, c = z.shape
        base = self.param("base", nn.initializers.zeros, (h, wf, c))
        basis = self.param("basis", nn.initializers.normal(0.02), (self.rank, h, wf, c))
        coeff = nn.Dense(self.rank)(nn.silu(temb))  # [B, rank]
        logits = base[None] + jnp.einsum("br,rhwc->bhwc", coeff, basis)
        return z * (2.0 * nn.sigmoid(logits))


def _tokens(z: jnp.ndarray) -> jnp.ndarray:
    b, h, wf, c = z.shape
    return jnp.concatenate([z.real, z.imag], axis=-1).reshape(b, h * wf, 2 * c)


class SpectralCrossAttention(nn.Module):
    """query + Dense(irfft2(NBP(attention(F[query] -> F[context])))): one direction of an SS-Former block."""

    num_heads: int = 4
    nbp_filter: bool = True

    @nn.compact
    def __call__(self, query: jnp.ndarray, context: jnp.ndarray, temb: jnp.ndarray) -> jnp.ndarray:
        b, h, w, c = query.shape
        zq, zc = spectrum(query), spectrum(context)
        q = nn.LayerNorm()(_tokens(zq))
        kv = nn.LayerNorm()(_tokens(zc))
        out = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, out_features=2 * c)(q, kv)
        out = out.reshape(b, h, zq.shape[2], 2 * c)
        z = out[..., :c] + 1j * out[..., c:]
        if self.nbp_filter:
            z = NBPFilter()(z, temb)
        y = inverse_spectrum(z, h, w)
        return query + nn.Dense(c, kernel_init=nn.initializers.zeros)(y).astype(query.dtype)


class SSFormer(nn.Module):
    """Blocks of: semantic attends to noise, then noise attends to the updated semantics; returns noise."""

    num_blocks: int = 1
    num_heads: int = 4
    nbp_filter: bool = True

    @nn.compact
    def __call__(self, noisy: jnp.ndarray, semantic: jnp.ndarray, temb: jnp.ndarray) -> jnp.ndarray:
        for _ in range(self.num_blocks):
            semantic = SpectralCrossAttention(self.num_heads, self.nbp_filter)(semantic, noisy, temb)
            noisy = SpectralCrossAttention(self.num_heads, self.nbp_filter)(noisy, semantic, temb)
        return noisy
