"""Pyro → ArviZ 1.x: an :class:`xarray.DataTree` from a fit, a posterior, or a raw ``MCMC``.

ArviZ 1.x has no Pyro converter. This one writes the groups ArviZ functions read:

* ``posterior``: latent sites, dims ``(chain, draw, …)``;
* ``posterior_predictive``: one draw of every observed site per posterior draw;
* ``log_likelihood``: the pointwise log-likelihood, one variable per observed site,
  computed for all draws at once when the program broadcasts over an extra plate and by a
  loop over draws when it does not (a program written ``X @ w``): never silently missing;
* ``observed_data``, ``constant_data`` (tensor arguments of the program that are not
  observed), ``sample_stats`` (sampler statistics, when there are any).

Dimension names come from the program's plates: an observed site inside
``pyro.plate("data", N)`` gets the dim ``"data"``; axes outside any plate are named
``"{site}_dim_{i}"``. ``dims`` and ``coords`` override or label them.

A point estimate (:class:`pyro_mle.Fit`) becomes a posterior whose ``num_draws`` draws all
equal the estimate, with real predictive draws from the likelihood at the estimate, so
posterior predictive checks and LOO-PIT work on MLE and MAP too.

The predictive draws (and a subsampling plate's rows) come from ``seed`` inside
:func:`pyro_mle._rng.rng_scope`: the same seed gives the same tree, and the caller's global
generators are left as they were.

Save with ``dt.to_netcdf(path)`` (h5netcdf) or ``dt.to_zarr(path)``; load with
:func:`xarray.open_datatree`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from arviz_base import from_dict
from pyro.infer import MCMC
from pyro.poutine.util import site_is_subsample

from . import _replay
from ._rng import rng_scope
from .posterior import Posterior


def to_datatree(
    result: Any,
    *,
    coords: Mapping[str, Sequence] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
    num_draws: int = 500,
    predictive: bool = True,
    log_likelihood: bool = True,
    seed: int | None = 0,
) -> xr.DataTree:
    """Convert ``result`` to an ArviZ 1.x DataTree.

    :param result: a :class:`~pyro_mle.Posterior`, a :class:`~pyro_mle.Fit`, or a
        :class:`pyro.infer.MCMC` that has been run.
    :param coords: dimension name → coordinate values.
    :param dims: variable name → dimension names (sample dims excluded).
    :param num_draws: for a point fit, the number of (identical) posterior draws and of
        predictive draws.
    :param predictive: add ``posterior_predictive``.
    :param log_likelihood: add ``log_likelihood``.
    :param seed: seed of the predictive draws; ``None`` draws fresh entropy. The caller's
        global generators are untouched.

    Example::

        dt = pyro_mle.to_datatree(post)
        arviz_stats.loo(dt)
    """
    # rng_scope, not torch.manual_seed: a reset of the global generators would make the
    # caller's next draws the same after every call (a bootstrap loop around it repeats itself)
    with _replay.param_store_copy(), torch.no_grad(), rng_scope(seed):
        return _to_datatree(result, coords, dims, num_draws, predictive, log_likelihood)


def _to_datatree(result, coords, dims, num_draws, predictive, log_likelihood):
    samples, stats, model, args, kwargs, attrs = _unpack(result, num_draws)
    tr = _replay.trace_model(model, args, kwargs)
    obs = _replay.require_observed(model, tr)
    # a subsampling plate draws new rows on every run: pin the rows of this first run for all
    model = _replay._fixed_rows(model, tr)
    if any(s["type"] == "sample" and site_is_subsample(s) for s in tr.nodes.values()):
        attrs["subsampled"] = 1  # observed_data and the pointwise values cover one minibatch only
    latent = _replay.latent_sites(tr)
    chains, draws = next(iter(samples.values())).shape[:2]
    # replay only latent sites; pyro.param values recorded by a fit live in the param store
    flat = {k: v.reshape((chains * draws,) + v.shape[2:]) for k, v in samples.items() if k in latent}
    point = bool(attrs.get("point_estimate"))

    site_dims = {name: _site_dims(name, site) for name, site in {**latent, **obs}.items()}
    for k, v in samples.items():
        site_dims.setdefault(k, [f"{k}_dim_{i}" for i in range(v.dim() - 2)])
    data: dict[str, dict[str, np.ndarray]] = {"posterior": {k: _np(v) for k, v in samples.items()}}
    if predictive:
        pp, _ = _replay.predictive_draws(model, flat, args, kwargs, num=chains * draws)
        data["posterior_predictive"] = {k: _np(v.reshape((chains, draws) + v.shape[1:])) for k, v in pp.items()}
    data["observed_data"] = {k: _np(s["value"]) for k, s in obs.items()}
    constant = _constant_data(model, args, kwargs, obs)
    if constant:
        data["constant_data"] = {k: _np(v) for k, v in constant.items()}
        first = next(iter(obs))
        for k, v in constant.items():
            names = [f"{k}_dim_{i}" for i in range(v.dim())]
            if v.dim() and site_dims[first] and v.shape[0] == obs[first]["value"].shape[0]:
                names[0] = site_dims[first][0]  # rows of X share the observations' plate
            site_dims[k] = names
    if stats:
        data["sample_stats"] = {k: _np(v) for k, v in stats.items()}
    dims_all = {**site_dims, **(dims or {})}
    dt = from_dict(data, coords=dict(coords or {}), dims=dims_all, attrs={"/": attrs})

    if log_likelihood:
        # a point fit has one distinct draw: evaluate it once and repeat it
        ll, how = _replay.pointwise_log_likelihood(
            model, {k: v[:1] for k, v in flat.items()} if point else flat, args, kwargs
        )
        ll = {k: v.expand((chains * draws,) + v.shape[1:]) if point else v for k, v in ll.items()}
        ll_np = {k: _np(v.reshape((chains, draws) + v.shape[1:])) for k, v in ll.items()}
        # pointwise values have the site's batch dims only (a multivariate event is summed)
        ll_dims = {k: dims_all.get(k, [])[: v.ndim - 2] for k, v in ll_np.items()}
        ll_tree = from_dict({"log_likelihood": ll_np}, coords=dict(coords or {}), dims=ll_dims)
        dt["log_likelihood"] = ll_tree["log_likelihood"]
        dt.attrs["log_likelihood_method"] = how
    return dt


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _site_dims(name: str, site: dict) -> list[str]:
    """Dimension names of a site's value: plate names where plates sit, else ``{name}_dim_{i}``."""
    value = site["value"]
    batch_ndim = value.dim() - site["fn"].event_dim
    by_dim = {f.dim: f.name for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None}
    names = []
    for i in range(value.dim()):
        rel = i - batch_ndim
        names.append(by_dim.get(rel, f"{name}_dim_{i}") if rel < 0 else f"{name}_dim_{i}")
    return names


