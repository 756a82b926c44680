"""Build the BraTS slice TFDS dataset from tiny synthetic cases in BraTS 2021 layout."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines.tfds_brats import BratsSlices

N_CASES = 6


def _write_case(root: Path, i: int, rng: np.random.Generator) -> None:
    case_id = f"BraTS2021_{i:05d}"
    folder = root / case_id
    folder.mkdir(parents=True)
    shape = (24, 24, 12)
    brain = np.zeros(shape, bool)
    brain[4:20, 3:21, 1:11] = True
    for m in ("t1", "t1ce", "t2", "flair"):
        data = np.where(brain, rng.uniform(10, 20, shape), 0).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.eye(4)), folder / f"{case_id}_{m}.nii.gz")
    seg = np.zeros(shape, np.uint8)
    z0 = 3 + i % 4
    seg[8:14, 8:14, z0 : z0 + 3] = 2
    seg[9:13, 9:13, z0 + 1] = 1
    seg[10:12, 10:12, z0 + 1] = 4
    nib.save(nib.Nifti1Image(seg, np.eye(4)), folder / f"{case_id}_seg.nii.gz")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("brats")
    rng = np.random.default_rng(0)
    for i in range(N_CASES):
        _write_case(tmp / "manual", i, rng)
    builder = BratsSlices(config="s16", data_dir=str(tmp / "tfds"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp / "manual")))
    return builder


def test_builder_shapes_dtypes_and_keys(built):
    info = built.info
    assert set(info.splits) == {"train", "validation", "test"}
    assert info.features["image"].shape == (16, 16, 4)
    assert info.features["label"].shape == (16, 16, 3)
    ds = built.as_dataset(split="train")
    ex = next(iter(tfds.as_numpy(ds)))
    assert ex["image"].dtype == np.float32 and ex["image"].shape == (16, 16, 4)
    assert ex["label"].dtype == np.uint8 and ex["label"].shape == (16, 16, 3)
    assert set(np.unique(ex["label"])) <= {0, 1}
    assert ex["z"].dtype == np.int32 and ex["case_id"].startswith(b"BraTS2021_")


def test_splits_cover_examples_without_case_overlap(built):
    per_split: dict[str, set[bytes]] = {}
    total = 0
    wt_slices = 0
    for split in ("train", "validation", "test"):
        examples = list(tfds.as_numpy(built.as_dataset(split=split)))
        assert len(examples) == built.info.splits[split].num_examples > 0
        per_split[split] = {e["case_id"] for e in examples}
        total += len(examples)
        wt_slices += sum(int(e["label"][..., 0].any()) for e in examples)
        # nested regions: ET within TC within WT
        for e in examples:
            lab = e["label"].astype(bool)
            assert not np.any(lab[..., 2] & ~lab[..., 1]) and not np.any(lab[..., 1] & ~lab[..., 0])
    assert total == sum(s.num_examples for s in built.info.splits.values())
    assert total == N_CASES * (3 + 1)  # 3 tumour slices + 1 healthy slice per case
    assert wt_slices == N_CASES * 3
    names = list(per_split.values())
    assert sum(len(n) for n in names) == N_CASES == len(set().union(*names))
