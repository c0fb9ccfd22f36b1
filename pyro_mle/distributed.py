r"""Data-parallel point fits with :mod:`torch.distributed`: every process holds a shard of the rows.

:func:`fit_distributed` is :func:`pyro_mle.fit` run by several processes at once, each on its
own block of rows, with the gradient averaging of PyTorch's
:class:`~torch.nn.parallel.DistributedDataParallel` done by ``torch.distributed.all_reduce``
(gloo on CPU, NCCL between GPUs):

* the program is the same as for one process, run on the local shard;
* a process holding a share :math:`w_r = N_r/N` of the observed data scales its likelihood by
  :math:`1/w_r`, so its objective :math:`L_r` estimates the whole one, as a subsampling plate
  does for a minibatch; the prior (MAP) is not scaled;
* after every evaluation the objectives and gradients are averaged with weights :math:`w_r`
  in one all-reduce: :math:`\sum_r w_r L_r = -\log p(y\mid\theta) - \log p(\theta)` exactly,
  the plain average of DistributedDataParallel when the shards are equal;
* process 0's initial parameters are broadcast first, and since every decision of the
  optimiser (L-BFGS line searches, Adam's windows, the stopping test) is taken on averaged
  values, all processes take the same steps, stop together and return the same :class:`Fit`.
  ``Fit.nll`` is summed over the shards.

A script, run by every process::

    import pyro_mle.distributed as pmd

    pmd.init_process_group()                  # from torchrun's environment; gloo on CPU
    x, y = load()                             # or read only this process's rows
    x_local, y_local = pmd.shard(x, y)        # contiguous blocks of rows, one per process
    result = pmd.fit_distributed(model, x_local, y_local)

launched on one machine with 2 processes::

    torchrun --standalone --nproc-per-node=2 script.py

and on two machines with 4 processes each (run the same line on both; HOST is the first
machine's address, reachable from the other)::

    torchrun --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \
        --rdzv-id=fit1 script.py

With GPUs, put each process's data on ``cuda:LOCAL_RANK`` and the process group uses NCCL.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from pyro.poutine.runtime import Message

from .fit import _fit
from .results import Fit


def init_process_group(backend: str | None = None, timeout_s: float = 600.0) -> None:
    """Join the process group described by the environment (``torchrun`` sets ``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``), unless one is already initialised.

    :param backend: ``"gloo"`` (CPU tensors) or ``"nccl"`` (CUDA tensors); default NCCL when
        CUDA is available, else gloo.
    :param timeout_s: how long a collective waits for the other processes before it fails
        (a process that died, for example), instead of hanging.
    """
    if dist.is_initialized():
        return
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"pyro_mle.distributed: no process group, and the environment lacks {missing}. Launch the script "
            "with torchrun (torchrun --standalone --nproc-per-node=2 script.py), or call "
            "torch.distributed.init_process_group yourself."
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))


def shard_range(num_rows: int, rank: int | None = None, world_size: int | None = None) -> range:
    """The rows of process ``rank`` among ``world_size``: contiguous blocks whose sizes differ
    by at most one, the first ``num_rows % world_size`` processes taking one more row
    (as :func:`numpy.array_split`). Defaults: this process's rank and the group's size.
    Fewer rows than processes raise :class:`ValueError` on every process alike (no empty shard)."""
    rank, world_size = _rank_and_size(rank, world_size)
    num_rows = int(num_rows)
    if num_rows == 0:
        raise ValueError(f"shard: the arrays have no rows to split over {world_size} processes. Check the data loaded.")
    if num_rows < world_size:  # every process raises alike, before any collective can wait on one
        raise ValueError(
            f"shard: {num_rows} rows cannot be split over {world_size} processes; every process needs at least "
            f"one row (an empty shard has no likelihood to fit). Launch at most {num_rows} processes "
            f"(torchrun --nproc-per-node={num_rows}), or fit on one process with pyro_mle.fit."
        )
    base, extra = divmod(num_rows, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def shard(*arrays: Any, rank: int | None = None, world_size: int | None = None) -> tuple[Any, ...]:
    """This process's block of rows of each array (tensors, NumPy arrays,
    :class:`~pyro_mle.data.MemoryMappedRows`, which then loads just that block). All arrays
    must have the same number of rows."""
    if not arrays:
        raise ValueError("shard: give at least one array.")
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"shard: the arrays have different numbers of rows {[len(a) for a in arrays]}.")
    rows = shard_range(lengths.pop(), rank, world_size)
    return tuple(a[rows.start : rows.stop] for a in arrays)


def fit_distributed(
    model: Callable[..., Any],
    *args: Any,
    method: str = "mle",
    optimizer: str | None = None,
    num_steps: int | None = None,
    lr: float | None = None,
    seed: int | None = 0,
    progress: bool | None = None,
    rtol: float | None = None,
    gtol: float | None = None,
    init_loc_fn: Callable[[Message], torch.Tensor] | None = None,
    jit: bool | None = None,
    group: Any = None,
    **kwargs: Any,
) -> Fit:
    """:func:`pyro_mle.fit` on this process's shard of the data, with gradients averaged over the
    processes of ``group`` (see the module docstring). Every process calls it with its own
    shard (``*args``, ``**kwargs``: the program's arguments) and the same options; all get the
    same :class:`~pyro_mle.fit.Fit`. Options are those of :func:`pyro_mle.fit`; each process
    runs on its own random stream derived from ``seed`` (``SeedSequence(seed).spawn``, so
    subsampling plates draw different minibatches) and the initial parameters are process 0's. ``progress``
    defaults to process 0 only.

    Every observed site must be sharded by rows (each process holds its own examples of it).
    The process group must exist: :func:`init_process_group` makes it from torchrun's
    environment, and is called here when the environment has it.
    """
    if not dist.is_initialized():
        init_process_group()
    rank = dist.get_rank(group)
    if progress is None:
        progress = rank == 0 and bool(getattr(sys.stderr, "isatty", lambda: False)())
    return _fit(
        model,
        args,
        kwargs,
        method=method,
        optimizer=optimizer,
        num_steps=num_steps,
        lr=lr,
        seed=seed,
        rank=rank,
        progress=progress,
        rtol=rtol,
        gtol=gtol,
        init_loc_fn=init_loc_fn,
        jit=jit,
        collective=TorchCollective(group),
        caller="fit_distributed",
    )


class TorchCollective:
    """:class:`pyro_mle.fit.Collective` over a :mod:`torch.distributed` process group: sums by
    ``all_reduce`` and broadcasts from rank 0, on the backend's device (CPU for gloo,
    ``cuda:current`` for NCCL)."""

    def __init__(self, group: Any = None):
        self.group = group
        backend = dist.get_backend(group)
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def sum(self, value: float) -> float:
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return float(t[0])

    def sum_(self, tensor: torch.Tensor) -> None:
        on_device = tensor.to(self.device)
        dist.all_reduce(on_device, op=dist.ReduceOp.SUM, group=self.group)
        if on_device is not tensor:
            tensor.copy_(on_device)

    def broadcast(self, tensors: Sequence[torch.Tensor]) -> None:
        src = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        with torch.no_grad():
            for t in tensors:
                buffer = t.detach().to(self.device)
                dist.broadcast(buffer, src=src, group=self.group)
                t.copy_(buffer)


def _rank_and_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        if not dist.is_initialized():
            raise RuntimeError(
                "pyro_mle.distributed.shard: no process group; pass rank= and world_size=, or call "
                "init_process_group() first."
            )
        rank = dist.get_rank() if rank is None else rank
        world_size = dist.get_world_size() if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"shard: rank must be in [0, {world_size}); got {rank}.")
    return int(rank), int(world_size)


__all__ = ["TorchCollective", "fit_distributed", "init_process_group", "shard", "shard_range"]
