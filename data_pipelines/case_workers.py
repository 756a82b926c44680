"""Per-case work (checking, preparing) spread over worker processes, with one progress bar.

Reading and decompressing NIfTI volumes is most of the time a large dataset costs before training, and each
case is independent. Workers are spawned, not forked: the parent may already run JAX and TensorFlow threads,
which a fork does not carry over safely. A spawned worker would normally run the parent's script again (and a
script without `if __name__ == "__main__":` would start its own work in every worker); the jobs here are
functions of this package, so the workers are started without it (`_without_main_script`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
MAX_WORKERS = 8  # each worker holds one case's volumes (~0.5-1 GB for a 240 x 240 x 155 BraTS case)
# A spawned worker costs ~1 s of imports; below this much input the cases are read faster in this process.
MIN_PARALLEL_BYTES = 64 * 2**20


def default_workers(jobs: int, input_bytes: int | None = None) -> int:
    """One per core, at most MAX_WORKERS, never more than the jobs; one when the input is small."""
    if input_bytes is not None and input_bytes < MIN_PARALLEL_BYTES:
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS, jobs))


def case_bytes(cases: Sequence[Any]) -> int:
    """The size of the cases' files (`CaseFiles.files`)."""
    return sum(path.stat().st_size for case in cases for path in case.files)


def run(
    fn: Callable[..., T],
    jobs: Sequence[tuple[Any, ...]],
    *,
    workers: int = 0,
    input_bytes: int | None = None,
    desc: str,
    progress: bool = True,
) -> Iterator[tuple[int, T]]:
    """(index, fn(*jobs[index])) as each finishes; `fn` must be a module-level function (it is pickled).

    `workers`: processes (0 = `default_workers` for `input_bytes`; 1 = in this process, in order). An
    exception of a job is raised here, and the jobs not started are cancelled.
    """
    if not jobs:
        return
    workers = workers or default_workers(len(jobs), input_bytes)
    with tqdm(total=len(jobs), desc=desc, unit="case", disable=not progress) as bar:
        if workers == 1:
            for index, job in enumerate(jobs):
                result = fn(*job)
                bar.update()
                yield index, result
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            with _without_main_script():  # the workers start during the first submits
                futures = {pool.submit(fn, *job): index for index, job in enumerate(jobs)}
            try:
                for future in as_completed(futures):
                    result = future.result()
                    bar.update()
                    yield futures[future], result
            finally:
                for future in futures:
                    future.cancel()


@contextlib.contextmanager
def _without_main_script() -> Iterator[None]:
    """Hides the `__main__` module's file and spec, from which spawned workers would run the script again."""
    main = sys.modules["__main__"]
    saved = {name: getattr(main, name) for name in ("__file__", "__spec__") if hasattr(main, name)}
    try:
        for name in saved:
            setattr(main, name, None)
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)
