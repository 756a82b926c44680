"""Slice arrays kept on disk and read a row at a time, so memory does not grow with the dataset.

Each case's examples are `.npy` files in its cache folder (`case_cache`). A `RowFile` reads rows of one of
them with `os.pread`, opening the file for each read: no file position is shared, so tf.data's parallel
reads are safe, no descriptor stays open per case (thousands of cases stay under the open-file limit), and
only the rows asked for enter the process (a memory map would count every page it ever touched as the
process's memory, up to the whole file). `CaseRows` joins the cases' files into one row sequence.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np


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

    def __len__(self) -> int:
        return self.shape[0]

    def row(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.path}: row {index} of {len(self)}")
        fd = os.open(self.path, os.O_RDONLY)
        try:
            data = os.pread(fd, self._row_bytes, self._offset + index * self._row_bytes)
        finally:
            os.close(fd)
        if len(data) != self._row_bytes:
            raise ValueError(f"{self.path}: row {index} is cut short; delete its folder to prepare it again")
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


class CaseRows(RowFile):
    """The rows of several cases' `.npy` files of one array, as one sequence (case after case)."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]]):
        if not paths:
            raise ValueError("no case to read")
        self.files = [RowFile(p) for p in paths]
        first = self.files[0]
        for f in self.files[1:]:
            if f.shape[1:] != first.shape[1:] or f.dtype != first.dtype:
                raise ValueError(
                    f"{f.path}: rows {f.shape[1:]} {f.dtype} differ from {first.path}'s "
                    f"{first.shape[1:]} {first.dtype}; delete the cache folders to prepare them again"
                )
        self.path = first.path.parent.parent
        self._starts = np.cumsum([0] + [len(f) for f in self.files])
        self.shape = (int(self._starts[-1]), *first.shape[1:])
        self.dtype, self._row_shape = first.dtype, first.shape[1:]

    def row(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} of {len(self)} (cases under {self.path})")
        case = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.files[case].row(index - int(self._starts[case]))
