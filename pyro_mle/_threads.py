"""How many CPU threads a fit's tensor work gets: one, unless the work is large enough to pay
for splitting it.

Torch runs every operation on a tensor above its grain size (32,768 elements) with all of the
process's threads, which then wait for each other at the end of the operation. On a machine
with other work running (a CI runner, a shared server, a notebook beside another job) the
slowest thread sets the pace: measured on 2 busy cores, one fused Adam step on 21 floats took
666 µs with the default threads against 80 µs with one, and a whole Adam fit on 10⁴ rows ran
18.8x slower than a hand-written loop instead of 1.2x. On an idle machine a second thread
gains nothing below about 10⁶ elements per evaluation (value-and-gradient of a least-squares
model, float32: 0.67 ms either way at 10⁴ x 20, 15 % faster at 10⁵ x 20, 30 % at 10⁶ x 20).
With a busy core the loss is far larger than that gain: least squares at 10⁵ x 20 rows took
677 ms a fit on two threads against 100 ms on one (load 3 on 2 cores). So a fit whose
evaluations touch fewer than :data:`PARALLEL_MIN_ELEMENTS` elements (4·10⁶: 2·10⁵ rows of 20
columns) runs on one thread; larger ones keep the caller's setting, where the second thread's
30 % pays. The caller's setting is restored afterwards.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

#: evaluations touching fewer elements than this run on one thread
PARALLEL_MIN_ELEMENTS = 1 << 22


def work_elements(args: tuple, kwargs: dict, fraction: float = 1.0) -> tuple[int, bool]:
    """Elements of data one evaluation reads: the sizes of the array-like arguments (tensors,
    NumPy arrays, memory-mapped rows; inside tuples, lists and dicts too), times ``fraction``
    (the share of rows a subsampling plate draws); and whether any of them is a CUDA tensor."""
    total, cuda = 0, False

    def visit(value: Any, depth: int) -> None:
        nonlocal total, cuda
        if isinstance(value, torch.Tensor) and value.is_cuda:
            cuda = True
        shape = getattr(value, "shape", None)
        if shape is not None and not isinstance(value, type):
            try:
                total += math.prod(int(s) for s in shape)
            except (TypeError, ValueError):
                pass
        elif isinstance(value, (tuple, list)) and depth < 2:
            for v in value:
                visit(v, depth + 1)
        elif isinstance(value, dict) and depth < 2:
            for v in value.values():
                visit(v, depth + 1)

    for v in (*args, *kwargs.values()):
        visit(v, 0)
    return int(total * fraction), cuda


@contextlib.contextmanager
def threads_for(elements: int, cuda: bool = False) -> Iterator[int]:
    """Run the block on one CPU thread when ``elements`` is below :data:`PARALLEL_MIN_ELEMENTS`
    (CUDA work is not split over CPU threads: left as it is); yields the thread count used."""
    before = torch.get_num_threads()
    if cuda or elements >= PARALLEL_MIN_ELEMENTS or before == 1:
        yield before
        return
    torch.set_num_threads(1)
    try:
        yield 1
    finally:
        torch.set_num_threads(before)
