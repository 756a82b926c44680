"""Slice arrays kept on disk and read a row at a time, so memory does not grow with the dataset.

A prepared training set is a folder of `.npy` files (image, label, z, case), written one case at a time. A
`RowFile` reads rows of one of them with `os.pread`: no file position is shared, so tf.data's parallel reads
are safe, and only the rows asked for enter the process (a memory map would count every page it ever touched
as the process's memory, up to the whole file).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterable, Mapping

import numpy as np

KEYS = ("image", "label", "z", "case")


class RowFile:
    """The rows of a `.npy` file, read on demand: `len()`, `.shape`, `.dtype`, `[i]`, `[a:b]`, `[indices]`."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = pathlib.Path(path)
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
                    version, np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(f)
            except ValueError as err:
                raise ValueError(
                    f"{self.path}: not a readable .npy file ({err}); delete its folder to prepare it again"
                ) from None
            self._offset = f.tell()
        if fortran:
            raise ValueError(f"{self.path}: Fortran-ordered arrays are not supported")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._row_shape = self.shape[1:]
        self._row_bytes = int(np.prod(self._row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDONLY)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def __len__(self) -> int:
        return self.shape[0]

    def row(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.path}: row {index} of {len(self)}")
        data = os.pread(self._fd, self._row_bytes, self._offset + index * self._row_bytes)
        return np.frombuffer(data, self.dtype).reshape(self._row_shape)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.row(int(key) + (len(self) if key < 0 else 0))
        indices = range(len(self))[key] if isinstance(key, slice) else np.asarray(key).reshape(-1)
        rows = [self.row(int(i)) for i in indices]
        return np.stack(rows) if rows else np.zeros((0, *self._row_shape), self.dtype)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # np.asarray(row_file): the whole array
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


def write_cases(folder: pathlib.Path, cases: Iterable[Mapping[str, np.ndarray]]) -> dict[str, RowFile]:
    """Writes each case's slice arrays (KEYS) to <folder>/<key>.npy, holding one case in memory at a time.

    Cases go to a temporary folder first (their row counts are known only at the end), then into the final
    files; the folder appears complete or not at all.
    """
    folder = pathlib.Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        counts, examples = [], {}
        for i, case in enumerate(cases):
            for key in KEYS:
                np.save(work / f"{i}_{key}.npy", case[key])
            counts.append(len(case["z"]))
            examples = {key: case[key] for key in KEYS}
        if not examples:
            raise ValueError("no case to write")
        total = sum(counts)
        done = work / "arrays"
        done.mkdir()
        for key in KEYS:
            shape = (total, *examples[key].shape[1:])
            out = np.lib.format.open_memmap(done / f"{key}.npy", "w+", examples[key].dtype, shape)
            start = 0
            for i, count in enumerate(counts):
                out[start : start + count] = np.load(work / f"{i}_{key}.npy")
                start += count
            out.flush()
            del out
        try:
            os.replace(done, folder)
        except OSError:  # another process wrote the same folder first: theirs is the same data
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return read_folder(folder)


def read_folder(folder: pathlib.Path) -> dict[str, RowFile]:
    return {key: RowFile(pathlib.Path(folder) / f"{key}.npy") for key in KEYS}
