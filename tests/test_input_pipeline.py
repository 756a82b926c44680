"""Tests for data_pipelines.input_pipeline: determinism, resume, sharding, augmentation, eval."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_pipelines import brats
from data_pipelines import input_pipeline as ip

N, S = 12, 8


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    """Channel 0: an asymmetric +-pattern (label = its sign); channel 1: the example id + 1."""
    rng = np.random.default_rng(0)
    pattern = rng.normal(size=(N, S, S)).astype(np.float32)
    ids = np.broadcast_to(np.arange(1, N + 1, dtype=np.float32)[:, None, None], (N, S, S))
    image = np.stack([pattern, ids], axis=-1)
    label = (pattern > 0).astype(np.float32)[..., None]
    return {"image": image, "label": label}


def _take(arrays, steps: int, **kw) -> list[dict[str, np.ndarray]]:
    kw.setdefault("seed", 0)
    kw.setdefault("global_batch_size", 4)
    return list(itertools.islice(ip.train_batches(arrays, **kw), steps))


def _ids(batch: dict[str, np.ndarray]) -> list[int]:
    return [int(round(v)) - 1 for v in batch["image"][:, :, :, 1].mean(axis=(1, 2))]


def test_resume_equals_uninterrupted(arrays):
    full = _take(arrays, 5)
    resumed = _take(arrays, 2, start_step=3)
    for a, b in zip(full[3:], resumed, strict=True):
        assert set(a) == {"image", "label"}
        assert a["image"].shape == (4, S, S, 2) and a["label"].shape == (4, S, S, 1)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_seeds_differ(arrays):
    a = np.concatenate([b["image"] for b in _take(arrays, 3, seed=0)])
    b = np.concatenate([b["image"] for b in _take(arrays, 3, seed=1)])
    assert not np.array_equal(a, b)


def test_each_epoch_is_a_permutation(arrays):
    batches = _take(arrays, 6, augment=False)
    order = [i for b in batches for i in _ids(b)]
    first, second = order[:N], order[N:]
    assert sorted(first) == list(range(N)) and sorted(second) == list(range(N))
    assert first != second  # a fresh permutation every epoch
    for b in batches:  # without augmentation the examples are untouched
        for row, i in enumerate(_ids(b)):
            np.testing.assert_array_equal(b["image"][row], arrays["image"][i])


def test_process_shards_form_the_global_batch(arrays):
    whole = _take(arrays, 4, global_batch_size=6)
    parts = [_take(arrays, 4, global_batch_size=6, process_index=p, process_count=3) for p in range(3)]
    for step in range(4):
        shards = [p[step]["image"] for p in parts]
        assert all(s.shape[0] == 2 for s in shards)
        np.testing.assert_array_equal(np.concatenate(shards), whole[step]["image"])
        ids = [set(_ids(p[step])) for p in parts]
        assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    with pytest.raises(ValueError):
        ip.train_batches(arrays, global_batch_size=5, seed=0, process_count=2)


def test_augmentation_is_identical_for_image_and_label(arrays):
    seen_transformed = False
    for batch in _take(arrays, 6):
        np.testing.assert_array_equal(batch["label"][..., 0], batch["image"][..., 0] > 0)
        for row, i in enumerate(_ids(batch)):
            orig = arrays["image"][i, :, :, 0]
            variants = [np.rot90(v, r) for v in (orig, orig[::-1], orig[:, ::-1]) for r in range(4)]
            got = batch["image"][row, :, :, 0]
            assert any(np.array_equal(got, v) for v in variants)
            seen_transformed |= not np.array_equal(got, orig)
    assert seen_transformed


@pytest.mark.parametrize("process_count", [1, 3])
def test_eval_batches_pad_and_mask(arrays, process_count):
    data = {"image": arrays["image"][:10], "z": np.arange(10, dtype=np.int32)}
    counted: list[int] = []
    n_batches = set()
    for p in range(process_count):
        batches = list(ip.eval_batches(data, batch_size=3, process_index=p, process_count=process_count))
        n_batches.add(len(batches))
        for b in batches:
            assert b["image"].shape == (3, S, S, 2) and b["mask"].dtype == np.float32
            real = b["mask"] == 1
            counted += b["z"][real].tolist()
            assert np.all(b["image"][~real] == 0)
    assert len(n_batches) == 1  # every process runs the same number of steps
    assert sorted(counted) == list(range(10))


def _write_case(root: Path, case_id: str, rng: np.random.Generator) -> None:
    folder = root / case_id
    folder.mkdir(parents=True)
    shape = (12, 14, 6)
    brain = np.zeros(shape, bool)
    brain[2:10, 3:11, 1:5] = True
    for m in ("t1", "t1ce", "t2", "flair"):
        data = np.where(brain, rng.uniform(1, 2, shape), 0).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.eye(4)), folder / f"{case_id}_{m}.nii.gz")
    seg = np.zeros(shape, np.uint8)
    seg[4:7, 5:8, 2:4] = 2
    seg[5, 6, 2] = 4
    nib.save(nib.Nifti1Image(seg, np.eye(4)), folder / f"{case_id}_seg.nii.gz")


def _case_folders(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if not p.name.startswith("."))


def test_build_arrays_and_cache(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for i in range(3):
        _write_case(tmp_path / "data", f"BraTS2021_{i:05d}", rng)
    cases = brats.find_cases(tmp_path / "data", require_seg=True)
    kw = dict(
        image_size=8,
        target="regions",
        slice_range=None,
        healthy_fraction=0.5,
        seed=0,
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    arrays = ip.build_arrays(cases[:2], **kw)
    n = len(arrays["z"])
    assert n == 6  # per case: 2 tumour slices + 1 healthy
    assert arrays["image"].shape == (n, 8, 8, 4) and arrays["label"].shape == (n, 8, 8, 3)
    assert arrays["case"].dtype == np.int32 and arrays["case"].tolist() == [0, 0, 0, 1, 1, 1]
    assert [p.name.split("-")[0] for p in _case_folders(tmp_path / "cache")] == [c.case_id for c in cases[:2]]

    prepared = []
    real_load = brats.load_case
    monkeypatch.setattr(brats, "load_case", lambda case: prepared.append(case.case_id) or real_load(case))
    again = ip.build_arrays(cases[:2], **kw)
    for key, value in arrays.items():
        np.testing.assert_array_equal(again[key], value)
    # another split: only the new case is prepared, and a case's slices do not depend on its position
    other = ip.build_arrays([cases[2], cases[0]], workers=1, **kw)
    assert prepared == [cases[2].case_id]
    first = other["case"] == 1
    np.testing.assert_array_equal(other["image"][first], arrays["image"][arrays["case"] == 0])
    np.testing.assert_array_equal(other["z"][first], arrays["z"][arrays["case"] == 0])
    # a changed file prepares that case again
    seg = cases[0].seg
    os.utime(seg, ns=(seg.stat().st_atime_ns, seg.stat().st_mtime_ns + 10**9))
    prepared.clear()
    ip.build_arrays(cases[:2], workers=1, **kw)
    assert prepared == [cases[0].case_id]
    monkeypatch.undo()
    wt = ip.build_arrays(cases[:2], **{**kw, "target": "wt", "slice_range": (1, 5)})
    assert wt["label"].shape == (8, 8, 8, 1)
    assert len(_case_folders(tmp_path / "cache")) == 6  # 3 cases, a changed file, 2 with other settings
    assert not list((tmp_path / "cache").glob(".*"))  # no temporary files left behind


SLICING = dict(image_size=8, target="regions", slice_range=None, healthy_fraction=0.5, seed=0, progress=False)


def _cases(folder: Path, ids: list[str], seed: int) -> list[brats.CaseFiles]:
    rng = np.random.default_rng(seed)
    for case_id in ids:
        _write_case(folder, case_id, rng)
    return brats.find_cases(folder, require_seg=True)


def test_cases_are_prepared_in_worker_processes_as_in_one(tmp_path):
    cases = _cases(tmp_path / "data", [f"Brats18_TCIA01_{i}_1" for i in range(3)], seed=2)
    kw = SLICING
    serial = ip.build_arrays(cases, cache_dir=tmp_path / "one", workers=1, **kw)
    parallel = ip.build_arrays(cases, cache_dir=tmp_path / "two", workers=2, **kw)
    for key, value in serial.items():
        np.testing.assert_array_equal(parallel[key], value)
    broken = tmp_path / "data" / "Brats18_TCIA01_1_1" / "Brats18_TCIA01_1_1_t2.nii.gz"
    broken.write_bytes(b"not a nifti file")
    with pytest.raises(
        brats.DataError, match="Brats18_TCIA01_1_1_t2.nii.gz"
    ):  # a worker's error names its file
        ip.build_arrays(cases, cache_dir=tmp_path / "three", workers=2, **kw)


def test_slices_kept_on_disk_are_the_in_memory_slices_and_give_the_same_batches(tmp_path):
    from data_pipelines import slice_files

    cases = _cases(tmp_path / "data", [f"BraTS2021_{i:05d}" for i in range(3)], seed=1)
    kw = SLICING
    in_memory = ip.build_arrays(cases, cache_dir=None, **kw)
    on_disk = ip.build_arrays(cases, cache_dir=tmp_path / "cache", on_disk=True, **kw)
    assert isinstance(on_disk["image"], slice_files.CaseRows)
    for key, value in in_memory.items():
        assert on_disk[key].shape == value.shape and on_disk[key].dtype == value.dtype
        np.testing.assert_array_equal(np.asarray(on_disk[key]), value)
        np.testing.assert_array_equal(on_disk[key][[4, 0, 4]], value[[4, 0, 4]])
        np.testing.assert_array_equal(on_disk[key][-1], value[-1])
    folders = list(
        (tmp_path / "cache").iterdir()
    )  # a folder of .npy files per case, no temporary left behind
    assert len(folders) == 3 and all(
        sorted(p.name for p in f.iterdir()) == ["image.npy", "label.npy", "z.npy"] for f in folders
    )
    reread = ip.build_arrays(cases, cache_dir=tmp_path / "cache", on_disk=True, **kw)
    np.testing.assert_array_equal(np.asarray(reread["label"]), in_memory["label"])
    augment = dict(global_batch_size=4, seed=3, augment=True, start_step=2)
    for a, b in zip(_take(in_memory, 4, **augment), _take(on_disk, 4, **augment), strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])  # the same examples, augmented alike
        np.testing.assert_array_equal(a["label"], b["label"])

    # read from disk, a resumed run equals the uninterrupted one, and each process reads its own share
    whole = _take(on_disk, 5, global_batch_size=4, seed=3)
    for a, b in zip(whole[2:], _take(on_disk, 3, global_batch_size=4, seed=3, start_step=2), strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    share = dict(global_batch_size=4, seed=3, process_count=2)
    shares = [_take(on_disk, 5, process_index=p, **share) for p in (0, 1)]
    rows = np.asarray(on_disk["image"]).reshape(len(in_memory["z"]), -1)
    n, checked = len(rows), 0
    for step, batch in enumerate(whole):
        parts = [s[step]["image"] for s in shares]
        np.testing.assert_array_equal(np.concatenate(parts), batch["image"])
        if 4 * step // n == (4 * step + 3) // n:  # within one epoch's permutation: no row twice
            taken = [{_row_of(x, rows) for x in part} for part in parts]  # dataset rows, flips undone
            assert all(len(t) == 2 for t in taken) and not taken[0] & taken[1]
            checked += 1
    assert checked >= 2


def _row_of(example: np.ndarray, rows: np.ndarray) -> int:
    """The dataset row an (optionally flipped / turned) example came from."""
    for variant in (np.rot90(v, r) for v in (example, example[::-1], example[:, ::-1]) for r in range(4)):
        hits = np.flatnonzero((rows == variant.reshape(1, -1)).all(axis=1))
        if len(hits):
            return int(hits[0])
    raise AssertionError("example is no dataset row under a flip or quarter turn")


def test_a_script_without_a_main_guard_prepares_cases_in_workers(tmp_path):
    """Spawned workers must not run the calling script again (here: it would prepare in every worker)."""
    import subprocess
    import sys

    rng = np.random.default_rng(3)
    for i in range(2):
        _write_case(tmp_path / "data", f"BraTS2021_{i:05d}", rng)
    script = tmp_path / "prepare.py"
    script.write_text(
        "from data_pipelines import brats, input_pipeline\n"
        f"cases = brats.find_cases({str(tmp_path / 'data')!r}, require_seg=True)\n"
        "arrays = input_pipeline.build_arrays(cases, image_size=8, target='regions', slice_range=None,\n"
        f"    healthy_fraction=0.5, seed=0, cache_dir={str(tmp_path / 'cache')!r}, progress=False,\n"
        "    workers=2)\n"
        "print('slices', len(arrays['z']))\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["slices", "6"]  # printed once: the workers did not run the script
