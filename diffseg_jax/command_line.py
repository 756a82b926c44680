"""What the two programs say about their command line: help, a bad override, and which log lines show.

A mistyped field is named by its full path with the nearest field that exists; an error raised by a config
file comes without its class path; library INFO lines (orbax, JAX, TensorFlow) stay quiet unless
`--verbosity` asks for them, while the project's own lines and the training scalars stay.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Sequence

import ml_collections

from diffseg_jax import config_files, run_config

HELP = """{doc}

Usage: {program} --config=<method>[:<preset>] --workdir=<folder> [--config.<field>=<value> ...]

<method> is a file of configs/ (btsegdiff, medsegdiff_v1, unet_baseline, ...) or a path to a config file.

Presets: smoke | default | real | paper. Every config field is a flag (--config.train.steps=200);
--print_config prints every field with the preset and the overrides applied, then exits.
--verbosity=0 shows the libraries' INFO lines too; --helpfull lists absl's own flags.
"""

_CLASS_PREFIX = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception): ")


def strip_class_path(message: str) -> str:
    """'diffseg_jax.vocabulary.ConfigError: unknown preset' -> 'unknown preset'."""
    return _CLASS_PREFIX.sub("", message.strip())


def overrides(argv: Sequence[str]) -> list[str]:
    """The dotted field paths that `--config.<path>=value` arguments set, in order."""
    paths = []
    for arg in argv:
        match = re.match(r"--config\.([^=]+)", arg)
        if match:
            paths.append(match.group(1))
    return paths


def flag_value(argv: Sequence[str], name: str) -> str | None:
    """The value of `--name=value` (or `--name value`) in `argv`, None when absent."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def with_config_file_found(argv: list[str]) -> list[str]:
    """`argv` with `--config=<name>[:preset]` (a config shipped with the package) as that file's path."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            path, colon, preset = arg.split("=", 1)[1].partition(":")
            found = config_files.find_config_file(path)
            if found is not None:
                return [*argv[:i], f"--config={found}{colon}{preset}", *argv[i + 1 :]]
    return argv


def with_kept_config_file(argv: list[str]) -> list[str]:
    """`argv` (argv[0] first) with `--config=` set to the config file the workdir's run kept, when the
    command names none: `run_eval.py --workdir=W` evaluates W as it was trained."""
    workdir = flag_value(argv[1:], "workdir")
    if flag_value(argv[1:], "config") is not None or not workdir:
        return argv
    saved = run_config.load(workdir)
    if saved is None:
        return argv
    return [argv[0], f"--config={saved['config_file']}", *argv[1:]]


def unknown_field(argv: Sequence[str]) -> str | None:
    """One line naming the first override whose field does not exist, with the nearest one that does."""
    spec = flag_value(argv, "config")
    if spec is None:
        return None
    try:
        config = config_files.load_config(spec)
    except Exception:  # the config itself is broken: the original message says more
        return None
    for path in overrides(argv):
        node: object = config
        parts = path.split(".")
        for depth, name in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict):
                break
            if name not in node:
                known = sorted(node.keys())
                prefix = ".".join(parts[:depth])
                near = difflib.get_close_matches(name, known, n=1)
                where = f"{prefix}." if prefix else ""
                hint = (
                    f"; did you mean config.{where}{near[0]}?"
                    if near
                    else f"; config{'.' + prefix if prefix else ''} has {', '.join(known)}"
                )
                return f"unknown config field config.{path}{hint}"
            node = node[name]
    return None


class ProjectInfoOnly(logging.Filter):
    """Passes warnings and errors, and INFO lines of this project (and the training scalars clu logs)."""

    OWN = ("/diffseg_jax/", "/data_pipelines/", "/bench/", "clu/metric_writers/logging_writer")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or any(part in record.pathname for part in self.OWN)


def config_load_error(argv: Sequence[str], err: BaseException) -> str:
    """One line for a config file that failed to load: its own error, without paths of classes."""
    spec = flag_value(argv, "config")
    if spec is not None:
        try:
            config_files.load_config(spec)
        except Exception as direct:  # noqa: BLE001 - whatever the file raised
            return strip_class_path(str(direct).strip().splitlines()[-1])
    return strip_class_path(str(err).strip().splitlines()[-1])
