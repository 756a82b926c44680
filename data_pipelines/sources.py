"""Where the cases come from (a user's BraTS folder, or the embedded phantom dataset generated on demand),
and the training and validation slices cut from them."""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np

from data_pipelines import brats, case_check, case_splits, input_pipeline, layouts, phantom, slices
from diffseg_jax.vocabulary import ConfigError, parse_available


def cache_dir(config: ml_collections.ConfigDict) -> pathlib.Path:
    return pathlib.Path(config.data.cache_dir) if config.data.cache_dir else phantom.default_cache_dir()


def dataset_root(config: ml_collections.ConfigDict, progress: bool = True) -> pathlib.Path:
    """`data.root` if given, else the phantom dataset (written to the cache on first use)."""
    if config.data.root:
        return pathlib.Path(config.data.root).expanduser()
    version = config.data.get("phantom_version", phantom.PHANTOM_VERSION)
    if version not in phantom.VERSIONS:
        raise ConfigError(
            f"data.phantom_version={version}: known versions {', '.join(map(str, phantom.VERSIONS))}"
        )
    return phantom.ensure_dataset(
        cache_dir(config),
        num_cases=config.data.phantom_cases,
        seed=config.data.phantom_seed,
        spacing_mm=config.data.phantom_spacing_mm,
        progress=progress,
        version=version,
    )


def available(config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
    """`data.available` ('t1,flair') as names; None = all four sequences must exist."""
    text = config.data.get("available", "")
    if not text:
        return None
    try:
        return parse_available(text)
    except ValueError as err:
        raise brats.DataError(f"data.{err}") from None


def checked_cases(config: ml_collections.ConfigDict, progress: bool = True) -> list[brats.CaseFiles]:
    """The labelled cases of `data.root` in its layout, every one checked (`case_check`; a second run reads
    nothing again); a bad case stops with one line naming the file, or is skipped (`data.on_bad_case`)."""
    on_bad_case = config.data.get("on_bad_case", "stop")
    problems: list[brats.DataError] | None = [] if on_bad_case == "skip" else None
    cases = layouts.find_cases(
        dataset_root(config, progress),
        layout=config.data.get("layout") or None,
        available=available(config),
        require_seg=True,
        problems=problems,
    )
    return case_check.check_cases(
        cases,
        cache_file=cache_dir(config) / "case_checks.json",
        on_bad_case=on_bad_case,
        problems=problems or (),
        progress=progress,
        workers=int(config.data.get("prepare_workers", 0) or 0),
    )


def load_splits(config: ml_collections.ConfigDict, progress: bool = True) -> dict[str, list[brats.CaseFiles]]:
    """Finds, checks and splits the labelled cases by patient: train/val/test by `data.split_fractions`, or
    with `data.folds` = n > 0 cross-validation fold `data.fold` (test = that fold, val = the next, or
    `data.fold_val_cases` patients of the other folds)."""
    cases = checked_cases(config, progress)
    d = config.data
    folds = int(d.get("folds", 0) or 0)
    if folds:
        val = int(d.get("fold_val_cases", 0) or 0)
        return case_splits.fold_splits(
            cases, folds, int(d.get("fold", 0)), seed=d.split_seed, val_patients=val
        )
    return case_splits.split_cases(cases, tuple(d.split_fractions), seed=d.split_seed)


def slice_arrays(
    config: ml_collections.ConfigDict,
    cases: list[brats.CaseFiles],
    seed: int,
    progress: bool = True,
    on_disk: bool = False,
) -> dict[str, np.ndarray]:
    """The 2D examples of `cases` as the config's data fields cut them (cached under the cache dir;
    `on_disk`: left there and read a row at a time, `input_pipeline.build_arrays`)."""
    d = config.data
    return input_pipeline.build_arrays(
        cases,
        seed=seed,
        cache_dir=cache_dir(config) / "slices",
        progress=progress,
        on_disk=on_disk,
        workers=int(d.get("prepare_workers", 0) or 0),
        image_size=d.image_size,
        target=d.target,
        slice_range=slice_range(config),
        healthy_fraction=d.healthy_fraction,
    )


def slice_range(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
    """`data.slice_range` as (lo, hi), or None for tumour + healthy slices.

    `--config.data.slice_range=None` on the command line arrives as (None,): it means unset. The range is
    in the volume's own slice indices (BraTS' 80-120 are of 155 slices at 1 mm).
    """
    value = config.data.get("slice_range")
    if not value or any(v is None for v in value):
        return None
    if len(value) != 2:
        raise ConfigError(f"data.slice_range must be (lo, hi) or None, got {tuple(value)!r}")
    return int(value[0]), int(value[1])


def evenly_spaced(arrays: dict[str, np.ndarray], max_slices: int) -> dict[str, np.ndarray]:
    """At most `max_slices` examples, evenly spaced over the arrays (a fixed, cheap validation set)."""
    n = arrays["image"].shape[0]
    idx = np.linspace(0, n - 1, min(n, max_slices)).round().astype(int)
    return {k: v[idx] for k, v in arrays.items()}


def training_slices(
    config: ml_collections.ConfigDict, progress: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]:
    """(train slices, validation slices, one line describing them) of the labelled BraTS-layout cases."""
    splits = load_splits(config, progress)
    on_disk = bool(config.data.get("slices_on_disk", True))
    train = slice_arrays(config, splits["train"], config.seed, progress, on_disk)
    val = slice_arrays(config, splits["val"], config.seed + 1, progress, on_disk)
    val = evenly_spaced(val, config.train.val_max_slices)  # in memory: at most val_max_slices
    counts = "/".join(str(len(splits[s])) for s in brats.SPLITS)
    return train, val, f"cases train/val/test: {counts}; train slices: {len(train['image'])}"


def evaluation_cases(config: ml_collections.ConfigDict, progress: bool = True) -> list[brats.CaseFiles]:
    """The cases run_eval scores: `eval.data_root` (labels optional) or the `eval.split` of the data, at
    most `eval.max_cases` of them (0 = all)."""
    if config.eval.data_root:
        layout = config.eval.get("layout") or None
        cases = layouts.find_cases(config.eval.data_root, layout=layout, available=available(config))
    else:
        cases = load_splits(config, progress)[config.eval.split]
        if not cases:
            where = config.data.root or "the phantom dataset"
            raise brats.DataError(
                f"the {config.eval.split} split of {where} holds no case "
                f"(data.split_fractions={tuple(config.data.split_fractions)}); give other cases with "
                "--config.eval.data_root=<folder>"
            )
    return cases[: config.eval.max_cases] if config.eval.max_cases else cases


def example_slices(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """A one-example batch of zeros shaped like the training slices: four sequences, the target's channels."""
    size = config.data.image_size
    return {
        "image": np.zeros((1, size, size, len(brats.MODALITIES)), np.float32),
        "label": np.zeros((1, size, size, slices.TARGET_CHANNELS[config.data.target]), np.float32),
    }
