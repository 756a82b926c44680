"""The config a run keeps: written into its workdir when training starts, read by what uses the run later.

`run_eval.py --workdir=W` then evaluates what W trained (its data folder, preset, network and every training
override) without repeating anything; evaluation-side fields can still be set on the command line. A field
that would change the network or what the data mean is refused in one line naming the field and both values:
a checkpoint read into another network fails deep inside orbax, and another data folder quietly scores
other cases (other cases are given with `eval.data_root`). Resuming a run checks the same fields, and
`train.init_from` builds its network from the source run's config.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import ml_collections

from diffseg_jax.vocabulary import ConfigError

FILE = "config.json"
# Fields whose value fixes the network or what the data mean; "data." except those that only change how
# the cases are read or augmented.
PROTECTED = ("method", "task", "model.", "diffusion.", "data.")
NOT_PROTECTED = (
    "data.cache_dir",
    "data.on_bad_case",
    "data.augment",
    "data.slices_on_disk",
    "data.prepare_workers",
)
PATH_FIELDS = ("data.root", "train.init_from")
# With eval.data_root these describe that folder's cases (e.g. T1c + FLAIR only), not the run's.
OTHER_CASES_FIELDS = ("data.available",)


def protected(path: str) -> bool:
    """Whether the dotted field `path` fixes the network or the data's meaning."""
    if path.startswith(NOT_PROTECTED):
        return False
    return any(path == p or (p.endswith(".") and path.startswith(p)) for p in PROTECTED)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; tuples as lists (so a value compares equal to its JSON reading)."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.loads(json.dumps(value))
    return flat


def _absolute_paths(flat: dict[str, Any]) -> dict[str, Any]:
    """Folder-valued fields as absolute paths, so a run read from another folder finds its data."""
    for path in PATH_FIELDS:
        if flat.get(path):
            flat[path] = str(pathlib.Path(flat[path]).expanduser().resolve())
    layout = flat.get("data.layout")
    if layout and pathlib.Path(layout).expanduser().is_file():  # a layout file, not a named layout
        flat["data.layout"] = str(pathlib.Path(layout).expanduser().resolve())
    return flat


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def _values(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return _absolute_paths(flatten(config.to_dict()))


def save(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, source: str) -> pathlib.Path:
    """Writes the resolved config (and the `--config` it came from) to <workdir>/config.json, atomically."""
    path = pathlib.Path(workdir) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = {"config_file": source, "config": _unflatten(_values(config))}
    text = json.dumps(saved, indent=2, sort_keys=True)
    partial = path.with_name(f".{FILE}.partial")
    partial.write_text(text + "\n")
    os.replace(partial, path)
    return path


def load(workdir: str | pathlib.Path) -> dict[str, Any] | None:
    """{'config_file': ..., 'config': {...}} as saved in the workdir, or None for a run that kept none."""
    path = pathlib.Path(workdir) / FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        saved["config"], saved["config_file"]  # noqa: B018 - both must be there
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"{path}: not a saved run config ({err}); delete it to start the run anew"
        ) from None
    return saved


def _show(value: Any) -> str:
    return "None" if value is None else json.dumps(value)


def _set(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = config
    for name in parents:
        node = node[name]
    current = node[leaf]
    if isinstance(value, list) and (current is None or isinstance(current, tuple)):
        value = tuple(value)
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    node[leaf] = value


def for_evaluation(
    config: ml_collections.ConfigDict, overrides: list[str], saved: dict[str, Any], workdir: str
) -> ml_collections.ConfigDict:
    """The run's saved config with the command line's `overrides` (dotted fields) applied from `config`.

    `config` is the `--config` file with the command line applied; an override of a protected field to
    another value than the run's, or a config of another method or task, is refused.
    """
    theirs = flatten(saved["config"])
    mine = _values(config)
    for path in ("task", "method"):
        if path in theirs and mine.get(path) != theirs[path]:
            raise ConfigError(
                f"{path}: the run in {workdir} was trained as {theirs[path]!r}, this --config is "
                f"{mine.get(path)!r} (the run's own is {saved['config_file']})"
            )
    for path in overrides:
        if path in OTHER_CASES_FIELDS and mine.get("eval.data_root"):
            continue  # it describes the other folder's cases, not the run
        if protected(path) and path in theirs and mine.get(path) != theirs[path]:
            hint = (
                "to score other cases use --config.eval.data_root"
                if path.startswith("data.")
                else "its checkpoints fit only that network"
            )
            raise ConfigError(
                f"{path}={_show(mine.get(path))}: the run in {workdir} was trained with "
                f"{path}={_show(theirs[path])}; {hint}"
            )
    result = config.copy_and_resolve_references()
    for path, value in theirs.items():
        if path not in overrides and path in mine:
            _set(result, path, value)
    return result


def check_resume(config: ml_collections.ConfigDict, saved: dict[str, Any], workdir: str) -> None:
    """A run resumed with another network or other data stops with one line naming the first difference."""
    theirs = flatten(saved["config"])
    mine = _values(config)
    for path in sorted(set(theirs) | set(mine)):
        if protected(path) and path in theirs and path in mine and mine[path] != theirs[path]:
            raise ConfigError(
                f"{path}: the run in {workdir} was trained with {_show(theirs[path])}, this command gives "
                f"{_show(mine[path])}; resume it with its own settings ({saved['config_file']}) or use a "
                "new --workdir"
            )


def network_from(config: ml_collections.ConfigDict, source: str, overrides: list[str]) -> None:
    """Sets `config`'s network fields (model.*) from the run in `source` (for `train.init_from`), except
    those the command line sets itself; a source that kept no config leaves `config` as it is."""
    saved = load(source)
    if saved is None:
        return
    mine = _values(config)
    for path, value in flatten(saved["config"]).items():
        if path.startswith("model.") and path not in overrides and path in mine:
            _set(config, path, value)


def has_checkpoints(workdir: str | pathlib.Path) -> bool:
    folder = pathlib.Path(workdir) / "checkpoints"
    return folder.is_dir() and any(folder.iterdir())


def keep(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, source: str) -> None:
    """At the start of training: a resumed run is checked against the config it kept; then the config is
    (re)written (a resumed run may change e.g. train.steps)."""
    saved = load(workdir)
    if saved is not None and has_checkpoints(workdir):
        check_resume(config, saved, str(workdir))
    save(config, workdir, source or (saved or {}).get("config_file", "(from Python)"))
