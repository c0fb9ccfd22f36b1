"""Cross-validation by refitting: exact LOO where PSIS fails (:func:`reloo`) and K-fold
cross-validation (:func:`kfold`), with this library's :func:`~pyro_mle.posterior` as the
refitting engine.

Both drive ArviZ's own algorithms, :func:`arviz_stats.reloo` and
:func:`arviz_stats.loo_kfold`, through :class:`PyroSamplingWrapper`, arviz-stats'
:class:`~arviz_stats.loo.SamplingWrapper` for a Pyro program: ArviZ picks the observations
(Pareto k above the threshold, or the folds) and combines the results; the wrapper refits
the posterior without them and evaluates their log-likelihood under the refitted draws.

**How the program runs on a subset of rows.** A refit calls the program on the rows kept and
the log-likelihood of the left-out rows calls it on those rows alone, so the program's
arguments must be cut by row. By default every tensor (or NumPy array) argument whose first
dimension has one entry per row of the observed data is indexed by the rows, the others are
passed as they are: right for programs written ``model(X, y)`` with
``pyro.plate("data", len(y))``. Anything else (rows along another axis, a plate size fixed
outside the arguments, a grouping index whose levels must stay) takes ``rows=``: a function
``rows(index) -> (args, kwargs)`` given an integer array of row numbers (in the original
data) that returns the program's arguments for those rows.

One observation is one row: with several observed sites in one plate (``y`` and ``z``) a
row's log-likelihood is their sum and leaving row ``i`` out drops both, as
:func:`pyro_mle.diagnostics.loo` scores them (``var_name=`` scores one site instead, still
leaving out the whole row). Masked rows (``obs_mask``) are not observations and are never
left out; they stay in every refit.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr
from arviz_stats.loo import SamplingWrapper

from . import _replay
from ._approx_loo import posterior_loo
from .fit import fit
from .handlers import _FixParams
from .posterior import Posterior, posterior
from .results import Fit

RowsFn = Callable[[np.ndarray], tuple[tuple, dict]]

#: options of :func:`~pyro_mle.posterior` read back from a Posterior for its refits
_RUN_OPTIONS = ("num_samples", "warmup", "chains", "seed", "sampler", "adaptation")


class PyroSamplingWrapper(SamplingWrapper):
    """arviz-stats' :class:`~arviz_stats.loo.SamplingWrapper` for a :class:`~pyro_mle.Posterior`
    or a point fit (:class:`~pyro_mle.Fit`, refitted by :func:`~pyro_mle.fit`: its draws are
    the one estimate).

    :param post: the posterior on all the data (NUTS, Laplace or VI), or a fit.
    :param dt: its DataTree (default: ``to_datatree(post, predictive=False)``).
    :param rows: ``rows(index) -> (args, kwargs)``, the program's arguments for the rows
        ``index`` (see the module docstring); default: row-aligned arguments sliced.
    :param var_name: score one observed site (default: all of them, summed per row).
    :param posterior_kwargs: options of the refits' :func:`~pyro_mle.posterior` calls; by
        default the posterior's own method, draws, chains, warm-up, seed and engine (for a
        fit: :func:`~pyro_mle.fit`'s, by default its method, optimizer and seed).

    ``sel_observations(idx)`` returns ``(rows kept, rows left out)`` as row numbers,
    ``sample(rows)`` the refitted :class:`~pyro_mle.Posterior`, ``get_inference_data`` passes
    it through, and ``log_likelihood__i(rows, post_i)`` is a DataArray ``(chain, draw, obs)``.
    """

    def __init__(
        self,
        post: Posterior,
        dt: xr.DataTree | None = None,
        rows: RowsFn | None = None,
        var_name: str | None = None,
        posterior_kwargs: Mapping[str, Any] | None = None,
    ):
        from .datatree import to_datatree

        self.point = isinstance(post, Fit)
        if not isinstance(post, Posterior) and not self.point:
            raise TypeError(
                f"reloo/kfold: refitting needs a pyro_mle.Posterior or pyro_mle.Fit (its program and data); got a "
                f"{type(post).__name__}. Run pyro_mle.posterior(model, *args, ...) first."
            )
        if self.point and post.model is None:
            raise ValueError(
                "kfold: this Fit has no model (it was loaded from a file). Load it with pyro_mle.load(path, "
                "model=model) and pass the data: dataclasses.replace(fit, args=(x, y))."
            )
        dt = to_datatree(post, predictive=False, num_draws=1) if dt is None else dt
        with _replay.param_store_copy(), torch.no_grad():
            tr = _replay.trace_model(_replay.allow_masked_nan(post.model), post.args, post.kwargs)
        self.sites = _scored_sites(tr, dt, var_name)  # variable name → observed site
        self.obs_dim, self.row_of = _observation_rows(dt, list(self.sites))
        self.var_name = "+".join(self.sites)
        one_var = dt.copy()
        ll = dt["log_likelihood"].to_dataset()
        one_var["log_likelihood"] = xr.DataTree(xr.Dataset({self.var_name: sum(ll[v] for v in self.sites)}))
        super().__init__(model=post.model, idata_orig=one_var)
        self.post = post
        obs = _replay.observed_sites(tr)
        first = obs[next(iter(self.sites.values()))]
        self.num_rows = int(first["value"].shape[0]) if first["value"].dim() else 1
        self.rows = rows if rows is not None else _row_slicer(post, obs, self.num_rows)
        if self.point:
            options = {"method": post.method, "optimizer": post.optimizer, "seed": post.seed, "progress": False}
        else:
            options = {k: post.info[k] for k in _RUN_OPTIONS if k in post.info}
            options.update(method=post.method, num_samples=post.num_draws)
        self.posterior_kwargs = {**options, **dict(posterior_kwargs or {})}

    # -- the four methods arviz-stats calls
    def sel_observations(self, idx: Any) -> tuple[np.ndarray, np.ndarray]:
        left_out = self.row_of[np.atleast_1d(np.asarray(idx, dtype=int))]
        kept = np.setdiff1d(np.arange(self.num_rows), left_out)
        return kept, left_out

    def sample(self, modified_observed_data: np.ndarray) -> Posterior:
        args, kwargs = self._arguments(modified_observed_data)
        try:
            if self.point:
                # a refit's pyro.param values live in a copy of the store; they are kept in the Fit
                with _replay.param_store_copy():
                    return fit(self.post.model, *args, **self.posterior_kwargs, **kwargs)
            return posterior(self.post.model, *args, **self.posterior_kwargs, **kwargs)
        except (ValueError, RuntimeError) as e:
            sliced = getattr(self.rows, "sliced", None)
            if sliced is None:
                raise
            raise ValueError(
                f"reloo/kfold: refitting without rows {_some(self.num_rows, modified_observed_data)} failed with the "
                f"row-aligned arguments ({sliced or 'none'}) cut to those rows: {e} If the program needs its rows "
                "cut another way, pass rows=lambda idx: (args, kwargs)."
            ) from e

    def get_inference_data(self, fitted_model: Posterior | Fit) -> Posterior | Fit:
        return fitted_model  # log_likelihood__i reads the draws from the result itself

    def log_likelihood__i(self, excluded_obs: np.ndarray, idata__i: Posterior | Fit) -> xr.DataArray:
        args, kwargs = self._arguments(excluded_obs)
        model = self.post.model
        if self.point:  # one draw, the estimate; its pyro.param values fixed as fitted
            draws = {k: torch.as_tensor(idata__i.params[k]).detach()[None] for k in idata__i.latent}
            fixed = {k: v for k, v in idata__i.params.items() if k not in idata__i.latent}
            model = _FixParams(fixed)(model) if fixed else model
            c, d = 1, 1
        else:
            draws, c, d = idata__i.flat_samples(), idata__i.num_chains, idata__i.num_draws
        # the values obs_mask imputed for the refit's masked rows do not enter the log-likelihood of
        # observed rows, and have another shape on the held-out rows
        imputed = {f"{v}_unobserved" for v, site in self.sites.items() if site != v}
        draws = {k: v for k, v in draws.items() if k not in imputed}
        with _replay.param_store_copy(), torch.no_grad():
            model = _replay.allow_masked_nan(model)
            ll, _ = _replay.pointwise_log_likelihood(model, draws, args, kwargs, sites=list(self.sites.values()))
        total = sum(ll[s] for s in self.sites.values())
        total = total.reshape(total.shape[0], -1)
        if total.shape[1] != len(excluded_obs):
            raise ValueError(
                f"reloo/kfold: the program run on rows {excluded_obs.tolist()} gave {total.shape[1]} log-likelihood "
                f"values for {list(self.sites)}, not one per row. Give rows=lambda idx: (args, kwargs) that returns "
                "the program's arguments for exactly those rows."
            )
        values = total.reshape(c, d, -1).double().cpu().numpy()
        return xr.DataArray(values, dims=("chain", "draw", self.obs_dim), coords={self.obs_dim: excluded_obs})

    def _arguments(self, index: np.ndarray) -> tuple[tuple, dict]:
        args, kwargs = self.rows(np.asarray(index, dtype=int))
        return tuple(args), dict(kwargs)


def reloo(
    post: Posterior,
    dt: xr.DataTree | None = None,
    *,
    rows: RowsFn | None = None,
    var_name: str | None = None,
    k_threshold: float | None = None,
    loo_orig: Any = None,
    pointwise: bool = True,
    **posterior_kwargs: Any,
) -> Any:
    """PSIS-LOO with exact leave-one-out refits where PSIS fails (:func:`arviz_stats.reloo`).

    Observations with Pareto k above ``k_threshold`` (ArviZ's default:
    ``min(1 - 1/log10(S), 0.7)`` for S draws) are left out one at a time, the posterior is
    refitted without each by :func:`~pyro_mle.posterior` (same method, draws and seed unless
    ``posterior_kwargs`` say otherwise), and its ``elpd_i`` is replaced by
    ``log mean_s p(y_i | θ_s)`` over the refitted draws; its Pareto k is set to 0.

    :param post: the posterior on all the data.
    :param dt: its DataTree (default: built with :func:`~pyro_mle.to_datatree`).
    :param rows: ``rows(index) -> (args, kwargs)``: the program's arguments for the given row
        numbers (default: row-aligned tensor arguments sliced; see :mod:`pyro_mle.reloo`).
    :param var_name: one observed site to score (default: all, summed per row).
    :param k_threshold: refit observations with Pareto k above this.
    :param loo_orig: a pointwise LOO of ``dt`` to start from (default: PSIS-LOO, corrected for
        Laplace and VI draws by :func:`arviz_stats.loo_approximate_posterior`).
    :returns: :class:`arviz_stats.utils.ELPDDataLOO`, refitted rows with ``pareto_k`` 0.

    Example::

        post = pyro_mle.posterior(model, x, y)
        elpd = pyro_mle.reloo(post)          # refits once per observation with k > 0.7
    """
    import arviz_stats as azs

    if isinstance(post, Fit):
        raise TypeError(
            "reloo: a point fit has no Pareto k to single out rows (its draws are one estimate, repeated). "
            "Cross-validate it by refitting with pyro_mle.kfold(fit, k=...), or draw a posterior with "
            "pyro_mle.posterior(model, *args) and reloo that."
        )
    wrapper = PyroSamplingWrapper(post, dt, rows, var_name, posterior_kwargs)
    if loo_orig is None:
        with warnings.catch_warnings():
            # the rows with high k are the point of the call, not news
            warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
            loo_orig = posterior_loo(post, wrapper.idata_orig)
    return azs.reloo(wrapper, loo_orig=loo_orig, k_threshold=k_threshold, pointwise=pointwise)


def kfold(
    post: Posterior | Fit,
    k: int = 10,
    dt: xr.DataTree | None = None,
    *,
    rows: RowsFn | None = None,
    var_name: str | None = None,
    folds: Any = None,
    stratify_by: Any = None,
    group_by: Any = None,
    seed: int | None = 271,
    pointwise: bool = True,
    save_fits: bool = False,
    **posterior_kwargs: Any,
) -> Any:
    """K-fold cross-validation by refitting (:func:`arviz_stats.loo_kfold`).

    The observations are split into ``k`` folds (random, or ``folds=`` given, or
    ``stratify_by=``/``group_by=`` as in ArviZ); for each fold the posterior is refitted on the
    others by :func:`~pyro_mle.posterior` and ``elpd_i = log mean_s p(y_i | θ_s)`` is computed
    for the fold's observations. ``k`` equal to the number of observations is exact LOO.

    A point fit (:class:`~pyro_mle.Fit`) is refitted by :func:`~pyro_mle.fit` (same method,
    optimizer and seed), and ``elpd_i = log p(y_i | θ̂ without the fold)``: the honest
    out-of-sample score of MLE and MAP, where PSIS-LOO has no draws to weight.

    :param post: the posterior on all the data, or a fit.
    :param k: the number of folds.
    :param rows: ``rows(index) -> (args, kwargs)`` as in :func:`reloo`.
    :param seed: seed of the random fold assignment (ArviZ's; the refits use the posterior's).
    :param save_fits: keep each fold's refitted :class:`~pyro_mle.Posterior` in ``fold_fits``.
    :returns: :class:`arviz_stats.utils.ELPDDataLOOKFold`.

    Example::

        cv = pyro_mle.kfold(post, k=5)
        cv.elpd, cv.se
    """
    import arviz_stats as azs

    wrapper = PyroSamplingWrapper(post, dt, rows, var_name, posterior_kwargs)
    return azs.loo_kfold(
        wrapper.idata_orig,
        wrapper,
        pointwise=pointwise,
        k=k,
        folds=folds,
        stratify_by=stratify_by,
        group_by=group_by,
        save_fits=save_fits,
        seed=seed,
    )


def _some(num_rows: int, kept: np.ndarray) -> list[int]:
    left_out = np.setdiff1d(np.arange(num_rows), kept)
    return left_out[:10].tolist()


def _scored_sites(tr: Any, dt: xr.DataTree, var_name: str | None) -> dict[str, str]:
    """Log-likelihood variable → the observed site it scores."""
    if "log_likelihood" not in dt.children:
        raise ValueError("reloo/kfold: the DataTree has no log_likelihood group; build it with log_likelihood=True.")
    site_of = {var: site for site, var in _replay.observed_names(tr).items()}
    variables = list(dt["log_likelihood"].data_vars)
    if var_name is not None:
        if var_name not in variables:
            raise ValueError(f"reloo/kfold: var_name={var_name!r} is not in log_likelihood; it holds {variables}.")
        variables = [var_name]
    unknown = [v for v in variables if v not in site_of]
    if unknown:
        raise ValueError(
            f"reloo/kfold: log_likelihood variable(s) {unknown} are not observed sites of the program "
            f"({list(site_of)}); a variable folded from several sites cannot be recomputed on held-out rows."
        )
    return {v: site_of[v] for v in variables}


def _observation_rows(dt: xr.DataTree, variables: list[str]) -> tuple[str, np.ndarray]:
    """The one observation dim of ``variables`` and, per position on it, the row number in
    the data (a masked site's dim holds the kept rows' numbers as coordinates)."""
    ll = dt["log_likelihood"].to_dataset()
    dims = {tuple(d for d in ll[v].dims if d not in ("chain", "draw")) for v in variables}
    if len(dims) != 1 or len(next(iter(dims))) != 1:
        raise ValueError(
            f"reloo/kfold: the log-likelihood of {variables} has observation dims {sorted(dims)}; refitting needs one "
            "observation dim shared by the scored sites. Score one site with var_name=, or give the observations "
            "one plate."
        )
    (dim,) = next(iter(dims))
    if dim in {f"{v}_observed" for v in variables}:
        # the converter's dim of a masked site: its coordinates are the kept rows' numbers
        return dim, np.asarray(ll[dim].values).astype(int)
    return dim, np.arange(ll.sizes[dim])  # any coordinates are the user's labels, not row numbers


def _row_slicer(post: Posterior, obs: dict[str, dict], num_rows: int) -> RowsFn:
    """``rows(index)`` that slices every tensor or array argument with ``num_rows`` entries
    along its first dim; refuses a program whose observed data are not such an argument."""
    observed = [s["value"] for s in obs.values()] + [
        s["infer"]["obs_with_nan"] for s in obs.values() if "obs_with_nan" in s["infer"]
    ]

    def aligned(v: Any) -> bool:
        return isinstance(v, torch.Tensor | np.ndarray) and v.ndim > 0 and v.shape[0] == num_rows

    def is_observed(v: torch.Tensor | np.ndarray) -> bool:
        # the program may have converted its data (NumPy to torch, dtype, device): equal values count
        if isinstance(v, np.ndarray):
            try:
                v = torch.as_tensor(v)
            except (TypeError, RuntimeError):  # an object array: not numeric data
                return False
        return any(
            v is o or (v.shape == o.shape and bool(torch.equal(v.to(o.dtype, copy=False).to(o.device), o)))
            for o in observed
        )

    values = [*post.args, *post.kwargs.values()]
    if not any(aligned(v) and is_observed(v) for v in values):
        name = getattr(post.model, "__name__", repr(post.model))
        raise ValueError(
            f"reloo/kfold: the observed data of {name!r} are not an argument of the program with one entry per row "
            f"({num_rows} rows), so the rows cannot be cut automatically. Pass rows=lambda idx: (args, kwargs), the "
            "program's arguments for the row numbers idx."
        )
    try:
        bound = inspect.signature(post.model).bind(*post.args, **post.kwargs)
        names = ", ".join(k for k, v in bound.arguments.items() if aligned(v))
    except (TypeError, ValueError):
        names = ""

    def cut(v: Any, index: np.ndarray) -> Any:
        if not aligned(v):
            return v
        return v[torch.as_tensor(index, device=v.device)] if isinstance(v, torch.Tensor) else v[index]

    def rows(index: np.ndarray) -> tuple[tuple, dict]:
        return tuple(cut(a, index) for a in post.args), {k: cut(v, index) for k, v in post.kwargs.items()}

    rows.sliced = names  # type: ignore[attr-defined]  # which arguments are cut, for messages
    return rows


__all__ = ["PyroSamplingWrapper", "kfold", "reloo"]
