"""Every case checked before the first training step, so a bad file stops the run at once, not the
evaluation hours later.

Two passes over every case of every split: headers (readable, one shape, one affine — cheap), then values
(finite voxels, labels of the convention, a non-empty brain). A case that passed is remembered by the
size and modification time of its files, so a second run reads nothing again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pathlib
import tempfile
from collections.abc import Callable, Sequence

from data_pipelines import brats, case_workers
from data_pipelines.brats import CaseFiles, DataError

ON_BAD_CASE = ("stop", "skip")


def case_signature(case: CaseFiles) -> str:
    """Changes when any file of the case changes (size, mtime) or is read differently (convention,
    sequences)."""
    files = []
    for path in case.files:
        stat = path.stat()
        files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    convention = case.convention if isinstance(case.convention, str) else repr(case.convention)
    text = json.dumps([case.case_id, files, convention, sorted(case.images), sorted(case.channels.items())])
    return hashlib.sha1(text.encode()).hexdigest()


def _load_passed(cache_file: pathlib.Path | None) -> set[str]:
    if cache_file is None or not cache_file.is_file():
        return set()
    try:
        return set(json.loads(cache_file.read_text()))
    except (OSError, ValueError):
        return set()  # an unreadable cache is only a cache: check again


def _save_passed(cache_file: pathlib.Path | None, passed: set[str]) -> None:
    if cache_file is None:
        return
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=f".{cache_file.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(sorted(passed), f)
        os.replace(tmp, cache_file)  # atomic: two runs never read half a cache
    except OSError as err:
        logging.warning("case check cache not written (%s): %s", cache_file, err)


def _problem(check: Callable[[CaseFiles], object], case: CaseFiles) -> DataError | None:
    """The case's one-line problem, or None (returned, not raised: it comes back from a worker process)."""
    try:
        check(case)
    except DataError as err:
        return err
    return None


def check_cases(
    cases: Sequence[CaseFiles],
    *,
    cache_file: pathlib.Path | None,
    on_bad_case: str = "stop",
    problems: Sequence[DataError] = (),
    progress: bool = True,
    workers: int = 0,
) -> list[CaseFiles]:
    """The good cases; a bad one raises its one-line DataError (``stop``) or is left out with a warning
    (``skip``). ``problems`` are errors found while discovering the cases (e.g. a missing sequence).
    The values are read by ``workers`` processes (0 = one per core; `case_workers`)."""
    if on_bad_case not in ON_BAD_CASE:
        raise DataError(f"data.on_bad_case={on_bad_case!r}: expected one of {ON_BAD_CASE}")
    bad: list[DataError] = list(problems)
    if bad and on_bad_case == "stop":
        raise bad[0]
    passed = _load_passed(cache_file)
    pending = [c for c in cases if case_signature(c) not in passed]
    failed: set[str] = set()
    for stage, check in (("headers", brats.check_headers), ("values", brats.load_case)):
        todo = [c for c in pending if c.case_id not in failed]
        stage_workers = 1 if stage == "headers" else workers  # headers are cheap: no processes
        jobs = [(check, c) for c in todo]
        size = case_workers.case_bytes(todo)  # small inputs are read in this process
        done = case_workers.run(
            _problem,
            jobs,
            workers=stage_workers,
            input_bytes=size,
            desc=f"checking {stage}",
            progress=progress,
        )
        with contextlib.closing(done):  # the bar ends before a raised error is printed
            for index, err in done:
                if err is None:
                    continue
                if on_bad_case == "stop":
                    _save_passed(cache_file, passed)
                    raise err
                failed.add(todo[index].case_id)
                bad.append(err)
    passed |= {case_signature(c) for c in pending if c.case_id not in failed}
    _save_passed(cache_file, passed)
    for err in bad:
        logging.warning("skipped a bad case: %s", err)
    if bad:
        logging.warning("skipped %d bad case(s); %d remain", len(bad), len(cases) - len(failed))
    good = [c for c in cases if c.case_id not in failed]
    if not good:
        raise DataError("no usable case: every case is bad (see the warnings above)")
    return good
