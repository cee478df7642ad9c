"""Writes a .npy file block by block, so arrays larger than memory stream to disk.

A numpy memmap of the whole output would keep every written page resident in the process
(its RSS grows to the file size); plain appends after the header keep memory flat. The file is
written as `PATH.partial` and renamed on `close()`, so a killed run never leaves a truncated
array under the final name.
"""

import os

import numpy as np


class NpyStreamWriter:
    """Appends rows to a .npy file of a shape fixed up front.

    Usage: `with NpyStreamWriter(path, (N, R, F), np.float32) as writer: writer.append(block)`
    where each block is [n, R, F]; closing checks that exactly N rows arrived.
    """

    def __init__(self, path: str, shape: tuple, dtype):
        self.path = path
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.rows_written = 0
        self._partial = path + ".partial"
        self._file = open(self._partial, "wb")
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": self.shape,
        }
        np.lib.format.write_array_header_2_0(self._file, header)

    def append(self, block: np.ndarray) -> None:
        """Appends `block` [n, *shape[1:]] (cast to the writer's dtype)."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:]:
            raise ValueError(
                f"{self.path}: block rows have shape {block.shape[1:]}, expected {self.shape[1:]}"
            )
        if self.rows_written + block.shape[0] > self.shape[0]:
            raise ValueError(
                f"{self.path}: {self.rows_written + block.shape[0]} rows exceed the "
                f"declared {self.shape[0]}"
            )
        self._file.write(block.tobytes())
        self.rows_written += block.shape[0]

    def close(self) -> None:
        """Finishes the file; raises if fewer rows than declared were appended."""
        if self._file.closed:
            return
        self._file.close()
        if self.rows_written != self.shape[0]:
            os.remove(self._partial)
            raise ValueError(
                f"{self.path}: wrote {self.rows_written} rows, declared {self.shape[0]}"
            )
        os.replace(self._partial, self.path)

    def abort(self) -> None:
        """Drops the partial file (after an error elsewhere)."""
        if not self._file.closed:
            self._file.close()
        if os.path.exists(self._partial):
            os.remove(self._partial)

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback):
        if error_type is None:
            self.close()
        else:
            self.abort()
