"""Data larger than memory: rows of a memory-mapped ``.npy`` file, read a minibatch at a time.

A Pyro program indexes its data with the indices of a subsampling plate, so the same program
runs on tensors in memory and on arrays on disk. The plate scales the minibatch likelihood by
N/B, so the objective is an unbiased estimate of the full-data negative log-likelihood, and
:func:`pyro_mle.fit` draws the minibatch in O(B) time and memory (sorted indices, so the reads
from disk go forward), then sweeps the whole file once, chunk by chunk, for ``Fit.nll``. Peak
memory stays that of a minibatch whatever the number of rows::

    x = pyro_mle.data.MemoryMappedRows("x.npy")     # (N, D) on disk; nothing is read yet
    y = pyro_mle.data.MemoryMappedRows("y.npy")     # (N,)

    def model(x, y=None, batch_size=10_000):
        w = pyro.param("w", torch.zeros(x.shape[1]))
        b = pyro.param("b", torch.zeros(()))
        with pyro.plate("data", len(x), subsample_size=batch_size) as idx:
            Normal(scale=1.0)("y", x[idx] @ w + b, obs=None if y is None else y[idx])

    result = pyro_mle.fit(model, x, y, num_steps=2000)   # Adam on minibatches

Write such a file without holding it in memory with :func:`numpy.lib.format.open_memmap`, a
block of rows at a time.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

_TORCH_DTYPES = {
    np.dtype(np.float16): torch.float16,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.int16): torch.int16,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.bool_): torch.bool,
}


class MemoryMappedRows:
    """The rows of a ``.npy`` file, memory-mapped and read on indexing.

    ``rows[idx]`` with a tensor of row indices (a plate's), a slice, an integer or an array
    returns a new :class:`torch.Tensor` holding only those rows, of ``dtype`` on ``device``.
    Consecutive indices are read as one slice. Nothing else is loaded: the operating system
    pages the file in as rows are read, and can drop those pages again under memory pressure.

    Fields: ``path``; ``array`` (the read-only :class:`numpy.memmap`); ``shape``; ``dtype``
    (of the tensors returned); ``device``.

    :param path: a ``.npy`` file with at least one dimension (rows first).
    :param dtype: torch dtype of the returned tensors (default: the file's own).
    :param device: where returned tensors go (default: CPU).
    """

    def __init__(self, path: str | os.PathLike, dtype: torch.dtype | None = None, device: Any = None):
        self.path = os.fspath(path)
        array = _memory_map(self.path)
        if array.ndim == 0:
            raise ValueError(f"MemoryMappedRows({self.path!r}): the array is a scalar; it needs rows.")
        if array.dtype.kind == "c":
            raise ValueError(
                f"MemoryMappedRows({self.path!r}): dtype {array.dtype} is complex; the fit works on real numbers. "
                "Save the real part (a.real), the modulus (np.abs(a)), or the real and imaginary parts as two "
                "columns (np.stack([a.real, a.imag], axis=-1)) with numpy.save."
            )
        if array.dtype not in _TORCH_DTYPES:
            raise ValueError(
                f"MemoryMappedRows({self.path!r}): dtype {array.dtype} has no torch counterpart; "
                f"use one of {sorted(str(d) for d in _TORCH_DTYPES)}."
            )
        self.array = array
        self.dtype = dtype if dtype is not None else _TORCH_DTYPES[array.dtype]
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.array.shape)

    def __len__(self) -> int:
        return self.array.shape[0]

    def __repr__(self) -> str:
        return f"MemoryMappedRows({self.path!r}, shape={tuple(self.shape)}, dtype={self.dtype})"

    def __getitem__(self, index: torch.Tensor | np.ndarray | slice | int) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            if index.dtype == torch.bool or index.is_floating_point():
                raise TypeError(f"{self!r}: index with integer row indices (a plate's), not a {index.dtype} tensor.")
            index = index.detach().cpu().numpy()
        if isinstance(index, list):
            index = np.asarray(index)
        if isinstance(index, (int, np.integer)) or (
            isinstance(index, np.ndarray) and index.dtype.kind in "iu" and index.size
        ):
            self._check_in_range(index)
        if isinstance(index, np.ndarray) and index.ndim == 1 and len(index) > 1:
            first, last = int(index[0]), int(index[-1])
            if 0 <= first and last - first == len(index) - 1 and bool(np.all(np.diff(index) == 1)):
                index = slice(first, last + 1)  # a plate's chunk: one contiguous read
        rows = self.array[index]
        if isinstance(index, (slice, int, np.integer)):
            rows = np.array(rows)  # a view of the read-only mapping: copy the rows out
        rows = np.ascontiguousarray(rows)  # fancy indexing has already copied
        return torch.from_numpy(rows).to(device=self.device, dtype=self.dtype)

    def _check_in_range(self, index: np.ndarray | int) -> None:
        """Refuse row indices outside ``[-len, len)``, naming this file and its length: another
        array of the same model with more rows gives them, and NumPy's error names neither."""
        n = len(self)
        low, high = (int(np.min(index)), int(np.max(index))) if isinstance(index, np.ndarray) else (index, index)
        if low < -n or high >= n:
            bad = high if high >= n else low
            raise IndexError(
                f"{self!r}: row {bad} is out of range; the file has {n:,} rows. If it comes from a plate over "
                "another array's length, that array has more rows than this one: every array of a model needs "
                "one row per example (save them with the same number of rows)."
            )


def _memory_map(path: str) -> np.ndarray:
    """``np.load(path, mmap_mode="r")``, refusing what cannot be mapped with the fix: a ``.npz``
    archive (several arrays, compressed or not), an array of Python objects, anything else."""
    try:
        loaded = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        if _holds_objects(path):
            raise ValueError(
                f"MemoryMappedRows({path!r}): the array holds Python objects (dtype=object), which cannot be "
                "memory-mapped. Convert it to numbers (np.asarray(a, dtype=np.float64)) and save that with "
                "numpy.save."
            ) from None
        raise ValueError(
            f"MemoryMappedRows({path!r}): cannot memory-map it as a .npy file ({e}). Write the "
            "array with numpy.save, or block by block with numpy.lib.format.open_memmap."
        ) from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        names = list(loaded.files)
        loaded.close()
        raise ValueError(
            f"MemoryMappedRows({path!r}): this is a .npz archive of the arrays {names}, which cannot be "
            "memory-mapped. Save each array with numpy.save (np.save('x.npy', archive['x'])) and open each "
            "file with MemoryMappedRows; or, if it fits in memory, np.load the archive and pass one array."
        )
    return loaded


def _holds_objects(path: str) -> bool:
    """Whether ``path`` is a ``.npy`` file whose header declares an object (or object-holding) dtype."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            _, _, dtype = read(fh)
    except (OSError, ValueError):
        return False
    return bool(dtype.hasobject)


__all__ = ["MemoryMappedRows"]
