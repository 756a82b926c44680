"""Synthetic multimodal brain-tumour phantom written in the BraTS 2021 layout.

The embedded default dataset: it needs no download or licence, yet exercises the same loaders as
real BraTS. Anatomy comes from nilearn's bundled MNI152 templates (offline); every case is a
random smooth deformation of it with per-case sequence contrasts, bias fields, Rician noise and
0-3 irregular lesions (necrotic core, enhancing rim, oedema). Cases are a pure function of
``(seed, index)``, so a dataset can always be regenerated bit-for-bit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from tqdm.auto import tqdm

from data_pipelines import phantom_mimics

PHANTOM_VERSION = 3  # part of the cache key: a dataset written by another version is regenerated
VERSIONS = (2, 3)  # 3 adds the tumour mimics of real scans (`phantom_mimics`) and real-like lesion contrasts
SEQUENCES = ("t1", "t1ce", "t2", "flair")
LABELS = (0, 1, 2, 4)  # background, necrotic core (NCR), oedema (ED), enhancing tumour (ET)
TUMOUR_FREE_BLOCK = 8  # exactly one tumour-free case per block of 8 indices (12.5 %)

# Tissue intensity relative to WM of the same sequence: (CSF, GM, WM).
_TISSUE = {
    "t1": (0.30, 0.62, 1.0),
    "t1ce": (0.33, 0.66, 1.0),
    "t2": (2.8, 1.35, 1.0),
    "flair": (0.25, 1.12, 1.0),
}
# Lesion intensity ranges relative to WM: {label: {sequence: (low, high)}}.
_LESION = {
    2: {"t1": (0.72, 0.9), "t1ce": (0.74, 0.92), "t2": (1.5, 2.3), "flair": (1.35, 1.9)},
    4: {"t1": (0.75, 0.95), "t1ce": (1.35, 2.0), "t2": (1.2, 1.6), "flair": (1.2, 1.7)},
    1: {"t1": (0.3, 0.5), "t1ce": (0.3, 0.5), "t2": (1.8, 2.6), "flair": (0.5, 1.5)},
}
# Subtle lesions: oedema 30-50 % brighter than WM in FLAIR (GM is ~12 %), weak enhancement. Fainter lesions
# would sit inside the bias field's variation, where no model could identify them from the images.
_LOW_CONTRAST = {
    2: {"t1": (0.85, 0.93), "t1ce": (0.85, 0.93), "t2": (1.4, 1.7), "flair": (1.3, 1.5)},
    4: {"t1ce": (1.25, 1.45)},
}
# Version 3, from the contrasts of real glioma scans (z-scores inside the brain): oedema iso- to hypointense
# to the brain on T1c and less conspicuous on FLAIR, fading towards its edge; necrosis a larger share of the
# core (a thin enhancing rim); part of the cores non-enhancing solid tumour (FLAIR-bright, T1c-dark).
_LESION_V3 = {
    2: {"t1": (0.62, 0.85), "t1ce": (0.6, 0.82), "t2": (1.4, 2.1), "flair": (1.15, 1.65)},
    4: {"t1": (0.75, 0.95), "t1ce": (1.15, 1.65), "t2": (1.2, 1.6), "flair": (1.15, 1.6)},
    1: _LESION[1],
}
_TISSUE_V3 = {**_TISSUE, "t1ce": (0.33, 0.72, 1.0)}  # less grey/white contrast on T1c
_NON_ENHANCING = {"t1": (0.6, 0.8), "t1ce": (0.55, 0.75), "t2": (1.5, 2.0), "flair": (1.3, 1.8)}
_OEDEMA_EDGE = 0.45  # v3: contrast at the oedema's edge, as a fraction of its contrast near the core
_BIAS_AMPLITUDE = (0.03, 0.1)  # log-intensity sd of the smooth bias field (BraTS is bias-corrected)
_CORE_RADIUS_MM = (5.0, 24.0)  # log-uniform; 5 mm is ~1.5 pixels at 64 px


class Anatomy(NamedTuple):
    """MNI152 tissue maps on one grid, shared (read-only) by every case."""

    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray  # float32 brain mask in {0, 1}
    affine: np.ndarray
    centre: np.ndarray  # brain centroid in voxels: the origin of the random global scaling
    active: np.ndarray  # flat indices that a deformed brain can reach


def case_id(index: int) -> str:
    """BraTS 2021 style identifier, so the phantom drops into real-data loaders unchanged."""
    return f"BraTS2021_{index:05d}"


def _spacing_tag(spacing_mm: float) -> str:
    return f"{float(spacing_mm):g}mm"


def version_tag(version: int) -> str:
    """The cache folder's suffix for a generator version (none for version 2, whose folders predate it)."""
    return "" if version == 2 else f"-v{version}"


