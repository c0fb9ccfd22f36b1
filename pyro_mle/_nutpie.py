"""NUTS by nutpie (Rust; Stan-style or low-rank mass-matrix adaptation) on a checked potential.

nutpie samples any Python log density through :func:`nutpie.compiled_pyfunc.from_pyfunc`: a
factory of ``logp(x) -> (log density, gradient)`` on float64 NumPy vectors, and a factory of
``expand(x)`` giving the named draws that are stored. Here ``logp`` is the negative of a
:class:`~pyro_mle.potential.Potential` (compiled and checked once per call) and ``expand``
maps the unconstrained vector to the constrained site values with Pyro's site transforms.
Chains run in parallel on nutpie's own threads, each with its own random stream derived by
nutpie from the one seed it is given.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .potential import Potential

#: nutpie's sampler statistic → ours (the form :class:`~pyro_mle.posterior.Posterior` documents)
STATS = {
    "diverging": "diverging",
    "mean_tree_accept": "acceptance_rate",
    "step_size": "step_size",
    "depth": "tree_depth",
    "n_steps": "n_steps",
    "energy": "energy",
    "logp": "lp",
    "maxdepth_reached": "reached_max_treedepth",
}
ADAPTATIONS = ("diag", "low_rank")
_FLAT = "unconstrained"


def sample(
    potential: Potential,
    num_samples: int,
    warmup: int,
    chains: int,
    seed: int,
    progress: bool,
    adaptation: str,
    target_accept: float,
    max_tree_depth: int,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Draws (site → ``(chain, draw, *shape)``, constrained) and sampler statistics
    (name → ``(chain, draw)``) of ``potential`` by nutpie's NUTS."""
    import nutpie
    from nutpie.compiled_pyfunc import from_pyfunc

    vg, dtype = potential.value_and_grad, potential.dtype

    def make_logp():
        def logp(x: np.ndarray) -> tuple[float, np.ndarray]:
            value, grad = vg(torch.from_numpy(x).to(dtype))
            # the potential is the negative log density
            return -float(value), -grad.to(torch.float64).numpy()

        return logp

    def make_expand(seed1: int, seed2: int, chain: int):
        # the unconstrained vector is stored as it is and constrained once, all draws at a time,
        # after sampling (a transform per draw in Python costs as much as a gradient)
        def expand(x: np.ndarray) -> dict[str, np.ndarray]:
            return {_FLAT: x.copy()}

        return expand

    compiled = from_pyfunc(
        potential.size,
        make_logp,
        make_expand,
        [np.dtype("float64")],
        [(potential.size,)],
        [_FLAT],
    )
    trace = nutpie.sample(
        compiled,
        draws=num_samples,
        tune=warmup,
        chains=chains,
        cores=min(chains, os.cpu_count() or 1),
        seed=seed,
        progress_bar=progress,
        adaptation=adaptation,
        save_warmup=False,
        target_accept=target_accept,
        maxdepth=max_tree_depth,
    )
    flat = torch.as_tensor(np.asarray(trace["posterior"][_FLAT].values)).to(dtype)
    with torch.no_grad():
        samples = {k: v.detach() for k, v in potential.constrain(flat).items()}
    stats_ds = trace["sample_stats"]
    stats = {}
    for theirs, ours in STATS.items():
        values = np.asarray(stats_ds[theirs].values)
        if ours in ("tree_depth", "n_steps"):
            stats[ours] = torch.as_tensor(values.astype(np.int64))
        elif ours in ("diverging", "reached_max_treedepth"):
            stats[ours] = torch.as_tensor(values.astype(bool))
        else:
            stats[ours] = torch.as_tensor(values.astype(np.float64))
    # nutpie's depth counts the doublings it kept, not the last one that turned back (its
    # n_steps includes that one); ours is Stan's and Pyro's treedepth__, the doublings taken,
    # so 2**(depth-1) <= n_steps < 2**depth
    stats["tree_depth"] = torch.ceil(torch.log2(stats["n_steps"].double() + 1)).long()
    return samples, stats


def seed_for(seed: int) -> int:
    """nutpie takes one unsigned 64-bit seed."""
    return int(seed) % 2**63
