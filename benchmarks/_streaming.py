"""A fit streamed from memory-mapped ``.npy`` files, measured in a fresh process.

``python -m benchmarks._streaming write DIR ROWS`` writes ``x.npy`` (ROWS × 20, float32) and
``y.npy`` a million rows at a time (memory flat). ``python -m benchmarks._streaming fit DIR
--batch B --steps S --out OUT.json`` opens them with :class:`pyro_mle.data.MemoryMappedRows`,
fits the linear-Gaussian model by Adam on minibatches of B rows for S steps, and reports:

* ``train_rows_per_s``: S·B over the time of the optimisation loop;
* ``sweep_rows_per_s``: rows per second of the full-data NLL sweep that ends ``fit``;
* ``peak_anon_mib``: the largest anonymous resident memory (the process's own allocations:
  tensors, Python) seen by a sampler thread every 2 ms, and ``baseline_anon_mib`` before the fit;
* ``peak_rss_mib``: the kernel's high-water mark of resident memory, which also counts pages
  of the memory-mapped files (page cache the kernel can drop; they grow with the file read).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np

BLOCK = 1_000_000


def write(directory: Path, rows: int, seed: int = 0) -> None:
    from benchmarks.datasets import D

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = rng.normal(size=D).astype(np.float32)
    x = np.lib.format.open_memmap(directory / "x.npy", mode="w+", dtype=np.float32, shape=(rows, D))
    y = np.lib.format.open_memmap(directory / "y.npy", mode="w+", dtype=np.float32, shape=(rows,))
    for start in range(0, rows, BLOCK):
        stop = min(start + BLOCK, rows)
        block = rng.normal(size=(stop - start, D)).astype(np.float32)
        x[start:stop] = block
        y[start:stop] = block @ w + 0.5 + rng.normal(size=stop - start).astype(np.float32)
    x.flush()
    y.flush()
    del x, y


def _status() -> dict[str, int]:
    """Memory fields of /proc/self/status, in KiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


class _Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_anon = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak_anon = max(self.peak_anon, _status()["RssAnon"])
            time.sleep(0.002)


def fit(directory: Path, batch: int, steps: int) -> dict:
    import importlib

    import torch

    import pyro_mle
    from benchmarks.problems import streaming_model
    from pyro_mle.data import MemoryMappedRows

    fit_module = importlib.import_module("pyro_mle.objective")
    x, y = MemoryMappedRows(directory / "x.npy"), MemoryMappedRows(directory / "y.npy")
    # every pass over the whole file (the verdict on Adam's estimate, the full-data polish, the
    # final NLL) is timed apart from the minibatch steps
    sweep = {"s": 0.0, "count": 0}
    full_sweep = fit_module._sweep

    def timed_sweep(*args, **kwargs):
        start = time.perf_counter()
        try:
            return full_sweep(*args, **kwargs)
        finally:
            sweep["s"] += time.perf_counter() - start
            sweep["count"] += 1

    fit_module._sweep = timed_sweep
    # One Adam step on a tiny tensor first: torch's optimisers import much of torch on their
    # first step (a fixed ~130 MiB), which belongs to the baseline, not to the data.
    tiny = torch.zeros(1, requires_grad=True)
    tiny.sum().backward()
    torch.optim.Adam([tiny]).step()
    baseline = _status()["RssAnon"]
    sampler = _Sampler()
    sampler.start()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyro_mle.ConvergenceWarning)
        result = pyro_mle.fit(streaming_model, x, y, batch_size=batch, num_steps=steps, lr=0.01, progress=False)
    total = time.perf_counter() - start
    sampler.running = False
    sampler.join()
    status = _status()
    train = total - sweep["s"]
    return {
        "rows": len(x),
        "batch": batch,
        "steps": result.num_steps,
        "train_s": train,
        "sweep_s": sweep["s"],
        "train_rows_per_s": result.num_steps * batch / train,
        "sweeps": sweep["count"],
        "sweep_rows_per_s": sweep["count"] * len(x) / sweep["s"],
        "baseline_anon_mib": baseline / 1024,
        "peak_anon_mib": max(sampler.peak_anon, status["RssAnon"]) / 1024,
        "peak_rss_mib": status["VmHWM"] / 1024,
        "file_mib": (os.path.getsize(directory / "x.npy") + os.path.getsize(directory / "y.npy")) / 2**20,
        "nll_per_row": result.nll / len(x),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write")
    w.add_argument("directory", type=Path)
    w.add_argument("rows", type=int)
    f = sub.add_parser("fit")
    f.add_argument("directory", type=Path)
    f.add_argument("--batch", type=int, default=10_000)
    f.add_argument("--steps", type=int, default=300)
    f.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "write":
        write(args.directory, args.rows)
    else:
        args.out.write_text(json.dumps(fit(args.directory, args.batch, args.steps)))


if __name__ == "__main__":
    main()
