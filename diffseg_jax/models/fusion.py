"""Per-level fusion of the noisy-mask features m_x with the condition (sequence) features m_I.

Each fusion maps (m_x, m_I) -> the feature that continues down the denoiser's encoder and is its skip.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from diffseg_jax.models.fourier import FFParser, FourierFusion
from diffseg_jax.models.layers import feature_layer_norm


class BTSegDiffGuidance(nn.Module):
    """BTSegDiff: A = LN(m_x) + LN(m_I) (dynamic conditional guidance) plus the Fourier fusion m~."""

    fourier: bool = True

    @nn.compact
    def __call__(self, m_x: jnp.ndarray, m_image: jnp.ndarray) -> jnp.ndarray:
        h = feature_layer_norm()(m_x) + feature_layer_norm()(m_image)
        if self.fourier:
            h = h + FourierFusion()(m_x, m_image)
        return h


class DynamicConditionalEncoding(nn.Module):
    """MedSegDiff-V1: m' = FF(m_x) continues, plus the affine map LN(m_I) * LN(m') multiplied into m_I.

    The FF-Parser filters the noisy features before they meet the condition (the paper: it damps their
    high-frequency noise), and the filtered features are the ones that go on down the encoder; the layer
    norms make the affine map independent of the parser's small init. The public code defines this
    affine-map fusion but never calls it; here it is the fusion.
    """

    ff_parser: bool = True

    @nn.compact
    def __call__(self, m_x: jnp.ndarray, m_image: jnp.ndarray) -> jnp.ndarray:
        parsed = FFParser()(m_x) if self.ff_parser else m_x
        affine = feature_layer_norm()(m_image) * feature_layer_norm()(parsed)
        return parsed + affine * m_image


FUSIONS = {"btsegdiff": BTSegDiffGuidance, "medsegdiff_v1": DynamicConditionalEncoding}
