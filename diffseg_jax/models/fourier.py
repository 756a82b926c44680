"""Fourier-domain feature operators: the learnable spectral weight, FF-Parser and BTSegDiff's fusion.

Weights are created from the feature map's own shape at `init`, so any image size that the network's
downsampling divides works (the public MedSegDiff hard-codes 256-px shapes).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

_AXES = (1, 2)  # H, W of [B, H, W, C]


def spectrum(x: jnp.ndarray) -> jnp.ndarray:
    """Orthonormal real 2D FFT over H, W: [B, H, W, C] -> [B, H, W//2+1, C] complex64 (any input dtype)."""
    return jnp.fft.rfft2(x.astype(jnp.float32), axes=_AXES, norm="ortho")


def inverse_spectrum(z: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
    return jnp.fft.irfft2(z, s=(height, width), axes=_AXES, norm="ortho")


class SpectralWeight(nn.Module):
    """A learnable complex map W of shape (H, W//2+1, C), real and imaginary parts ~ N(0, std)."""

    std: float = 0.02

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        _, h, w, c = x.shape
        init = nn.initializers.normal(self.std)
        shape = (h, w // 2 + 1, c)
        real = self.param("real", init, shape)
        imag = self.param("imag", init, shape)
        return jax.lax.complex(real.astype(jnp.float32), imag.astype(jnp.float32))


class FFParser(nn.Module):
    """MedSegDiff's FF-Parser: m' = irfft2(rfft2(m) * A), A learnable."""

    std: float = 0.02

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        weight = SpectralWeight(self.std)(x)
        return inverse_spectrum(spectrum(x) * weight, x.shape[1], x.shape[2]).astype(x.dtype)


def split_sigmoid(z: jnp.ndarray) -> jnp.ndarray:
    """sigma applied to the real and imaginary parts, centred: sigma(z) - sigma(0) per part.

    The centring removes the constant (0.5 + 0.5i) spectrum, whose inverse is a fixed spike at the
    origin pixel that carries no information; the gating nonlinearity is otherwise the paper's.
    """
    return jax.lax.complex(jax.nn.sigmoid(z.real) - 0.5, jax.nn.sigmoid(z.imag) - 0.5)


class FourierFusion(nn.Module):
    """BTSegDiff's Fourier-domain feature fusion.

    M = sigmoid(F[m_xt] * W + F[m_I] * W) with one learnable W shared by both terms, and
    m~ = F^-1[M]; see `split_sigmoid` for how sigmoid acts on complex values.
    """

    std: float = 0.02

    @nn.compact
    def __call__(self, m_xt: jnp.ndarray, m_image: jnp.ndarray) -> jnp.ndarray:
        weight = SpectralWeight(self.std)(m_xt)
        gated = split_sigmoid(spectrum(m_xt) * weight + spectrum(m_image) * weight)
        return inverse_spectrum(gated, m_xt.shape[1], m_xt.shape[2]).astype(m_xt.dtype)
