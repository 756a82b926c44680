"""Fractal 3D simplex noise, sliced to 2D images: AnoDDPM's replacement for Gaussian noise.

White noise is destroyed by a denoiser at every scale equally; a lesion is larger than a pixel, so
AnoDDPM corrupts with low-frequency-heavy simplex noise instead, which the network learns to remove only
when it looks healthy underneath. Each image channel gets the 2D slice (random z) of its own 3D field.

Simplex noise (Perlin 2001, as explained by Gustavson 2005), written here from the math:

1. Skew the input point by F = 1/3 along (1,1,1) so that the simplicial lattice becomes the integer
   lattice; the floor gives the cube, the ordering of the fractional coordinates picks one of its six
   tetrahedra (the corners are reached by adding unit vectors in decreasing coordinate order).
2. Unskew (G = 1/6) to get the point's displacement from each of the four corners.
3. Each corner hashes (through a random permutation of 0..255) to one of the 12 cube-edge gradients and
   contributes max(0, r2 - |d|^2)^4 * <g, d>, a radially falling-off wavelet. r2 = 0.5 keeps each
   wavelet inside the simplices around its corner, so the field is continuous (0.6, often used, is not).

Randomness: a `jax.random` key draws the permutation table of each field and a random lattice offset per
octave (its z component is the random slice). Same key, same noise; no global state.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

_SKEW = 1.0 / 3.0
_UNSKEW = 1.0 / 6.0
_RADIUS2 = 0.5
_TABLE = 256  # permutation table size; the noise repeats every 256 lattice units
_GRADIENTS = jnp.array(
    [
        [1, 1, 0],
        [-1, 1, 0],
        [1, -1, 0],
        [-1, -1, 0],
        [1, 0, 1],
        [-1, 0, 1],
        [1, 0, -1],
        [-1, 0, -1],
        [0, 1, 1],
        [0, -1, 1],
        [0, 1, -1],
        [0, -1, -1],
    ],
    dtype=jnp.float32,
)
# max_r (r2 - r^2)^4 r is reached at r^2 = r2 / 9; with |<g, d>| <= sqrt(2) r and 4 corners, dividing by
# 4 sqrt(2) times that peak bounds the single-octave noise by 1 in absolute value.
_PEAK = (_RADIUS2 - _RADIUS2 / 9.0) ** 4 * math.sqrt(_RADIUS2 / 9.0)
_SCALE = 1.0 / (4.0 * math.sqrt(2.0) * _PEAK)
# Standard deviation of `simplex3d` at a uniformly random point (measured over 4e6 points and 64 tables;
# it varies by 0.2% between tables); dividing by it gives unit variance. The bound above is loose: observed
# values stay within about +-0.25.
RAW_STD = 0.0982


def simplex3d(perm: jnp.ndarray, x: jnp.ndarray, y: jnp.ndarray, z: jnp.ndarray) -> jnp.ndarray:
    """Single-octave simplex noise at points (x, y, z) (any equal shapes), values within [-1, 1].

    `perm` is a permutation of 0..255 (int32) that defines this noise field.
    """
    s = (x + y + z) * _SKEW
    i, j, k = (jnp.floor(c + s).astype(jnp.int32) for c in (x, y, z))
    t = (i + j + k).astype(x.dtype) * _UNSKEW
    d0 = (x - (i - t), y - (j - t), z - (k - t))
    # Rank of each fractional coordinate (2 = largest); ties go to x, then y, so ranks are a permutation.
    rx = (d0[0] >= d0[1]).astype(jnp.int32) + (d0[0] >= d0[2])
    ry = (d0[1] > d0[0]).astype(jnp.int32) + (d0[1] >= d0[2])
    rz = (d0[2] > d0[0]).astype(jnp.int32) + (d0[2] > d0[1])
    ranks = (rx, ry, rz)
    base = (i, j, k)
    total = jnp.zeros_like(x)
    for corner in range(4):  # corner n has n unit steps: none, the largest axis, two largest, all three
        step = [(r >= 3 - corner).astype(jnp.int32) for r in ranks]
        d = [d0[a] - step[a] + corner * _UNSKEW for a in range(3)]
        ii, jj, kk = ((base[a] + step[a]) & (_TABLE - 1) for a in range(3))
        g = _GRADIENTS[perm[(ii + perm[(jj + perm[kk]) & (_TABLE - 1)]) & (_TABLE - 1)] % 12]
        falloff = jnp.maximum(_RADIUS2 - d[0] ** 2 - d[1] ** 2 - d[2] ** 2, 0.0)
        total = total + falloff**4 * (g[..., 0] * d[0] + g[..., 1] * d[1] + g[..., 2] * d[2])
    return total * _SCALE


def octave_amplitudes(octaves: int, persistence: float) -> list[float]:
    """Amplitude of each octave: persistence**o, octave o having twice the spatial frequency of o-1."""
    if octaves < 1:
        raise ValueError(f"octaves must be >= 1, got {octaves}")
    return [persistence**o for o in range(octaves)]


def simplex_slice(
    key: jax.Array,
    height: int,
    width: int,
    octaves: int = 6,
    persistence: float = 0.8,
    frequency: float = 64.0,
) -> jnp.ndarray:
    """One [height, width] slice of a fractal 3D simplex field, normalised to zero mean, unit variance.

    `frequency` follows AnoDDPM's naming but is a length: the first octave has one lattice unit per
    `frequency` pixels; each further octave halves it and multiplies the amplitude by `persistence`.
    The normalisation is a fixed constant (not the slice's own statistics), so the noise stays one
    stationary distribution, as a diffusion forward process assumes.
    """
    if frequency <= 0:
        raise ValueError(f"frequency must be positive, got {frequency}")
    amps = octave_amplitudes(octaves, persistence)
    k_perm, k_off = jax.random.split(key)
    perm = jax.random.permutation(k_perm, _TABLE).astype(jnp.int32)
    offsets = jax.random.uniform(k_off, (octaves, 3), minval=0.0, maxval=float(_TABLE))
    # All octaves at once, [octaves, H, W]: one gather pattern to compile however many octaves there are.
    scales = jnp.asarray([2.0**o / frequency for o in range(octaves)], jnp.float32)[:, None, None]
    rows = jnp.arange(height, dtype=jnp.float32)[None, :, None]
    cols = jnp.arange(width, dtype=jnp.float32)[None, None, :]
    x, y, z = (
        jnp.broadcast_to(v, (octaves, height, width))
        for v in (
            cols * scales + offsets[:, 0, None, None],
            rows * scales + offsets[:, 1, None, None],
            offsets[:, 2, None, None],
        )
    )
    total = jnp.tensordot(jnp.asarray(amps, jnp.float32), simplex3d(perm, x, y, z), axes=1)
    return total / (RAW_STD * math.sqrt(sum(a * a for a in amps)))


@functools.partial(jax.jit, static_argnames=("shape", "octaves", "persistence", "frequency", "dtype"))
def simplex_noise(
    key: jax.Array,
    shape: tuple[int, int, int, int],
    octaves: int = 6,
    persistence: float = 0.8,
    frequency: float = 64.0,
    dtype: jnp.dtype = jnp.float32,
) -> jnp.ndarray:
    """Simplex noise shaped [B, H, W, C] like a batch of images: an independent field per (b, c).

    Used in place of N(0, I) in q_sample / the training target, as AnoDDPM does. Compiled per shape and
    setting (all but the key are static), since eager dispatch of the per-corner gathers is slow.
    """
    b, h, w, c = shape
    keys = jax.random.split(key, b * c)
    fields = jax.vmap(lambda k: simplex_slice(k, h, w, octaves, persistence, frequency))(keys)
    return fields.reshape(b, c, h, w).transpose(0, 2, 3, 1).astype(dtype)


def simplex_bound(octaves: int, persistence: float) -> float:
    """Largest absolute value `simplex_slice` can take (each octave is bounded by 1 before scaling)."""
    amps = octave_amplitudes(octaves, persistence)
    return sum(amps) / (RAW_STD * math.sqrt(sum(a * a for a in amps)))
