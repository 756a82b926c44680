"""Where the cases come from: a user's BraTS folder, or the embedded phantom dataset generated on demand."""

from __future__ import annotations

import pathlib

import ml_collections

from data_pipelines import brats, phantom


def cache_dir(config: ml_collections.ConfigDict) -> pathlib.Path:
    return pathlib.Path(config.data.cache_dir) if config.data.cache_dir else phantom.default_cache_dir()


def dataset_root(config: ml_collections.ConfigDict, progress: bool = True) -> pathlib.Path:
    """`data.root` if given, else the phantom dataset (written to the cache on first use)."""
    if config.data.root:
        return pathlib.Path(config.data.root).expanduser()
    return phantom.ensure_dataset(
        cache_dir(config),
        num_cases=config.data.phantom_cases,
        seed=config.data.phantom_seed,
        spacing_mm=config.data.phantom_spacing_mm,
        progress=progress,
    )


def available(config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
    """`data.available` ('t1,flair') as names; None = all four sequences must exist."""
    from diffseg_jax.modalities import parse_available

    text = config.data.get("available", "")
    if not text:
        return None
    try:
        return parse_available(text)
    except ValueError as err:
        raise brats.DataError(f"data.{err}") from None


def load_splits(config: ml_collections.ConfigDict, progress: bool = True) -> dict[str, list[brats.CaseFiles]]:
    """Finds and splits the labelled cases by patient (train/val/test, seeded)."""
    cases = brats.find_cases(dataset_root(config, progress), available=available(config), require_seg=True)
    return brats.split_cases(cases, tuple(config.data.split_fractions), seed=config.data.split_seed)
