"""Convergence and reliability checks that warn in words, each with what to do.

* r-hat above 1.01 (Vehtari et al. 2021): chains disagree;
* bulk or tail ESS below 100 per chain: too few effective draws for stable summaries;
* divergent transitions: the sampler missed part of the posterior;
* E-BFMI below 0.3 in a chain (Betancourt 2016): the momentum resampling explores the energy
  distribution poorly (heavy tails, a funnel), the draws may be biased;
* transitions that reached the maximum tree depth: the trajectories were cut short, the
  sampler explores slowly (not a bias, an inefficiency);
* Pareto k above ArviZ's threshold (0.7, lower for few draws): the PSIS-LOO estimate is
  unreliable for those rows.

Every check returns its messages; :func:`warn` emits them as :class:`DiagnosticWarning`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

RHAT_MAX = 1.01
ESS_PER_CHAIN_MIN = 100
PARETO_K_MAX = 0.7
EBFMI_MIN = 0.3


class DiagnosticWarning(UserWarning):
    """A posterior diagnostic crossed its threshold."""


def sampling_messages(dt: Any, max_tree_depth: int | None = None) -> list[str]:
    """Messages for r-hat, ESS, divergences, E-BFMI and tree depth of a DataTree's
    ``posterior`` and ``sample_stats`` groups.

    The tree-depth check reads ``reached_max_treedepth`` when the statistics have it, else
    ``tree_depth >= max_tree_depth`` when ``max_tree_depth`` is given."""
    import arviz_stats as azs

    msgs = []
    post = dt["posterior"].to_dataset()
    chains = post.sizes.get("chain", 1)
    draws = post.sizes.get("draw", 1)
    if draws > 1 and chains > 1:
        rhat = azs.rhat(post)
        worst = _worst(rhat, np.greater)
        if worst is not None and worst[1] > RHAT_MAX:
            msgs.append(
                f"r-hat of {worst[0]} is {worst[1]:.3f} > {RHAT_MAX}: the chains have not mixed. Run longer "
                "(more warmup and draws), or reparameterise (e.g. non-centred) if it persists."
            )
    if draws > 1:
        floor = ESS_PER_CHAIN_MIN * chains
        for kind in ("bulk", "tail"):
            ess = azs.ess(post, method=kind)
            worst = _worst(ess, np.less)
            if worst is not None and worst[1] < floor:
                msgs.append(
                    f"{kind} ESS of {worst[0]} is {worst[1]:.0f} < {floor} ({ESS_PER_CHAIN_MIN} per chain): "
                    "summaries and intervals are noisy. Draw more samples or thin less."
                )
    if "sample_stats" in dt.children and "diverging" in dt["sample_stats"].data_vars:
        n_div = int(dt["sample_stats"]["diverging"].sum())
        if n_div:
            total = chains * draws
            msgs.append(
                f"{n_div} of {total} transitions diverged: the posterior has regions the sampler cannot "
                "explore (a funnel, a hard constraint). Raise target_accept (e.g. 0.95) or "
                "reparameterise; do not trust the draws as they are."
            )
    msgs += _energy_messages(dt, max_tree_depth)
    return msgs


def _energy_messages(dt: Any, max_tree_depth: int | None) -> list[str]:
    """E-BFMI per chain and transitions at the maximum tree depth."""
    import arviz_stats as azs

    if "sample_stats" not in dt.children:
        return []
    stats = dt["sample_stats"]
    msgs = []
    if "energy" in stats.data_vars and stats["energy"].sizes.get("draw", 0) > 2:
        values = np.atleast_1d(np.asarray(azs.bfmi(dt)["energy"].values, dtype=float))
        low = [(c, v) for c, v in enumerate(values) if np.isfinite(v) and v < EBFMI_MIN]
        if low:
            where = ", ".join(f"chain {c}: {v:.2f}" for c, v in low)
            msgs.append(
                f"E-BFMI below {EBFMI_MIN} ({where}): the sampler explores the energy distribution poorly "
                "(heavy tails or a funnel), so the draws may be biased. Reparameterise (e.g. non-centred) or "
                "use more informative priors."
            )
    if "reached_max_treedepth" in stats.data_vars:
        hit = np.asarray(stats["reached_max_treedepth"].values, dtype=bool)
    elif max_tree_depth is not None and "tree_depth" in stats.data_vars:
        hit = np.asarray(stats["tree_depth"].values) >= max_tree_depth
    else:
        hit = np.zeros(0, dtype=bool)
    if hit.any():
        depth = f" ({max_tree_depth})" if max_tree_depth is not None else ""
        msgs.append(
            f"{int(hit.sum())} of {hit.size} transitions reached the maximum tree depth{depth}: the trajectories "
            "were cut short and the sampler explores slowly. Raise max_tree_depth, or reparameterise "
            "(strong correlations or very different scales; adaptation='low_rank' adapts to correlations)."
        )
    return msgs


def loo(dt: Any) -> Any:
    """:func:`arviz_stats.loo`, with its generic Pareto-k UserWarning held back: the rows are
    reported by :func:`pareto_k_messages` instead, as a :class:`DiagnosticWarning`.

    A program with several observed sites over the same rows (``y`` and ``z`` in one plate)
    is scored leave-one-*row*-out: the sites' pointwise log-likelihoods are summed per row.
    """
    import arviz_stats as azs
    import xarray as xr

    names = list(dt["log_likelihood"].data_vars)
    if len(names) > 1:
        ll = dt["log_likelihood"].to_dataset()
        if len({ll[n].dims for n in names}) != 1:
            raise ValueError(
                f"loo: the observed sites {names} have different dimensions "
                f"({', '.join(f'{n}: {ll[n].dims}' for n in names)}), so there is no common row to leave out. "
                "Call arviz_stats.loo(dt, var_name=...) for one site."
            )
        dt = dt.copy()
        dt["log_likelihood"] = xr.DataTree(xr.Dataset({"+".join(names): sum(ll[n] for n in names)}))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        return azs.loo(dt)


def pareto_k_messages(elpd: Any, label: str = "") -> list[str]:
    """Messages for high Pareto k values of an arviz_stats ELPD result (threshold: ArviZ's
    ``good_k`` for the sample size, at most 0.7)."""
    k = getattr(elpd, "pareto_k", None)
    if k is None:
        return []
    values = np.asarray(k).reshape(-1)
    threshold = float(getattr(elpd, "good_k", None) or PARETO_K_MAX)
    bad = np.flatnonzero(values > threshold)
    if not len(bad):
        return []
    where = f" for {label}" if label else ""
    return [
        f"{len(bad)} observations{where} have Pareto k > {threshold:.2f} (rows {bad[:10].tolist()}"
        f"{'…' if len(bad) > 10 else ''}, max {values.max():.2f}): PSIS-LOO is unreliable there. "
        "Those points are highly influential: refit without them (pyro_mle.reloo(post) refits once per such row; "
        "pyro_mle.kfold(post) for K-fold CV) or use a more robust likelihood."
    ]


def warn(messages: list[str], stacklevel: int = 3) -> None:
    """Emit each message as a :class:`DiagnosticWarning`."""
    for m in messages:
        warnings.warn(m, DiagnosticWarning, stacklevel=stacklevel)


def _worst(ds: Any, worse: Any) -> tuple[str, float] | None:
    """(variable[index], value) of the worst entry of a Dataset of per-variable statistics."""
    best = None
    for name, da in ds.data_vars.items():
        values = np.asarray(da.values, dtype=float).reshape(-1)
        if not values.size or np.all(np.isnan(values)):
            continue
        i = int(np.nanargmax(values) if worse is np.greater else np.nanargmin(values))
        label = name if values.size == 1 else f"{name}[{i}]"
        if best is None or worse(values[i], best[1]):
            best = (label, float(values[i]))
    return best