@functools.lru_cache(maxsize=4)
def load_anatomy(spacing_mm: float = 2.0) -> Anatomy:
    """Load GM/WM/brain mask once per process and grid (nilearn resampling takes seconds)."""
    from nilearn import datasets, image  # heavy import, only needed when generating

    def load(loader: Any) -> Any:
        if float(spacing_mm).is_integer():
            return loader(resolution=int(spacing_mm))
        one_mm = loader(resolution=1)
        return image.resample_img(one_mm, target_affine=np.eye(3) * spacing_mm)

    gm_img = load(datasets.load_mni152_gm_template)
    gm = np.clip(np.asarray(gm_img.dataobj, np.float32), 0, 1)
    wm = np.clip(np.asarray(load(datasets.load_mni152_wm_template).dataobj, np.float32), 0, 1)
    if float(spacing_mm).is_integer():
        mask = np.asarray(datasets.load_mni152_brain_mask(resolution=int(spacing_mm)).dataobj) > 0
    else:  # nilearn's own mask rule, applied after our resampling
        mask = np.asarray(load(datasets.load_mni152_template).dataobj) > 0.2
    mask = mask.astype(np.float32)
    reach = int(np.ceil(14.0 / spacing_mm))  # max scaling + displacement, in voxels
    active = np.flatnonzero(ndi.binary_dilation(mask > 0, iterations=reach))
    centre = np.array(ndi.center_of_mass(mask), np.float32)
    for a in (gm, wm, mask, active, centre):
        a.setflags(write=False)
    return Anatomy(gm, wm, mask, np.asarray(gm_img.affine, np.float64), centre, active)


@functools.lru_cache(maxsize=32)
def _basis(n_fine: int, n_ctrl: int) -> np.ndarray:
    centres = np.linspace(0, n_fine - 1, n_ctrl)
    width = (n_fine - 1) / (n_ctrl - 1)
    b = np.exp(-0.5 * ((np.arange(n_fine)[:, None] - centres) / width) ** 2)
    return (b / b.sum(1, keepdims=True)).astype(np.float32)


def _smooth_fields(rng: np.random.Generator, shape: tuple[int, ...], n: int, n_ctrl: int) -> np.ndarray:
    """``n`` smooth random fields of ~unit std, via separable interpolation of a coarse grid.

    Cheaper than zoom + spline filtering on the full grid: three small matrix products.
    """
    bases = [_basis(s, n_ctrl) for s in shape]
    coef = rng.standard_normal((n, n_ctrl, n_ctrl, n_ctrl)).astype(np.float32)
    coef /= np.sqrt(np.prod([np.mean((b**2).sum(1)) for b in bases]))
    f = np.einsum("nijk,xi->nxjk", coef, bases[0])
    f = np.einsum("nxjk,yj->nxyk", f, bases[1])
    return f @ bases[2].T


def _warp(anat: Anatomy, rng: np.random.Generator, spacing_mm: float) -> tuple[np.ndarray, ...]:
    """Deform GM/WM/mask smoothly (a few mm) with a small global scaling: new 'subjects'."""
    shape = anat.gm.shape
    amp = rng.uniform(1.5, 4.0) / spacing_mm  # displacement std in voxels
    scale = rng.uniform(0.93, 1.07) * rng.uniform(0.97, 1.03, 3)
    disp = _smooth_fields(rng, shape, 3, 6).reshape(3, -1)[:, anat.active] * amp
    grid = np.unravel_index(anat.active, shape)
    coords = np.stack(
        [c + (g - c) / s + d for g, c, s, d in zip(grid, anat.centre, scale, disp, strict=True)]
    )
    out = []
    for vol in (anat.gm, anat.wm, anat.mask):
        w = np.zeros(vol.size, np.float32)
        w[anat.active] = ndi.map_coordinates(vol, coords, order=1, mode="constant")
        out.append(w.reshape(shape))
    gm, wm, mask = out
    brain = mask > 0.5
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    total = np.maximum(gm + wm + csf, 1e-6)
    return gm / total * brain, wm / total * brain, csf / total * brain, brain


