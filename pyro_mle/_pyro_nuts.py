"""NUTS by Pyro (:class:`pyro.infer.NUTS`), the fallback engine.

It runs on the same checked :class:`~pyro_mle.potential.Potential` as nutpie (so a wrong
trace is caught before sampling, which Pyro's own ``jit_compile`` does not do), or on the
program itself for what a potential of one flat vector cannot hold: discrete latent sites
that Pyro enumerates, and subsampling plates. Chains run one after another, each from its
own seed spawned from the run's (:func:`pyro_mle._rng.spawn_seeds`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from pyro.infer import MCMC, NUTS

from ._rng import rng_scope, spawn_seeds
from .potential import Potential, pyro_potential_fn

INIT_TRIES = 100


class SamplerFallbackWarning(UserWarning):
    """NUTS did not run on the requested engine's compiled potential: nutpie cannot take the
    program (discrete latent sites that Pyro enumerates), so Pyro's NUTS ran it interpreted.
    The draws are right; the run is slower. ``Posterior.info["fallback"]`` records the reason."""


def warn_fallback(model: Callable, sampler: str, reason: str, compile: bool = True) -> None:
    """Say that Pyro's NUTS ran the program interpreted instead of ``sampler`` on a compiled
    potential, and why (stack level: the caller of :func:`pyro_mle.posterior`). Silent for
    ``sampler="pyro"`` without ``compile``: the interpreted Pyro NUTS is what was asked for."""
    if sampler == "pyro" and not compile:
        return
    name = getattr(model, "__name__", model)
    engine = "nutpie cannot sample it" if sampler == "nutpie" else "its potential cannot be compiled"
    warnings.warn(
        f"posterior(sampler={sampler!r}): {engine} ({reason}); Pyro's NUTS ran model {name!r} interpreted "
        "instead (chains one after another, slower; the draws are exact). post.info['fallback'] records "
        "the reason; marginalise discrete sites by hand to get the compiled engines' speed.",
        SamplerFallbackWarning,
        stacklevel=4,
    )


class _RecordingNUTS(NUTS):
    """NUTS that keeps per-draw statistics Pyro computes but does not store.

    The mean acceptance probability of each transition is recovered exactly from Pyro's
    running mean (a_n = n·m_n − (n−1)·m_{n−1}); tree depth and leapfrog steps are counted
    from the top-level and base-case tree builds; the energy is the Hamiltonian with the
    freshly drawn momentum, the first kinetic energy evaluated in a transition.
    """

    def setup(self, warmup_steps, *args, **kwargs):
        self.records = {k: [] for k in ("diverging", "acceptance_rate", "step_size", "tree_depth", "n_steps")}
        self.records["energy"] = []
        self.records["lp"] = []
        self._level = self._depth = self._steps = 0
        self._start_energy = None
        return super().setup(warmup_steps, *args, **kwargs)

    def _kinetic_energy(self, r_unscaled):
        k = super()._kinetic_energy(r_unscaled)
        if self._start_energy is None:
            self._start_energy = k
        return k

    def _build_tree(self, *args, **kwargs):
        if self._level == 0:
            self._depth += 1
        self._level += 1
        try:
            return super()._build_tree(*args, **kwargs)
        finally:
            self._level -= 1

    def _build_basetree(self, *args, **kwargs):
        self._steps += 1
        return super()._build_basetree(*args, **kwargs)

    def sample(self, params):
        self._depth, self._steps, self._start_energy = 0, 0, None
        n_div, mean_before = len(self._divergences), self._mean_accept_prob
        _, potential_before, _ = self._fetch_from_cache()
        z = super().sample(params)
        if self._t > self._warmup_steps:
            n = self._t - self._warmup_steps
            r = self.records
            r["diverging"].append(len(self._divergences) > n_div)
            # a probability: the difference of running means can leave [0, 1] by rounding
            accept = n * self._mean_accept_prob - (n - 1) * (mean_before if n > 1 else 0.0)
            r["acceptance_rate"].append(min(1.0, max(0.0, float(accept))))
            r["step_size"].append(float(self.step_size))
            r["tree_depth"].append(self._depth)
            r["n_steps"].append(self._steps)
            start = self._start_energy
            energy = (
                float(start) + float(potential_before)
                if start is not None and potential_before is not None
                else math.nan
            )
            r["energy"].append(energy)
            _, potential, _ = self._fetch_from_cache()
            r["lp"].append(-float(potential) if potential is not None else math.nan)
        return z


def _initial_point(potential: Potential) -> dict[str, torch.Tensor]:
    """Pyro's ``init_to_uniform`` for a potential: uniform(-2, 2) in the unconstrained space,
    redrawn until the density is positive there (from the global generators, seeded per chain)."""
    for _ in range(INIT_TRIES):
        x = (torch.rand(potential.size, dtype=torch.float64) * 4 - 2).to(potential.dtype)
        if math.isfinite(float(potential.value_and_grad(x)[0])):
            return potential.unflatten(x)
    raise ValueError(
        f"posterior(sampler='pyro'): no point with a finite log density in {INIT_TRIES} uniform(-2, 2) draws of "
        "the unconstrained space; check the priors' supports and the data."
    )


def sample(
    target: Potential | Callable,
    args: tuple,
    kwargs: dict,
    num_samples: int,
    warmup: int,
    chains: int,
    seed: int | None,
    progress: bool,
    target_accept: float,
    max_tree_depth: int,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Draws and statistics, as :func:`pyro_mle._nutpie.sample`; ``target`` is a checked
    potential, or the program itself (run interpreted, with ``args``/``kwargs``)."""
    per_chain, stats = [], []
    # one independent stream per chain; never seed + c, which would make chain 1 of seed 0
    # chain 0 of seed 1
    for chain_seed in spawn_seeds(seed, chains):
        with rng_scope(chain_seed):
            if isinstance(target, Potential):
                kernel = _RecordingNUTS(
                    potential_fn=pyro_potential_fn(target),
                    target_accept_prob=target_accept,
                    max_tree_depth=max_tree_depth,
                )
                mcmc = MCMC(
                    kernel,
                    num_samples=num_samples,
                    warmup_steps=warmup,
                    num_chains=1,
                    initial_params=_initial_point(target),
                    disable_progbar=not progress,
                )
                mcmc.run()
                draws = mcmc.get_samples()
                flat = torch.cat([draws[k].reshape(num_samples, -1) for k, _ in target.layout], dim=-1)
                per_chain.append({k: v.detach() for k, v in target.constrain(flat.detach()).items()})
            else:
                kernel = _RecordingNUTS(target, target_accept_prob=target_accept, max_tree_depth=max_tree_depth)
                mcmc = MCMC(
                    kernel, num_samples=num_samples, warmup_steps=warmup, num_chains=1, disable_progbar=not progress
                )
                try:
                    mcmc.run(*args, **kwargs)
                except NotImplementedError as e:
                    if "subsample" not in str(e):
                        raise
                    raise ValueError(
                        f"posterior(method='nuts'): model {getattr(target, '__name__', target)!r} has a subsampling "
                        "plate (pyro.plate(..., subsample_size=...)); NUTS needs the log density of all the "
                        "data, and a minibatch makes it random. Run NUTS without subsample_size (pass the "
                        "program's batch size as None), or use method='vi', which takes minibatches."
                    ) from e
                per_chain.append({k: v.detach() for k, v in mcmc.get_samples().items()})
        stats.append(kernel.records)
    samples = {k: torch.stack([ch[k] for ch in per_chain]) for k in per_chain[0]}
    sample_stats = {}
    for k in stats[0]:
        dtype = torch.bool if k == "diverging" else torch.long if k in ("tree_depth", "n_steps") else torch.float64
        sample_stats[k] = torch.tensor([s[k] for s in stats], dtype=dtype)
    # Pyro stops doubling at max_tree_depth whether or not the trajectory turned
    sample_stats["reached_max_treedepth"] = sample_stats["tree_depth"] >= max_tree_depth
    return samples, sample_stats
