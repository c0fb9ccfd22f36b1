"""Comparison mode: MLE, MAP and full posterior inference on one Pyro program, and PSIS-LOO
comparison of likelihoods (which loss fits the data best).

:func:`compare` only composes :func:`~pyro_mle.fit`, :func:`~pyro_mle.posterior` and
:func:`~pyro_mle.to_datatree`; everything it reports can be recomputed from
``Comparison.results``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import _replay
from ._approx_loo import APPROXIMATE_METHODS, approximation_log_densities, posterior_loo
from ._rng import rng_scope
from .diagnostics import PARETO_K_MAX, pareto_k_messages, sampling_messages, warn

POINT_METHODS = ("mle", "map")
POSTERIOR_METHODS = ("laplace", "vi", "nuts")
#: methods whose draws are a Markov chain: r-hat, ESS and divergences mean something there only
MCMC_METHODS = ("nuts",)


@dataclass(frozen=True)
class Comparison:
    """Several readings of one program, side by side.

    Fields:
      * ``results``: method → :class:`~pyro_mle.Fit` (``"mle"``, ``"map"``) or
        :class:`~pyro_mle.Posterior` (``"laplace"``, ``"vi"``, ``"nuts"``).
      * ``datatrees``: method → ArviZ DataTree of that result.
      * ``table``: one row per (parameter element, method): ``estimate`` (point estimate or
        posterior mean), ``sd``, ``lower``/``upper`` (equal-tailed interval of probability
        ``ci_prob``; NaN for points), ``r_hat``, ``ess_bulk``, ``ess_tail`` (NUTS only: Laplace
        and VI draws are independent draws of a Gaussian, for which r-hat and ESS say nothing
        about the posterior; NaN there).
      * ``methods``: one row per method, each with the diagnostics of its own kind (NaN where
        a column does not apply):

        - ``nll``: −log-likelihood of the data at the point estimate or at the posterior mean;
        - ``elpd_loo``, ``se``, ``max_pareto_k`` (posterior methods): PSIS-LOO and the largest
          Pareto k of its pointwise weights; for Laplace and VI by
          :func:`arviz_stats.loo_approximate_posterior`, which corrects for the draws coming
          from the approximation ``q`` rather than the posterior;
        - ``run_time_s``;
        - ``max_r_hat``, ``min_ess_bulk``, ``min_ess_tail``, ``divergences``: NUTS;
        - ``q_pareto_k``: Laplace and VI: the Pareto k of the importance weights ``p/q`` over
          the draws (Yao et al. 2018, "Yes, but did it work?"); above 0.7 the Gaussian is far
          from the posterior and its draws are not to be trusted (a :class:`DiagnosticWarning`
          says so);
        - ``converged``, ``steps``: MLE and MAP (the optimiser's convergence test and steps) and
          VI (the ELBO's convergence test and SVI steps, where the run records them).
      * ``ci_prob``: probability of the intervals.
    """

    results: Mapping[str, Any]
    datatrees: Mapping[str, Any]
    table: pd.DataFrame
    methods: pd.DataFrame
    ci_prob: float

    def __str__(self) -> str:
        with pd.option_context(
            "display.width", 160, "display.max_columns", 20, "display.float_format", "{:.4g}".format
        ):
            return f"{self.methods}\n\n{self.table}"

    def plot(self, var_names: Sequence[str] | None = None, max_panels: int = 12):
        """A figure per scalar parameter: posterior densities (histograms of the draws) of the
        posterior methods, and vertical lines at the MLE and MAP estimates."""
        import matplotlib.pyplot as plt

        params = [p for p in dict.fromkeys(self.table.index.get_level_values("parameter"))]
        if var_names is not None:
            params = [p for p in params if p.split("[")[0] in var_names]
        params = params[:max_panels]
        cols = min(3, len(params)) or 1
        rows = math.ceil(len(params) / cols) or 1
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        colours = {
            "mle": "tab:red",
            "map": "tab:green",
            "laplace": "tab:purple",
            "vi": "tab:orange",
            "nuts": "tab:blue",
        }
        for ax, param in zip(axes.flat, params):
            name, index = _split(param)
            for method, result in self.results.items():
                if method in POINT_METHODS:
                    value = _element(result.params.get(name), index) if name in result.params else None
                    if value is not None:
                        ax.axvline(value, color=colours.get(method, "k"), lw=2, label=method.upper())
                else:
                    draws = result.samples.get(name)
                    if draws is None:
                        continue
                    x = draws.reshape((-1,) + draws.shape[2:])
                    x = x[(slice(None),) + index].double().numpy() if index else x.double().numpy()
                    ax.hist(
                        x, bins=40, density=True, histtype="step", lw=1.5, color=colours.get(method, "k"), label=method
                    )
            ax.set_title(param)
        for ax in list(axes.flat)[len(params) :]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="upper right", frameon=False)
        fig.suptitle("point estimates on the posterior densities")
        fig.tight_layout()
        return fig


def compare(
    model: Callable,
    *args: Any,
    methods: Sequence[str] = ("mle", "map", "laplace", "vi", "nuts"),
    seed: int | None = 0,
    ci_prob: float = 0.94,
    fit_options: Mapping[str, Any] | None = None,
    posterior_options: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    **kwargs: Any,
) -> Comparison:
    """Run each method on ``model(*args, **kwargs)`` and tabulate the results.

    :param methods: any of ``"mle"``, ``"map"`` (point estimates with :func:`~pyro_mle.fit`)
        and ``"laplace"``, ``"vi"``, ``"nuts"`` (:func:`~pyro_mle.posterior`).
    :param fit_options: extra keywords for :func:`~pyro_mle.fit`.
    :param posterior_options: extra keywords for :func:`~pyro_mle.posterior`
        (``num_samples``, ``warmup``, ``chains``, …).
    :param ci_prob: probability of the equal-tailed intervals in the table.
    :param seed: passed to every method (``None``: fresh entropy). The caller's global
        generators are untouched, although :func:`~pyro_mle.fit` seeds them for its run.

    Example::

        cmp = pyro_mle.compare(model, x, y, methods=("mle", "map", "nuts"))
        print(cmp)
        cmp.plot().savefig("compare.png")
    """
    from .datatree import to_datatree
    from .fit import fit
    from .posterior import posterior

    unknown = [m for m in methods if m not in POINT_METHODS + POSTERIOR_METHODS]
    if unknown or not methods:
        raise ValueError(f"compare: unknown methods {unknown}; choose from {list(POINT_METHODS + POSTERIOR_METHODS)}.")
    results, trees, times = {}, {}, {}
    # fit(seed=...) seeds the global generators for its run; the scope hands the caller's back
    # (a bootstrap loop around compare must not repeat itself)
    with rng_scope(seed):
        for method in methods:
            start = time.perf_counter()
            if method in POINT_METHODS:
                results[method] = fit(
                    model, *args, method=method, seed=seed, progress=progress, **dict(fit_options or {}), **kwargs
                )
            else:
                opts = {"diagnose": False, **dict(posterior_options or {})}
                results[method] = posterior(model, *args, method=method, seed=seed, progress=progress, **opts, **kwargs)
            times[method] = time.perf_counter() - start
            trees[method] = (
                to_datatree(results[method], predictive=False, log_likelihood=method not in POINT_METHODS, seed=seed)
                if method not in POINT_METHODS
                else None
            )
        # the table replays the program (pointwise log-likelihood), which draws its latent sites
        table, per_method = _tables(model, args, kwargs, results, trees, times, ci_prob)
    for method, tree in trees.items():
        if tree is not None and method == "nuts":
            warn([f"{method}: {m}" for m in sampling_messages(tree)])
    return Comparison(results, trees, table, per_method, ci_prob)


def _split(param: str) -> tuple[str, tuple[int, ...]]:
    if "[" not in param:
        return param, ()
    name, rest = param.split("[", 1)
    return name, tuple(int(i) for i in rest.rstrip("]").split(","))


def _element(value: Any, index: tuple[int, ...]) -> float | None:
    if value is None:
        return None
    t = torch.as_tensor(value).detach()
    return float(t[index]) if index else float(t.reshape(-1)[0]) if t.numel() == 1 else None


def _labels(name: str, shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
    if not shape:
        return [(name, ())]
    return [(f"{name}[{','.join(map(str, i))}]", i) for i in np.ndindex(*shape)]


def _pick(ds: Any, name: str, idx: tuple[int, ...]) -> float:
    return float(np.asarray(ds[name].values)[idx])


def _tables(model, args, kwargs, results, trees, times, ci_prob):
    import arviz_stats as azs

    rows, method_rows = [], []
    lo_q, hi_q = (1 - ci_prob) / 2, 1 - (1 - ci_prob) / 2
    for method, result in results.items():
        if method in POINT_METHODS:
            for name in result.latent or tuple(result.params):
                value = torch.as_tensor(result.params[name]).detach().double()
                for label, idx in _labels(name, tuple(value.shape)):
                    rows.append(
                        {
                            "parameter": label,
                            "method": method,
                            "estimate": float(value[idx]),
                            "sd": math.nan,
                            "lower": math.nan,
                            "upper": math.nan,
                            "r_hat": math.nan,
                            "ess_bulk": math.nan,
                            "ess_tail": math.nan,
                        }
                    )
            method_rows.append(
                {
                    "method": method,
                    "nll": float(result.nll),
                    "elpd_loo": math.nan,
                    "se": math.nan,
                    "max_pareto_k": math.nan,
                    "run_time_s": times[method],
                    "max_r_hat": math.nan,
                    "min_ess_bulk": math.nan,
                    "min_ess_tail": math.nan,
                    "divergences": math.nan,
                    "q_pareto_k": math.nan,
                    "converged": bool(result.converged),
                    "steps": int(result.num_steps),
                }
            )
            continue
        tree = trees[method]
        mcmc = method in MCMC_METHODS
        if mcmc:
            post = tree["posterior"].to_dataset()
            rhat = azs.rhat(post) if post.sizes["chain"] > 1 else None
            ess_b, ess_t = azs.ess(post, method="bulk"), azs.ess(post, method="tail")
        else:
            rhat = ess_b = ess_t = None
        for name, draws in result.samples.items():
            flat = draws.reshape((-1,) + draws.shape[2:]).double()
            for label, idx in _labels(name, tuple(draws.shape[2:])):
                x = flat[(slice(None),) + idx].numpy()
                rows.append(
                    {
                        "parameter": label,
                        "method": method,
                        "estimate": float(x.mean()),
                        "sd": float(x.std(ddof=1)),
                        "lower": float(np.quantile(x, lo_q)),
                        "upper": float(np.quantile(x, hi_q)),
                        "r_hat": _pick(rhat, name, idx) if rhat is not None else math.nan,
                        "ess_bulk": _pick(ess_b, name, idx) if mcmc else math.nan,
                        "ess_tail": _pick(ess_t, name, idx) if mcmc else math.nan,
                    }
                )
        mean = {k: v.reshape((-1,) + v.shape[2:]).mean(0, keepdim=True) for k, v in result.samples.items()}
        with _replay.param_store_copy(), torch.no_grad():
            ll, _ = _replay.pointwise_log_likelihood(model, mean, args, kwargs)
        q_k = math.nan
        if method in APPROXIMATE_METHODS:
            densities = approximation_log_densities(result)
            q_k = importance_pareto_k(*densities)
            warn(_q_pareto_k_messages(q_k, method, densities[0].size))
            elpd = posterior_loo(result, tree, densities)  # corrected for q ≠ p
        else:
            elpd = posterior_loo(result, tree)
        warn(pareto_k_messages(elpd, method))
        stats = result.sample_stats
        divergences = int(stats["diverging"].sum()) if mcmc and "diverging" in stats else math.nan
        vi = method == "vi"
        method_rows.append(
            {
                "method": method,
                "nll": -float(sum(v.sum() for v in ll.values())),
                "elpd_loo": float(elpd.elpd),
                "se": float(elpd.se),
                "max_pareto_k": float(np.max(elpd.pareto_k)) if elpd.pareto_k is not None else math.nan,
                "run_time_s": times[method],
                "max_r_hat": float(np.nanmax([v.max() for v in rhat.data_vars.values()]))
                if rhat is not None
                else math.nan,
                "min_ess_bulk": float(min(float(v.min()) for v in ess_b.data_vars.values())) if mcmc else math.nan,
                "min_ess_tail": float(min(float(v.min()) for v in ess_t.data_vars.values())) if mcmc else math.nan,
                "divergences": divergences,
                "q_pareto_k": q_k,
                "converged": result.info.get("converged", math.nan) if vi else math.nan,
                "steps": result.info.get("steps", math.nan) if vi else math.nan,
            }
        )
    table = pd.DataFrame(rows).set_index(["parameter", "method"]).sort_index(level=0, sort_remaining=False)
    return table, pd.DataFrame(method_rows).set_index("method")


def importance_pareto_k(log_p: Any, log_q: Any) -> float:
    """The Pareto k of the importance ratios ``p/q`` of draws from an approximation ``q``
    (PSIS, :func:`arviz_stats.base.array_stats.psislw`): how far ``q`` is from the posterior
    ``p`` where it matters for expectations (Yao et al. 2018: reliable below 0.5, usable up to
    0.7, not above). ``log_p`` may lack its normalising constant. Ratios equal to within 1e-6
    (``q`` is the posterior, as Laplace is for a linear-Gaussian model) have no tail to fit:
    their k is ``-inf``."""
    from arviz_stats.base import array_stats

    ratios = (np.asarray(log_p, dtype=np.float64) - np.asarray(log_q, dtype=np.float64)).reshape(-1)
    if np.ptp(ratios) < 1e-6:
        return -math.inf
    _, k = array_stats.psislw(ratios - ratios.max())
    return float(k)


def _q_pareto_k_messages(k: float, method: str, draws: int) -> list[str]:
    threshold = min(1 - 1 / math.log10(draws), PARETO_K_MAX) if draws > 10 else PARETO_K_MAX
    if not k > threshold:
        return []
    return [
        f"{method}: the Pareto k of the importance weights p/q over its {draws} draws is {k:.2f} > "
        f"{threshold:.2f}: the Gaussian approximation is far from the posterior, so its means, intervals and "
        "LOO are not to be trusted. Use method='nuts'."
    ]


# --------------------------------------------------------------------------- likelihoods


@dataclass(frozen=True)
class LikelihoodComparison:
    """Which likelihood (which loss) predicts held-out data best, by PSIS-LOO.

    Fields:
      * ``table``: :func:`arviz_stats.compare`'s DataFrame, best first (``elpd``, ``p``,
        ``elpd_diff``, ``weight``, ``se``, ``dse``, ``warning``, …).
      * ``loo``: name → :class:`arviz_stats.ELPDData` (``pareto_k`` per observation).
      * ``posteriors``: name → :class:`~pyro_mle.Posterior`.
      * ``datatrees``: name → DataTree.
      * ``best``: the name ranked first.
      * ``warnings``: the Pareto-k and sampling messages that were emitted.
    """

    table: pd.DataFrame
    loo: Mapping[str, Any]
    posteriors: Mapping[str, Any]
    datatrees: Mapping[str, Any]
    best: str
    warnings: tuple[str, ...]

    def __str__(self) -> str:
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            return str(self.table)


def compare_likelihoods(
    models: Mapping[str, Callable], *args: Any, method: str = "nuts", seed: int | None = 0, **kwargs: Any
) -> LikelihoodComparison:
    """Fit each program's posterior on the same data and rank them by PSIS-LOO ELPD.

    Laplace and VI draws are not posterior draws: their LOO is
    :func:`arviz_stats.loo_approximate_posterior`, which reweights them by
    ``log p − log q`` (see :func:`pyro_mle._approx_loo.posterior_loo`).

    Each model must observe the same data with its own likelihood (``Normal`` against
    ``StudentT``, say); the ranking says which loss generalises best. Pareto k > 0.7 and
    sampling problems are emitted as :class:`~pyro_mle.DiagnosticWarning` and kept in
    ``warnings``; :func:`pyro_mle.reloo` refits a model's posterior without each such row
    (``pyro_mle.reloo(result.posteriors[name])``), :func:`pyro_mle.kfold` runs K-fold CV.

    :param models: name → Pyro program, all called as ``model(*args, **kwargs)``.
    :param method: posterior method (``"nuts"`` by default; see :func:`~pyro_mle.posterior`).
    :param seed: seed of every posterior (``None``: fresh entropy); the caller's global
        generators are untouched.
    :param kwargs: the programs' keyword arguments; ``num_samples``, ``warmup``, ``chains``
        and other :func:`~pyro_mle.posterior` options are passed on to it.

    Example::

        res = pyro_mle.compare_likelihoods({"normal": m_normal, "student_t": m_t}, x, y)
        res.best, print(res)
    """
    import arviz_stats as azs

    from .datatree import to_datatree
    from .posterior import posterior

    if len(models) < 2:
        raise ValueError(f"compare_likelihoods: give at least two models to compare; got {list(models)}.")
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in _POSTERIOR_OPTIONS}
    posts, trees, loos, messages = {}, {}, {}, []
    for name, model in models.items():
        posts[name] = posterior(model, *args, method=method, seed=seed, diagnose=False, **options, **kwargs)
        trees[name] = to_datatree(posts[name], predictive=False, seed=seed)
        loos[name] = posterior_loo(posts[name], trees[name])
        if method == "nuts":
            messages += [f"{name}: {m}" for m in sampling_messages(trees[name])]
        messages += pareto_k_messages(loos[name], name)
    table = azs.compare(loos)
    warn(messages)
    return LikelihoodComparison(table, loos, posts, trees, str(table.index[0]), tuple(messages))


_POSTERIOR_OPTIONS = {
    "num_samples",
    "warmup",
    "chains",
    "progress",
    "jit",
    "target_accept_prob",
    "target_accept",
    "sampler",
    "adaptation",
    "max_tree_depth",
    "vi_steps",
    "vi_lr",
    "vi_tol",
    "guide",
}
