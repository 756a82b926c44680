"""Non-tumour structures of real scans that look like tumour on FLAIR or T1c (phantom version 3).

A model trained on a phantom without them marks them as tumour on real scans: the bright periventricular
rim on FLAIR (caps and bands along the lateral ventricles), the enhancing choroid plexus inside the
ventricles, enhancing vessels on T1c, and the enhancing dura and veins at the edge of a skull-stripped brain.
They are painted over the tissue images (label 0) before the lesions, from their own random stream, so the
rest of a case is unchanged by them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

_VENTRICLE_DEPTH_MM = 18.0  # CSF deeper than this below the brain surface: the ventricles, not sulci
# Periventricular hyperintensity: FLAIR gain over WM at the ventricle wall, fading out over the band.
_PVH_GAIN = (0.0, 0.4)
_PVH_WIDTH_MM = (2.0, 8.0)
_PLEXUS_T1CE = (1.2, 1.7)  # x WM: enhancing
_VESSEL_T1CE = (1.3, 2.0)
_VESSELS = (8, 24)
_SURFACE_T1CE = (1.0, 1.5)  # x WM: dura and cortical veins left at the edge of a skull-stripped brain


def ventricles(csf: np.ndarray, brain: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Deep CSF: the ventricular system (bool)."""
    depth = ndi.distance_transform_edt(brain) * spacing_mm
    return (csf > 0.5) & (depth > _VENTRICLE_DEPTH_MM)


def _smooth_unit(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Smooth noise in [0, 1] (a patchy modulation)."""
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    n /= max(float(n.std()), 1e-6)
    return np.clip(0.5 + 0.5 * n, 0.0, 1.0)


def periventricular_rim(
    rng: np.random.Generator, vent: np.ndarray, wm: np.ndarray, spacing_mm: float
) -> np.ndarray:
    """Weights in [0, 1]: strongest at the ventricle wall in white matter, patchy, fading with distance."""
    if not vent.any():
        return np.zeros(vent.shape, np.float32)
    width = rng.uniform(*_PVH_WIDTH_MM)
    dist = ndi.distance_transform_edt(~vent) * spacing_mm
    fade = np.clip(1.0 - (dist - spacing_mm) / width, 0.0, 1.0) * (~vent)
    patches = _smooth_unit(rng, vent.shape, 6.0 / spacing_mm)
    return (fade * patches * np.clip(wm * 1.5, 0.0, 1.0)).astype(np.float32)


def choroid_plexus(rng: np.random.Generator, vent: np.ndarray, spacing_mm: float) -> np.ndarray:
    """1-3 small blobs (3-5 mm) inside the ventricles, as weights in [0, 1]."""
    out = np.zeros(vent.shape, np.float32)
    pool = np.flatnonzero(vent)
    if pool.size == 0:
        return out
    grid = np.indices(vent.shape, dtype=np.float32)
    for _ in range(int(rng.integers(1, 4))):
        centre = np.array(np.unravel_index(rng.choice(pool), vent.shape), np.float32)
        radius = rng.uniform(3.0, 5.0) / spacing_mm
        d2 = ((grid - centre[:, None, None, None]) ** 2).sum(0)
        out = np.maximum(out, np.exp(-0.5 * d2 / radius**2) * vent)
    return out


def vessels(rng: np.random.Generator, brain: np.ndarray, spacing_mm: float) -> np.ndarray:
    """A few thin winding tubes through the brain (random walks with momentum), as weights in [0, 1]."""
    trace = np.zeros(brain.shape, np.float32)
    pool = np.flatnonzero(brain)
    if pool.size == 0:
        return trace
    upper = np.array(brain.shape) - 1
    for _ in range(int(rng.integers(*_VESSELS))):
        point = np.array(np.unravel_index(rng.choice(pool), brain.shape), np.float64)
        direction = rng.normal(size=3)
        for _ in range(int(rng.uniform(20.0, 60.0) / spacing_mm)):
            direction = 0.85 * direction / np.linalg.norm(direction) + 0.15 * rng.normal(size=3)
            point = np.clip(point + direction / np.linalg.norm(direction), 0, upper)
            trace[tuple(np.rint(point).astype(int))] = 1.0
    width = rng.uniform(0.4, 0.7)  # voxels
    tubes = ndi.gaussian_filter(trace, width)
    return (np.clip(tubes / max(float(tubes.max()), 1e-6) * 2.0, 0.0, 1.0) * brain).astype(np.float32)


def paint(
    rng: np.random.Generator,
    images: dict[str, np.ndarray],
    tissue: tuple[np.ndarray, ...],
    wm_level: dict[str, float],
    spacing_mm: float,
) -> None:
    """Paints the periventricular rim, the choroid plexus and vessels over `images` in place."""
    gm, wm, csf, brain = tissue
    vent = ventricles(csf, brain, spacing_mm)
    rim = periventricular_rim(rng, vent, wm, spacing_mm) * rng.uniform(*_PVH_GAIN)
    images["flair"] *= 1.0 + rim
    images["t2"] *= 1.0 + 0.6 * rim
    for seq in ("t1", "t1ce"):
        images[seq] *= 1.0 - 0.25 * rim
    plexus = choroid_plexus(rng, vent, spacing_mm)
    targets = {"t1": 0.65, "t1ce": rng.uniform(*_PLEXUS_T1CE), "t2": 1.3, "flair": 1.0}
    for seq, relative in targets.items():
        images[seq] += plexus * (relative * wm_level[seq] - images[seq])
    tubes = vessels(rng, brain, spacing_mm)
    bright = rng.uniform(*_VESSEL_T1CE) * wm_level["t1ce"]
    images["t1ce"] += tubes * np.maximum(bright - images["t1ce"], 0.0)
    edge = (brain & ~ndi.binary_erosion(brain)) * _smooth_unit(rng, brain.shape, 4.0 / spacing_mm)
    bright = rng.uniform(*_SURFACE_T1CE) * wm_level["t1ce"]
    images["t1ce"] += edge * np.maximum(bright - images["t1ce"], 0.0)