def tumour_free(index: int, seed: int = 0) -> bool:
    """Whether case ``index`` has no lesion: one random slot per block of 8, cheap to query."""
    block_rng = np.random.default_rng([seed, index // TUMOUR_FREE_BLOCK, 2])
    return index % TUMOUR_FREE_BLOCK == int(block_rng.integers(TUMOUR_FREE_BLOCK))


def _harmonic(rng: np.random.Generator, u: np.ndarray, amp: float) -> np.ndarray:
    """Radius modulation by random 1st/2nd-order harmonics of direction ``u`` (lumpy ellipsoid)."""
    b = rng.normal(0, 1, 3)
    d = rng.normal(0, 1, (3, 3))
    d = (d + d.T) / 2 - np.eye(3) * np.trace(d) / 3
    g = np.einsum("i,i...->...", b, u) + np.einsum("ij,i...,j...->...", d, u, u)
    return np.clip(1.0 + amp * g, 0.4, None)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / max(float(n.std()), 1e-6)


def _add_lesion(
    rng: np.random.Generator,
    images: dict[str, np.ndarray],
    seg: np.ndarray,
    tissue: tuple[np.ndarray, ...],
    wm_level: dict[str, float],
    spacing_mm: float,
    version: int = PHANTOM_VERSION,
) -> None:
    """Paint one lesion in place: labels into ``seg``, intensities over the tissue images."""
    gm, wm, csf, brain = tissue
    kind = rng.choice(["hgg", "solid", "lgg"], p=[0.5, 0.2, 0.3] if version < 3 else [0.65, 0.15, 0.2])
    low = rng.random() < 0.3
    r0 = np.exp(rng.uniform(*np.log(_CORE_RADIUS_MM))) / spacing_mm  # core radius, voxels
    axes = r0 * rng.uniform(0.75, 1.25, 3)
    f_ed = 1.0 if kind == "lgg" else min(rng.uniform(1.2, 2.4), 34.0 / spacing_mm / axes.max())
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    pool = np.flatnonzero(wm > 0.6) if rng.random() < 0.8 else np.flatnonzero(brain)
    centre = np.array(np.unravel_index(rng.choice(pool), seg.shape))
    half = int(np.ceil(axes.max() * f_ed * 1.6)) + 2
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, seg.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    p = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"))
    q = np.einsum("ji,j...->i...", rot, (p - centre[:, None, None, None]).astype(np.float32))
    q /= axes[:, None, None, None].astype(np.float32)
    rho = np.sqrt((q**2).sum(0)) + 1e-6
    u = q / rho
    bshape = rho.shape
    noise = _smooth_noise(rng, bshape, max(1.0, 0.3 * r0))
    ed_noise = _smooth_noise(rng, bshape, max(1.0, 0.3 * r0 * f_ed))
    rough = rng.uniform(0.08, 0.2)
    core = rho / _harmonic(rng, u, 0.12) + rough * noise
    inside = brain[box]
    ed_r = rho / (f_ed * _harmonic(rng, u, 0.25)) + rng.uniform(0.1, 0.3) * ed_noise
    ed_r -= 0.3 * (wm[box] - 0.5)  # oedema spreads along white matter
    whole = (((ed_r < 1) & (csf[box] < 0.5)) | (core < 1)) & inside
    et = (core < 1) & inside if kind != "lgg" else np.zeros_like(whole)
    ncr_extent = rng.uniform(0.5, 0.8) if version < 3 else rng.uniform(0.6, 0.92)
    ncr = et & (core < ncr_extent) if kind == "hgg" else np.zeros_like(whole)
    sb = seg[box]
    sb[whole & (sb == 0)] = 2
    sb[et & (sb != 1)] = 4
    sb[ncr] = 1
    sigma = 1.0 / spacing_mm  # ~1 mm partial-volume blur of the lesion boundary
    texture = 1.0 + rng.uniform(0.03, 0.1) * noise
    table = _LESION if version < 3 else _LESION_V3
    if version >= 3 and rng.random() < 0.4:  # the core's label-1 part is non-enhancing tumour, not necrosis
        table = {**table, 1: _NON_ENHANCING}
    for label, region in ((2, whole), (4, et), (1, ncr)):
        if not region.any():
            continue
        alpha = ndi.gaussian_filter(region.astype(np.float32), sigma) * inside
        if label == 2 and version >= 3:
            alpha *= _OEDEMA_EDGE + (1.0 - _OEDEMA_EDGE) * np.clip((1.0 - ed_r) / 0.5, 0.0, 1.0)
        for seq, img in images.items():
            rng_lo, rng_hi = (_LOW_CONTRAST if low else table).get(label, {}).get(seq, table[label][seq])
            value = rng.uniform(rng_lo, rng_hi) * wm_level[seq] * texture
            img[box] += alpha * (value - img[box])


def generate_case(
    index: int,
    seed: int = 0,
    spacing_mm: float = 2.0,
    return_tissue: bool = False,
    healthy: bool = False,
    version: int = PHANTOM_VERSION,
) -> dict[str, np.ndarray]:
    """One synthetic case as a pure function of ``(seed, index, version)``.

    Returns float32 ``t1, t1ce, t2, flair`` (integer-valued, int16 range, 0 outside the brain as
    in skull-stripped BraTS), uint8 ``seg`` in {0, 1, 2, 4}, the bool ``brain`` and the 4x4 ``affine``;
    with ``return_tissue`` also the deformed ``gm, wm, csf`` fractions (for checks). ``healthy`` = no
    lesion, whatever the index (the IXI-layout healthy subjects, `phantom_ixi.py`).
    """
    if index < 0 or seed < 0:
        raise ValueError("index and seed must be non-negative")
    if version not in VERSIONS:
        raise ValueError(f"phantom version {version} unknown (known: {', '.join(map(str, VERSIONS))})")
    anat = load_anatomy(float(spacing_mm))
    rng = np.random.default_rng([seed, index, 1])
    tissue = _warp(anat, rng, spacing_mm)
    gm, wm, csf, brain = tissue
    wm_level = {s: float(rng.uniform(400.0, 900.0)) for s in SEQUENCES}
    images = {}
    for seq in SEQUENCES:
        c_csf, c_gm, _ = (v * rng.uniform(0.93, 1.07) for v in (_TISSUE if version < 3 else _TISSUE_V3)[seq])
        images[seq] = (c_csf * csf + c_gm * gm + wm) * np.float32(wm_level[seq])
    if version >= 3:
        phantom_mimics.paint(np.random.default_rng([seed, index, 3]), images, tissue, wm_level, spacing_mm)
    seg = np.zeros(gm.shape, np.uint8)
    if not healthy and not tumour_free(index, seed):
        for _ in range(rng.choice([1, 2, 3], p=[0.6, 0.28, 0.12])):
            _add_lesion(rng, images, seg, tissue, wm_level, spacing_mm, version)
    bias = _smooth_fields(rng, gm.shape, len(SEQUENCES), 4).reshape(len(SEQUENCES), -1)
    idx = np.flatnonzero(brain)
    noise_level = rng.uniform(0.015, 0.06)
    out: dict[str, np.ndarray] = {}
    for k, seq in enumerate(SEQUENCES):
        v = images[seq].reshape(-1)[idx] * np.exp(rng.uniform(*_BIAS_AMPLITUDE) * bias[k, idx])
        sd = np.float32(noise_level * wm_level[seq] * rng.uniform(0.8, 1.2))
        n = rng.standard_normal((2, idx.size), dtype=np.float32) * sd
        v = np.sqrt((v + n[0]) ** 2 + n[1] ** 2)  # Rician: magnitude of complex Gaussian
        img = np.zeros(gm.size, np.float32)
        img[idx] = np.clip(np.rint(v), 0, np.iinfo(np.int16).max)
        out[seq] = img.reshape(gm.shape)
    out["seg"] = seg * brain
    out["brain"] = brain.astype(bool)
    out["affine"] = anat.affine.copy()
    if return_tissue:
        out.update(gm=gm, wm=wm, csf=csf)
    return out


def _write_case(case_dir: pathlib.Path, cid: str, case: dict[str, np.ndarray]) -> None:
    case_dir.mkdir(parents=True)
    for key in (*SEQUENCES, "seg"):
        dtype = np.uint8 if key == "seg" else np.int16  # int16 on disk like real BraTS
        img = nib.Nifti1Image(case[key].astype(dtype), case["affine"])
        img.header.set_data_dtype(dtype)
        img.header.set_xyzt_units("mm")
        nib.save(img, case_dir / f"{cid}_{key}.nii.gz")


def _write_json(path: pathlib.Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def _meta(num_cases: int, seed: int, spacing_mm: float, version: int = PHANTOM_VERSION) -> dict[str, Any]:
    return {
        "generator": "diffseg_jax.phantom",
        "layout": "BraTS2021",
        "num_cases": int(num_cases),
        "seed": int(seed),
        "spacing_mm": float(spacing_mm),
        "version": int(version),
    }


def write_atomically(
    root: str | os.PathLike[str], fill: Callable[[pathlib.Path], None], marker: str, meta: dict[str, Any]
) -> pathlib.Path:
    """fill(tmp) writes a dataset into a hidden sibling temp dir, swapped in with ``os.replace``; the
    ``marker`` json, written last, is the completion mark, so an interrupted run never looks complete."""
    root = pathlib.Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        fill(tmp)
        old = None
        if root.exists():  # stale or mismatching dataset: move aside, drop after the swap
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, old / "data")
        os.replace(tmp, root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_json(root / marker, meta)
    return root


def ensure_generated(
    path: pathlib.Path, marker: str, meta: dict[str, Any], write: Callable[[pathlib.Path], Any]
) -> pathlib.Path:
    """``path`` if its marker matches ``meta``, else write(path) under a lock (concurrent runs wait)."""

    def complete() -> bool:
        try:
            return json.loads((path / marker).read_text()) == meta
        except (OSError, ValueError):
            return False

    if complete():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path.parent / f".{path.name}.lock"):
        if not complete():  # another process may have finished meanwhile
            write(path)
    return path


def write_dataset(
    root: str | os.PathLike[str],
    num_cases: int = 60,
    seed: int = 0,
    spacing_mm: float = 2.0,
    progress: bool = True,
    version: int = PHANTOM_VERSION,
) -> pathlib.Path:
    """Write ``num_cases`` cases to ``root`` atomically, then ``root/phantom.json``."""

    def fill(tmp: pathlib.Path) -> None:
        for i in tqdm(range(num_cases), desc=f"phantom {pathlib.Path(root).name}", disable=not progress):
            cid = case_id(i)
            _write_case(tmp / cid, cid, generate_case(i, seed, spacing_mm, version=version))

    return write_atomically(root, fill, "phantom.json", _meta(num_cases, seed, spacing_mm, version))


def default_cache_dir() -> pathlib.Path:
    """``$DIFFSEG_CACHE`` if set, else ``~/.cache/diffseg_jax``: one shared place for datasets."""
    env = os.environ.get("DIFFSEG_CACHE")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "diffseg_jax"


@contextlib.contextmanager
def _lock(path: pathlib.Path) -> Iterator[None]:
    """Serialise concurrent generators of the same dataset (advisory; no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_dataset(
    cache_dir: str | os.PathLike[str] | None = None,
    num_cases: int = 60,
    seed: int = 0,
    spacing_mm: float = 2.0,
    progress: bool = True,
    version: int = PHANTOM_VERSION,
) -> pathlib.Path:
    """Return the cached dataset directory, generating it only if missing or incomplete."""
    cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"phantom-n{num_cases}-s{seed}-{_spacing_tag(spacing_mm)}{version_tag(version)}"
    meta = _meta(num_cases, seed, spacing_mm, version)
    return ensure_generated(
        path,
        "phantom.json",
        meta,
        lambda p: write_dataset(p, num_cases, seed, spacing_mm, progress, version),
    )