def _constant_data(model: Callable, args: tuple, kwargs: Mapping[str, Any], obs: dict) -> dict[str, torch.Tensor]:
    """Tensor arguments of the program that are not one of its observed values."""
    try:
        bound = inspect.signature(model).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return {}
    observed = [s["value"] for s in obs.values()]
    out = {}
    for k, v in bound.arguments.items():
        if isinstance(v, torch.Tensor) and not any(v is o for o in observed):
            out[k] = v
    return out


def _unpack(result: Any, num_draws: int):
    """(samples (chain, draw, …), stats, model, args, kwargs, attrs) from any supported result."""
    if isinstance(result, Posterior):
        attrs = {"inference_library": "pyro", "method": result.method, "created_by": "pyro_mle"}
        return dict(result.samples), dict(result.sample_stats), result.model, result.args, result.kwargs, attrs
    if isinstance(result, MCMC):
        samples = {k: v.detach() for k, v in result.get_samples(group_by_chain=True).items()}
        chains, draws = next(iter(samples.values())).shape[:2]
        diverging = torch.zeros(chains, draws, dtype=torch.bool)
        for c, diag in enumerate(result.diagnostics().get("divergences", {}).values()):
            if c < chains:
                diverging[c, list(diag)] = True
        model = result.kernel.model
        if model is None:
            raise ValueError(
                "to_datatree: this MCMC kernel was built from a potential_fn, not a model; nothing to replay."
            )
        attrs = {"inference_library": "pyro", "method": "mcmc", "created_by": "pyro_mle"}
        return samples, {"diverging": diverging}, model, result._args, result._kwargs, attrs
    if hasattr(result, "params") and hasattr(result, "model"):  # pyro_mle.Fit
        return _unpack_fit(result, num_draws)
    raise TypeError(
        f"to_datatree: cannot convert a {type(result).__name__}; pass a pyro_mle.Fit, a pyro_mle.Posterior or a "
        "pyro.infer.MCMC that has been run."
    )


def _unpack_fit(fit: Any, num_draws: int):
    from .handlers import _FixParams

    if fit.model is None:
        raise ValueError(
            "to_datatree: this Fit has no model (it was loaded from a file). Load it with "
            "pyro_mle.load(path, model=model) and pass the data: dataclasses.replace(fit, args=(x, y))."
        )
    fixed = {k: v for k, v in fit.params.items() if k not in fit.latent}
    # pyro.param values come from the estimate, not from whatever the param store holds now
    model = _FixParams(fixed)(fit.model) if fixed else fit.model
    args, kwargs = tuple(fit.args), dict(fit.kwargs)
    samples = {}
    for k, v in fit.params.items():  # every estimate, parameters too, as a constant "posterior"
        v = torch.as_tensor(v).detach()
        samples[k] = v.expand((1, num_draws) + v.shape).clone()
    attrs = {
        "inference_library": "pyro",
        "method": getattr(fit, "method", "point"),
        "created_by": "pyro_mle",
        "point_estimate": 1,
    }
    return samples, {}, model, args, kwargs, attrs


def loo_pit(dt: xr.DataTree, **kwargs: Any) -> Any:
    """LOO-PIT values (:func:`arviz_stats.loo_pit`) for a posterior *or* a point fit.

    A point fit's DataTree has identical draws, so Pareto smoothing of its importance
    weights is undefined; its leave-one-out weights are taken as uniform instead, which makes
    the result the PIT of the plug-in predictive distribution at the estimate. That ignores
    the estimate's own dependence on the left-out row, so it is optimistic for small data.
    """
    import arviz_stats as azs

    if not dt.attrs.get("point_estimate"):
        return azs.loo_pit(dt, **kwargs)
    ll = dt["log_likelihood"].to_dataset()
    n = ll.sizes["chain"] * ll.sizes["draw"]
    log_weights = xr.full_like(ll, -np.log(n))
    pareto_k = xr.zeros_like(ll.isel(chain=0, draw=0, drop=True))
    return azs.loo_pit(dt, log_weights=log_weights, pareto_k=pareto_k, **kwargs)
