"""Config files as `--config` names them (`configs/btsegdiff.py:real`), loaded without absl's flags.

For what reads a config outside the programs' flag parsing: the fill-in route's second config, and the
command line's explanation of a bad override (which needs the config the override failed on).
"""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

ROOT = pathlib.Path(__file__).resolve().parents[1]


def find_config_file(path_text: str) -> pathlib.Path | None:
    """A config file's absolute path: a path (relative to the current folder, else to the package's root),
    or the name of a config shipped with the package ('btsegdiff' -> configs/btsegdiff.py)."""
    shipped = ROOT / "configs" / f"{path_text}.py"
    for path in (pathlib.Path(path_text), ROOT / path_text, shipped):
        if path_text and path.is_file():
            return path.resolve()
    return None


def load_config(spec: str, what: str = "--config") -> ml_collections.ConfigDict:
    """'configs/m2dn.py' or 'configs/m2dn.py:smoke' -> the ConfigDict (paths relative to here or the repo)."""
    path_text, _, preset = spec.partition(":")
    path = find_config_file(path_text)
    if path is None:
        raise FileNotFoundError(f"{what}: no config file {path_text}")
    spec_obj = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec_obj)
    spec_obj.loader.exec_module(module)
    return module.get_config(preset or None)


def config_file_of(config: ml_collections.ConfigDict) -> str:
    """The `--config` that gives this config's method and preset ('' when the method has no file here)."""
    path = ROOT / "configs" / f"{config.get('method', '')}.py"
    return f"{path}:{config.get('preset', 'default')}" if path.is_file() else ""
