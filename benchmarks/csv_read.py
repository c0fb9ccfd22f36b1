"""CSV reading: :func:`pyro_mle.model_files.read_csv` against :func:`pandas.read_csv` alone.

    python -m benchmarks.csv_read                  # 10⁶ rows × 3 columns, 5 repeats
    python -m benchmarks.csv_read --n 100000 --repeats 3

Both read the same file (written once to a temporary folder, float64 values as pandas
writes them): pandas into a DataFrame with its defaults; pyro_mle into ``(x, y)`` float32
tensors, ``x`` the first two columns and ``y`` the third, with its checks (every cell a
finite number). Interleaved, after one untimed warm-up each; medians. Target of issue 10:
ratio ≤ 1.3.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

TARGET = "<= 1.3"


def write_table(path: Path, n: int, seed: int = 0) -> None:
    """An ``n``-row CSV with columns ``x1, x2, y`` (a linear model plus noise)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = x @ np.array([1.0, -2.0]) + 0.5 + 0.3 * rng.normal(size=n)
    pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "y": y}).to_csv(path, index=False)


def medians(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time of each run over ``repeats`` rounds, after one untimed warm-up each;
    the order alternates every round so that drifts of the machine fall on both sides."""
    names = list(runs)
    for name in names:
        runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def csv_read(n: int = 1_000_000, repeats: int = 5):
    """Time both readers on an ``n``-row, 3-column file; a :class:`benchmarks.run.Row`."""
    from pyro_mle.model_files import read_csv

    from .run import Row

    with tempfile.TemporaryDirectory(prefix="pyro_mle_csv_") as folder:
        path = Path(folder) / "table.csv"
        write_table(path, n)
        size_mib = path.stat().st_size / 2**20
        x, y = read_csv(path, ("x1", "x2"), ("y",))
        expected = pd.read_csv(path).to_numpy(dtype=np.float32)
        if x.shape != (n, 2) or not np.array_equal(np.c_[x.numpy(), y.numpy()], expected):
            raise RuntimeError("csv_read benchmark: pyro_mle's read_csv disagrees with pandas.read_csv")
        times = medians(
            {
                "pandas": lambda: pd.read_csv(path),
                "ours": lambda: read_csv(path, ("x1", "x2"), ("y",), dtype=torch.float32),
            },
            repeats,
        )
    return Row(
        f"read CSV, N=10^{round(math.log10(n))} x 3",
        times["ours"],
        times["pandas"],
        "pandas.read_csv alone",
        times["ours"] / times["pandas"],
        TARGET,
        details={"n": n, "columns": 3, "file_mib": round(size_mib, 1), "repeats": repeats},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="rows (default 10^6)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    args = parser.parse_args(argv)
    row = csv_read(args.n, args.repeats)
    print(
        f"{row.name}: pyro_mle {row.ours:.3f} s, {row.reference_name} {row.reference:.3f} s, "
        f"ratio {row.ratio:.2f} (target {row.target}: {'met' if row.met else 'NOT met'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
