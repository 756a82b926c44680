"""The anomaly-detection task inside the shared training loop: its data and its validation score.

Training examples are single-sequence slices of healthy subjects (unified mode stacks the T1 and the T2
slices as separate examples, so one network learns both); the "label" key carries the brain mask, which the
augmentation flips and rotates with the image. Validation reconstructs tumour slices of the validation
cases and scores the best pooled Dice over thresholds of |x - x_hat| in the eroded brain: the criterion the
test threshold is chosen by, so the kept checkpoint is the one that detects best.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections
import numpy as np

from diffseg_jax.anomaly import detection

KNOWN_SEQUENCES = ("t1", "t2")
Reconstruct = Callable[[np.ndarray], np.ndarray]  # [N, H, W, 1] in [0, 1] -> same


def sequences(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """`data.sequences` as a tuple ('t2' or 't1,t2' on the command line)."""
    raw = config.data.sequences
    names = tuple(s.strip().lower() for s in (raw.split(",") if isinstance(raw, str) else raw) if s.strip())
    unknown = [s for s in names if s not in KNOWN_SEQUENCES]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(
            f"data.sequences={raw!r}: expected distinct names from {', '.join(KNOWN_SEQUENCES)}, e.g. 't2'"
        )
    return names


def data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy whose data.sequences is a tuple (what `data_pipelines.anomaly_data` reads)."""
    fields = config.to_dict()
    fields["data"]["sequences"] = sequences(config)
    return ml_collections.ConfigDict(fields)


def single_sequence_examples(image: np.ndarray, brain: np.ndarray) -> dict[str, np.ndarray]:
    """[N, H, W, M] -> {"image": [M*N, H, W, 1], "label": brain [M*N, H, W, 1]} (sequence-major)."""
    m = image.shape[-1]
    stacked = np.concatenate([image[..., k : k + 1] for k in range(m)], axis=0)
    return {"image": stacked.astype(np.float32), "label": np.tile(brain, (m, 1, 1, 1)).astype(np.float32)}


def validation_subset(arrays: dict[str, np.ndarray], max_slices: int, seed: int) -> dict[str, np.ndarray]:
    """Up to max_slices slices, half with tumour (a seeded choice), so Dice has lesions to find."""
    tumour = np.flatnonzero(arrays["label"].reshape(len(arrays["label"]), -1).any(axis=1))
    other = np.setdiff1d(np.arange(len(arrays["label"])), tumour)
    rng = np.random.default_rng(seed)
    n_tumour = min(len(tumour), max(max_slices // 2, max_slices - len(other)))
    chosen = np.concatenate(
        [
            rng.choice(tumour, n_tumour, replace=False),
            rng.choice(other, min(len(other), max_slices - n_tumour), replace=False),
        ]
    )
    return {k: v[np.sort(chosen)] for k, v in arrays.items()}


def prepare_training(
    config: ml_collections.ConfigDict, progress: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, int]]:
    """(train examples, validation slices, case counts) for the shared training loop."""
    from data_pipelines import anomaly_data

    splits = anomaly_data.load_anomaly_splits(data_config(config), progress)
    fraction = config.data.min_brain_fraction
    train = anomaly_data.volumes_to_slices(splits["train"], fraction)
    val = anomaly_data.volumes_to_slices(splits["val_tumour"], fraction)
    val = validation_subset(val, config.train.val_max_slices, config.seed + 1)
    counts = {name: len(volumes) for name, volumes in splits.items()}
    return single_sequence_examples(train["image"], train["brain"]), val, counts


def residual_maps(images: np.ndarray, recon: np.ndarray, brain: np.ndarray, config) -> np.ndarray:
    """Per-slice anomaly maps [N, H, W] in the eroded brain (2D erosion: slices are independent here)."""
    a = config.anomaly
    return np.stack(
        [
            detection.anomaly_map(x, r, b, squared=a.squared_error, erosion_iterations=a.erosion)
            for x, r, b in zip(images, recon, brain, strict=True)
        ]
    )


def validation_scores(
    reconstruct: Reconstruct, val: dict[str, np.ndarray], config: ml_collections.ConfigDict
) -> dict[str, float]:
    """{'val/dice_<seq>': best pooled Dice, 'val/dice': their mean, 'val/l1_<seq>': mean |x - x_hat|}."""
    scalars = {}
    brain, label = val["brain"][..., 0] > 0.5, val["label"][..., 0] > 0.5
    for k, name in enumerate(sequences(config)):
        images = val["image"][..., k : k + 1]
        recon = reconstruct(images)
        maps = residual_maps(images[..., 0], recon[..., 0], brain, config)
        _, best = detection.best_threshold(maps[brain], label[brain])
        scalars[f"val/dice_{name}"] = float(best)
        scalars[f"val/l1_{name}"] = float(np.abs(images - recon)[..., 0][brain].mean())
    scalars["val/dice"] = float(np.mean([v for k, v in scalars.items() if k.startswith("val/dice_")]))
    return scalars
