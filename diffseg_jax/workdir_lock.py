"""One training run per workdir (and one evaluation per output folder): a lock file held for the run's life.

Two runs writing checkpoints into one folder (a job submitted twice) corrupt each other's saves. The lock is
an `flock` on `<workdir>/.lock`, which the operating system releases when the process ends however it ends, so
a crashed or killed run never blocks the next one. The file names the holder (host, pid, since when) for the
one-line message the second run stops with.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import socket
import time
from collections.abc import Iterator

LOCK_NAME = ".lock"


class WorkdirBusy(RuntimeError):
    """Another live process holds the workdir; the message names it."""


def _holder(path: pathlib.Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"{info.get('program', 'a run')} on host {info.get('host')}, pid {info.get('pid')}, since {since}"


@contextlib.contextmanager
def hold(
    workdir: str | os.PathLike[str], program: str = "run_train", rule: str = "one training run per workdir"
) -> Iterator[pathlib.Path]:
    """Holds `<workdir>/.lock` for the block; raises WorkdirBusy at once if a live process holds it."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_NAME
    handle = open(path, "a+")  # noqa: SIM115 - held open for the whole block
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusy(f"{workdir}: in use by {_holder(path)} ({rule})") from None
        handle.seek(0)
        handle.truncate()
        info = {"program": program, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        handle.write(json.dumps(info))
        handle.flush()
        yield path
    finally:
        handle.close()  # closing releases the lock
