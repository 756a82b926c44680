"""TFDS builder for 2D axial BraTS slices, prepared from a local copy (``manual_dir``).

BraTS needs registration, so nothing is downloaded: point ``manual_dir`` at the folder of case
folders. Examples are what ``slices.case_examples`` produces for training (every tumour slice
plus a sample of healthy brain slices), so a prepared dataset and the in-memory pipeline agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from data_pipelines import brats, case_splits, slices
from diffseg_jax import tensorflow_import

tensorflow_import.tensorflow()  # first: tensorflow_datasets would import TensorFlow with Keras
import tensorflow_datasets as tfds  # noqa: E402

_SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
_SPLIT_SEED = 0


@dataclasses.dataclass(eq=False)
class BratsSlicesConfig(tfds.core.BuilderConfig):
    """Slice size S (images are S x S) and the share of healthy slices per tumour slice."""

    image_size: int = 128
    healthy_fraction: float = 0.25


class BratsSlices(tfds.core.GeneratorBasedBuilder):
    """Axial BraTS slices: 4 z-scored modalities and WT/TC/ET region masks."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        BratsSlicesConfig(name=f"s{s}", image_size=s, description=f"{s}x{s} slices") for s in (64, 128, 240)
    ] + [BratsSlicesConfig(name="s16", image_size=16, description="16x16, for smoke tests")]
    DEFAULT_CONFIG_NAME = "s128"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    BraTS requires registration, so it cannot be downloaded automatically.
    1. Register and download the training data, e.g. BraTS 2021 (RSNA-ASNR-MICCAI, via
       https://www.synapse.org/brats2021 or Kaggle "BraTS 2021 Task 1") or BraTS 2023 GLI
       (https://www.synapse.org/brats2023).
    2. Extract it so that one folder holds the case folders, e.g.
       <manual_dir>/BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz or
       <manual_dir>/BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz
    3. Pass that folder as manual_dir, e.g.
       BratsSlices(config="s128").download_and_prepare(
           download_config=tfds.download.DownloadConfig(manual_dir="/path/to/BraTS2021"))
       or: tfds build brats_slices/s128 --imports=data_pipelines.tfds_brats \
           --manual_dir=/path/to/BraTS2021
    Only cases with a segmentation are used; splits are by patient (70/15/15, seed 0).
    """

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        tensor = tfds.features.Tensor
        zlib = tfds.features.Encoding.ZLIB
        return self.dataset_info_from_configs(
            description=(
                "Axial slices of BraTS brain MRI, cropped to the brain, padded square and "
                "resized; image channels are (t1, t1ce, t2, flair) z-scored inside the brain, "
                "label channels are the nested regions (WT, TC, ET)."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tensor(shape=(size, size, 4), dtype=np.float32, encoding=zlib),
                    "label": tensor(shape=(size, size, 3), dtype=np.uint8, encoding=zlib),
                    "case_id": tfds.features.Text(),
                    "z": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://www.synapse.org/brats",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        """Patient-level train/validation/test split; empty splits are left out."""
        cases = brats.find_cases(dl_manager.manual_dir, require_seg=True)
        index = {case.case_id: i for i, case in enumerate(cases)}
        splits = case_splits.split_cases(cases, seed=_SPLIT_SEED)
        return {
            _SPLIT_NAMES[name]: self._generate_examples([(index[c.case_id], c) for c in members])
            for name, members in splits.items()
            if members
        }

    def _generate_examples(
        self, cases: Sequence[tuple[int, brats.CaseFiles]]
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Slices of each case; the rng depends only on the case's index, so builds repeat."""
        config = self.builder_config
        for i, case in cases:
            ex = slices.case_examples(
                brats.load_case(case),
                config.image_size,
                target="regions",
                slice_range=None,
                healthy_fraction=config.healthy_fraction,
                rng=np.random.default_rng(i),
            )
            for image, label, z in zip(ex["image"], ex["label"], ex["z"], strict=True):
                yield (
                    f"{case.case_id}_{int(z):03d}",
                    {
                        "image": image,
                        "label": label.astype(np.uint8),
                        "case_id": case.case_id,
                        "z": np.int32(z),
                    },
                )
