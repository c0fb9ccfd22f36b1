"""The vmap tier of the pointwise log-likelihood against the loop over draws, on a program
written ``X @ w`` (which does not broadcast over an extra plate, so the broadcast tier fails).

Run ``python -m benchmarks.pointwise_vmap`` (``--n 1000 --d 10 --draws 2000 --repeats 7``).
Timings are interleaved (vmap, loop, vmap, loop, ...) and the medians reported, with the
largest difference between the two tiers' values.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import pyro.distributions as dist
import torch

from pyro_mle import _replay


def make_program(d: int):
    def model(X, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(d, dtype=X.dtype), 1.0).to_event(1))
        scale = pyro.sample("scale", dist.HalfNormal(torch.tensor(1.0, dtype=X.dtype)))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal(X @ w, scale), obs=y)

    return model


def main(args: argparse.Namespace) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(args.n, args.d, generator=g, dtype=torch.float64)
    y = X @ torch.randn(args.d, generator=g, dtype=torch.float64) + 0.5 * torch.randn(
        args.n, generator=g, dtype=torch.float64
    )
    draws = {
        "w": torch.randn(args.draws, args.d, generator=g, dtype=torch.float64),
        "scale": 0.3 + torch.rand(args.draws, generator=g, dtype=torch.float64),
    }
    model = make_program(args.d)
    times: dict[str, list[float]] = {"vmap": [], "loop": []}
    values = {}
    for _ in range(args.repeats):
        for tier in ("vmap", "loop"):
            start = time.perf_counter()
            out, how = _replay.pointwise_log_likelihood(model, draws, (X, y), tiers=(tier,))
            times[tier].append(time.perf_counter() - start)
            assert how == tier, (how, tier)
            values[tier] = out["y"]
    start = time.perf_counter()
    _, how = _replay.pointwise_log_likelihood(model, draws, (X, y))
    default = time.perf_counter() - start
    vmap_s, loop_s = statistics.median(times["vmap"]), statistics.median(times["loop"])
    result = {
        "vmap_s": vmap_s,
        "loop_s": loop_s,
        "speedup": loop_s / vmap_s,
        "default_s": default,
        "default_tier": how,
        "max_abs_diff": float((values["vmap"] - values["loop"]).abs().max()),
    }
    print(
        f"N={args.n} D={args.d} draws={args.draws} threads={torch.get_num_threads()}: vmap {vmap_s:.3f} s, "
        f"loop {loop_s:.3f} s (medians of {args.repeats}, interleaved): {result['speedup']:.1f}x; "
        f"default path ({how}, broadcast attempt included) {default:.3f} s; "
        f"max |vmap - loop| = {result['max_abs_diff']:.2e}"
    )
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--d", type=int, default=10)
    p.add_argument("--draws", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=7)
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
