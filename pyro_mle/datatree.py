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
posterior predictive checks work on MLE and MAP too; the root and each group drawn from the
estimate carry ``attrs["point_estimate"] = "mle"`` (or ``"map"``). Identical draws are no
sample: ArviZ's ``loo``, ``loo_pit`` and ``plot_loo_pit`` stop on them ("All tail values are
the same"; :func:`loo_pit` here gives the plug-in LOO-PIT), and ``summary``'s ess_bulk of
``num_draws`` counts copies of one value, not information (its sd is 0, r-hat NaN).

The predictive draws (and a subsampling plate's rows) come from ``seed`` inside
:func:`pyro_mle._rng.rng_scope`: the same seed gives the same tree, and the caller's global
generators are left as they were.

Save with ``dt.to_netcdf(path)`` (h5netcdf) or ``dt.to_zarr(path)``; load with
:func:`xarray.open_datatree`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyro
import torch
import xarray as xr
from arviz_base import from_dict
from pyro.infer import MCMC
from pyro.poutine.util import site_is_subsample

from . import _enumeration, _replay, _stacking
from ._groups import _constant_data, _np, _site_dims, predictions_groups, prior_groups
from ._rng import rng_scope
from .diagnostics import warn
from .posterior import Posterior


def to_datatree(
    result: Any,
    *,
    coords: Mapping[str, Sequence] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
    num_draws: int = 500,
    predictive: bool = True,
    log_likelihood: bool | Mapping[str, Sequence[str]] = True,
    seed: int | None = 0,
    prior: int | None = None,
    predictions: tuple | Mapping[str, Any] | None = None,
    pred_kwargs: Mapping[str, Any] | None = None,
    pred_dims: Mapping[str, Sequence[str]] | None = None,
    stack: bool | Mapping[str, str] | None = None,
    infer_discrete: bool = False,
) -> xr.DataTree:
    """Convert ``result`` to an ArviZ 1.x DataTree.

    :param result: a :class:`~pyro_mle.Posterior`, a :class:`~pyro_mle.Fit`, or a
        :class:`pyro.infer.MCMC` that has been run.
    :param coords: dimension name → coordinate values.
    :param dims: variable name → dimension names (sample dims excluded).
    :param num_draws: for a point fit, the number of (identical) posterior draws and of
        predictive draws.
    :param predictive: add ``posterior_predictive``.
    :param log_likelihood: add ``log_likelihood`` (``False``: leave it out). A mapping
        ``{"y": ["y", "censored"]}`` says which sites make up an observation's pointwise
        log-likelihood: here the observed site ``y`` and the ``pyro.factor`` site
        ``censored`` (hand-written censoring) are summed into one variable ``y``; observed
        sites not named keep their own variable.
    :param seed: seed of the predictive draws; ``None`` draws fresh entropy. The caller's
        global generators are untouched.
    :param prior: a number of draws from the prior: adds ``prior`` (latent and
        deterministic sites) and ``prior_predictive`` (observations).
    :param predictions: new inputs, the program's positional arguments (a tuple) or keyword
        arguments (a mapping; ``pred_kwargs`` adds keywords to a tuple): adds ``predictions``
        (one draw of every observed site per posterior draw) and
        ``predictions_constant_data`` (the tensor inputs), dims from the plates of a run on
        the new inputs.
    :param pred_dims: variable name → dims of the predictions groups, overriding the plates.
    :param stack: stack the sites of one sequential loop (``pyro.markov``) into one variable
        with a step dim ``{var}_dim_0``: ``{"y": r"y_\\d+"}`` (variable → regular expression
        matching whole site names) or ``True`` (every ``name_<int>`` family), in every group.
    :param infer_discrete: add to ``posterior`` one draw per posterior draw of each discrete
        latent site that NUTS summed out, from its conditional posterior
        (:func:`pyro.infer.infer_discrete`). Their log-likelihood is the marginal one either way,
        and they are never in ``posterior_predictive``.

    Example::

        dt = pyro_mle.to_datatree(post, prior=500, predictions=(x_new,))
        arviz_stats.loo(dt)
    """
    # rng_scope, not torch.manual_seed: a reset of the global generators would make the
    # caller's next draws the same after every call (a bootstrap loop around it repeats itself)
    with _replay.param_store_copy(), torch.no_grad(), rng_scope(seed):
        dt, ctx = _to_datatree(result, coords, dims, num_draws, predictive, log_likelihood)
        if prior is not None:
            groups = prior_groups(ctx["model"], ctx["args"], ctx["kwargs"], prior, ctx["names"], ctx["select"])
            for group, variables, group_dims in zip(("prior", "prior_predictive"), groups, ctx["dims"]):
                _add_group(dt, group, variables, group_dims, coords)
        if predictions is not None or pred_kwargs:
            new_args, new_kwargs = _prediction_inputs(predictions, pred_kwargs)
            pred, constant, pdims = predictions_groups(
                ctx["free_model"],
                ctx["user_model"],
                ctx["draws"],
                ctx["chains"],
                new_args,
                new_kwargs,
                pred_dims,
                num=ctx["num"],
            )
            _add_group(dt, "predictions", pred, pdims, coords)
            if constant:
                _add_group(dt, "predictions_constant_data", constant, pdims, coords)
        if infer_discrete:
            _enumeration.add_discrete_draws(dt, ctx, coords, dims)
        _stacking.stack_tree(dt, _stacking.resolve(stack, _tree_names(dt)))
        if not stack:
            _stacking.hint(dt["observed_data"].data_vars if "observed_data" in dt.children else ())
        _mark_point_estimate(dt)
        return dt


def _tree_names(dt):
    return [n for child in dt.children.values() for n in child.data_vars]


#: the groups of a point fit's tree whose draws come from the estimate (all identical in
#: ``posterior`` and ``log_likelihood``; real likelihood draws at the estimate in the others)
POINT_ESTIMATE_GROUPS = ("posterior", "posterior_predictive", "log_likelihood", "predictions")


def _mark_point_estimate(dt: xr.DataTree) -> None:
    """A point fit's tree says so on each group ArviZ reads draws from, not only at the root:
    ``attrs["point_estimate"] = "mle"`` (or ``"map"``), so code handed one group can tell."""
    method = dt.attrs.get("point_estimate")
    if method:
        for name in POINT_ESTIMATE_GROUPS:
            if name in dt.children:
                dt.children[name].attrs["point_estimate"] = method


def _prediction_inputs(predictions, pred_kwargs):
    if predictions is None:
        return (), dict(pred_kwargs)
    if isinstance(predictions, Mapping):
        return (), {**predictions, **dict(pred_kwargs or {})}
    if isinstance(predictions, tuple):
        return predictions, dict(pred_kwargs or {})
    raise TypeError(
        f"to_datatree: predictions must be the program's new positional arguments as a tuple, e.g. "
        f"predictions=(x_new,), or its keyword arguments as a dict; got a {type(predictions).__name__}."
    )


def _add_group(dt, group, variables, group_dims, coords):
    # from_dict reads the dims of the predictions groups from pred_dims, of the others from dims
    tree = from_dict(
        {group: variables},
        coords=dict(coords or {}),
        dims=dict(group_dims),
        pred_dims=dict(group_dims),
        pred_coords=dict(coords or {}),
    )
    dt[group] = tree[group]
    dt[group].attrs.update(_LIBRARY)


def _to_datatree(result, coords, dims, num_draws, predictive, log_likelihood):
    samples, stats, model, args, kwargs, attrs = _unpack(result, num_draws)
    user_model, model = model, _replay.allow_masked_nan(model)
    tr = _replay.trace_model(model, args, kwargs)
    obs = _replay.require_observed(model, tr)
    names = _replay.observed_names(tr)  # site → observation name (obs_mask: y_observed → y)
    # a subsampling plate draws new rows on every run: pin the rows of this first run for all
    free_model, model = model, _replay._fixed_rows(model, tr)
    # only a plate that really subsamples; every plate has a _Subsample site
    if any(site_is_subsample(s) and s["value"].numel() < s["fn"].size for s in tr.nodes.values()):
        attrs["subsampled"] = 1  # observed_data and the pointwise values cover one minibatch only
    latent = _replay.latent_sites(tr)
    chains, draws = next(iter(samples.values())).shape[:2]
    # replay only latent sites; pyro.param values recorded by a fit live in the param store
    flat = {k: v.reshape((chains * draws,) + v.shape[2:]) for k, v in samples.items() if k in latent}
    point = bool(attrs.get("point_estimate"))
    one_or_all = {k: v[:1] for k, v in flat.items()} if point else flat

    determ = {n: s for n, s in _replay.deterministic_sites(tr).items() if n not in samples}
    post_dims = {name: _site_dims(name, site) for name, site in {**latent, **determ}.items()}
    for k, v in samples.items():
        post_dims.setdefault(k, [f"{k}_dim_{i}" for i in range(v.dim() - 2)])
    posterior = {k: _np(v) for k, v in samples.items()}
    if determ:
        values, _ = _replay.deterministic_draws(model, one_or_all, args, kwargs)
        for k, v in values.items():
            v = v.expand((chains * draws,) + v.shape[1:]) if point else v
            posterior[k] = _np(v.reshape((chains, draws) + v.shape[1:]))
    user_coords = dict(coords or {})
    # the sample groups and the observation groups are built apart: with obs_mask, "y" is the
    # imputed data in posterior (every row) and the observations in observed_data (rows kept)
    sample_groups = {"posterior": posterior}
    if stats:
        sample_groups["sample_stats"] = {k: _np(v) for k, v in stats.items()}
    dt = from_dict(sample_groups, coords=user_coords, dims={**post_dims, **(dims or {})}, attrs={"/": attrs})

    factors = list(_replay.factor_sites(tr))
    groups = _likelihood_groups(log_likelihood, names, factors)
    obs_data = _observations(obs, names, groups, tr)
    obs_dims = {var: d["dims"] for var, d in obs_data.items()}
    obs_coords = {d["dims"][0]: d["rows"] for d in obs_data.values() if d["rows"] is not None}
    data: dict[str, dict[str, np.ndarray]] = {}
    if predictive:
        pp, _ = _replay.predictive_draws(model, flat, args, kwargs, num=chains * draws)
        data["posterior_predictive"] = {
            names[k]: obs_data[names[k]]["select"](_np(v.reshape((chains, draws) + v.shape[1:])))
            for k, v in pp.items()
            if k in names
        }
    data["observed_data"] = {var: d["values"] for var, d in obs_data.items()}
    constant = _constant_data(user_model, args, kwargs, obs)
    if constant:
        data["constant_data"] = {k: _np(v) for k, v in constant.items()}
        first = next(iter(obs))
        first_dims = _site_dims(first, obs[first])
        for k, v in constant.items():
            names_k = [f"{k}_dim_{i}" for i in range(v.dim())]
            if v.dim() and first_dims and v.shape[0] == obs[first]["value"].shape[0]:
                names_k[0] = first_dims[0]  # rows of X share the observations' plate
            obs_dims[k] = names_k
    if log_likelihood is not False:
        sites = list(dict.fromkeys(s for members in groups.values() for s in members))
        # a point fit has one distinct draw: evaluate it once and repeat it
        ll, how = _replay.pointwise_log_likelihood(model, one_or_all, args, kwargs, sites=sites)
        data["log_likelihood"] = {}
        for var, members in groups.items():
            total = _fold(var, members, ll)
            total = total.expand((chains * draws,) + total.shape[1:]) if point else total
            data["log_likelihood"][var] = obs_data[var]["select_ll"](
                _np(total.reshape((chains, draws) + total.shape[1:]))
            )
        attrs["log_likelihood_method"] = how
        left_out = [f for f in factors if f not in sites]
        if left_out:
            attrs["factor_sites"] = left_out
            first = next(iter(obs_data))
            warn(
                [
                    f"to_datatree: the pyro.factor site(s) {left_out} add to the model's log density but are not "
                    "part of any observation's log_likelihood, so LOO ignores them. If a factor belongs to an "
                    f"observation (hand-written censoring), fold it in: log_likelihood={{{first!r}: "
                    f"[{first!r}, {left_out[0]!r}]}}."
                ]
            )
    # pointwise values have the site's batch dims only (a multivariate event is summed)
    all_obs_dims = {**obs_dims, **(dims or {})}
    for group, variables in data.items():
        # from_dict drops the trailing dims a variable does not have
        tree = from_dict({group: variables}, coords={**obs_coords, **user_coords}, dims=all_obs_dims)
        dt[group] = tree[group]
    dt.attrs.update(attrs)
    ctx = {
        "model": model,
        "free_model": free_model,
        "user_model": user_model,
        "args": args,
        "kwargs": kwargs,
        "names": names,
        "select": {var: d["select"] for var, d in obs_data.items()},
        "dims": ({**post_dims, **(dims or {})}, all_obs_dims),
        "draws": flat,
        "chains": chains,
        "num": chains * draws,
    }
    _warn_hidden_observations(obs, names)
    # ArviZ's converters (from_numpyro) stamp every group, not only the root
    for group in dt.children.values():
        group.attrs.update(_LIBRARY)
    return dt, ctx


def _likelihood_groups(spec, names, factors):
    """Log-likelihood variable → the sites summed into it."""
    observed = {var: site for site, var in names.items()}
    groups = {var: [site] for var, site in observed.items()}
    if spec is True or spec is False:
        return groups
    if not isinstance(spec, Mapping):
        raise TypeError(f"to_datatree: log_likelihood must be True, False or a mapping; got {spec!r}.")
    for var, members in spec.items():
        if isinstance(members, str):
            members = [members]
        bad = [m for m in members if m not in observed and m not in factors]
        if var not in observed or bad:
            raise ValueError(
                f"to_datatree: log_likelihood={{{var!r}: {list(members)!r}}} names "
                f"{bad if bad else [var]} which {'are' if len(bad) > 1 else 'is'} not "
                f"{'an observed or factor site' if bad else 'an observed site'}; observed: {list(observed)}, "
                f"factors: {factors}. The key is an observed site, the list its sites and factors."
            )
        groups[var] = [observed.get(m, m) for m in members]
    return groups


def _fold(var, members, ll):
    """Sum the pointwise values of ``members`` (each broadcast to the first one's shape)."""
    total = ll[members[0]]
    for m in members[1:]:
        try:
            total = total + ll[m].expand_as(total) if ll[m].shape != total.shape else total + ll[m]
        except RuntimeError:
            raise ValueError(
                f"to_datatree: log_likelihood for {var!r}: site {m!r} has pointwise shape {tuple(ll[m].shape[1:])}, "
                f"which does not match {members[0]!r}'s {tuple(total.shape[1:])}. Give the factor one term per "
                "observation, inside the same plate."
            ) from None
    return total


def _observations(obs, names, groups, tr):
    """Per observation variable: values, dims, and the selection of the rows that are data.

    Masked observations (``obs_mask``, ``poutine.mask``) are not data: they are left out of
    observed_data, posterior_predictive and log_likelihood alike (ArviZ's LOO has no notion of
    a missing value), the kept batch entries flattened into one dim ``{var}_observed`` whose
    coordinates are their flat indices in the site's batch shape.
    """
    out = {}
    for site, var in names.items():
        s = obs[site]
        value = s["value"]
        dims = _site_dims(var, s)
        # an observation counts where any site folded into it counts (a censored row is masked
        # in y and present in its factor)
        masks = [_replay.observation_mask(tr.nodes[m]) for m in groups.get(var, [site])]
        mask = None if any(m is None for m in masks) else torch.stack(torch.broadcast_tensors(*masks)).any(0)
        if mask is None:
            out[var] = {"values": _np(value), "dims": dims, "rows": None, "select": _id, "select_ll": _id}
            continue
        batch = mask.dim()
        keep = np.flatnonzero(_np(mask.reshape(-1)))
        event = value.dim() - batch

        def select(a, batch=batch, keep=keep, event=event):
            lead = a.shape[: a.ndim - batch - event]
            flat = a.reshape(lead + (-1,) + a.shape[a.ndim - event :])
            return flat[(slice(None),) * len(lead) + (keep,)]

        def select_ll(a, batch=batch, keep=keep):
            flat = a.reshape(a.shape[: a.ndim - batch] + (-1,))
            return flat[..., keep]

        out[var] = {
            "values": select(_np(value)),
            "dims": [f"{var}_observed"] + dims[batch:],
            "rows": keep,
            "select": select,
            "select_ll": select_ll,
        }
    return out


def _id(a):
    return a


def _warn_hidden_observations(obs, names):
    """An observed site whose batch shape is empty but whose event holds several values: LOO
    sees one observation where the user has many (``.to_event`` over the data axis)."""
    for site, var in names.items():
        fn = obs[site]["fn"]
        if not fn.batch_shape and fn.event_shape.numel() > 1:
            warn(
                [
                    f"to_datatree: observed site {var!r} has event shape {tuple(fn.event_shape)} and no batch dims, "
                    "so its log_likelihood is one value per draw and LOO sees a single observation. If its values "
                    "are separate observations, declare them with pyro.plate instead of .to_event(); if they are "
                    "one multivariate observation, this is right and LOO needs several such sites or a plate."
                ]
            )


_LIBRARY = {"inference_library": "pyro", "inference_library_version": pyro.__version__}


def _unpack(result: Any, num_draws: int):
    """(samples (chain, draw, …), stats, model, args, kwargs, attrs) from any supported result."""
    if isinstance(result, Posterior):
        attrs = {**_LIBRARY, "method": result.method, "created_by": "pyro_mle"}
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
        attrs = {**_LIBRARY, "method": "mcmc", "created_by": "pyro_mle"}
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
        **_LIBRARY,
        "method": getattr(fit, "method", "point"),
        "created_by": "pyro_mle",
        # every group drawn from the estimate carries it too (see _mark_point_estimate)
        "point_estimate": str(getattr(fit, "method", "point")),
    }
    return samples, {}, model, args, kwargs, attrs


def loo_pit(dt: xr.DataTree, **kwargs: Any) -> Any:
    """LOO-PIT values (:func:`arviz_stats.loo_pit`) for a posterior *or* a point fit.

    A point fit's DataTree (``attrs["point_estimate"]``: ``"mle"`` or ``"map"``) has
    identical draws, so Pareto smoothing of its importance weights is undefined (ArviZ's own
    ``loo``, ``loo_pit`` and ``plot_loo_pit`` stop with "All tail values are the same"); its
    leave-one-out weights are taken as uniform instead, which makes the result the PIT of the
    plug-in predictive distribution at the estimate. That ignores the estimate's own
    dependence on the left-out row, so it is optimistic for small data. For a posterior tree
    without event dims this is :func:`arviz_stats.loo_pit` unchanged.

    An observation with event dims (a row ``.to_event(1)`` inside a plate: one pointwise
    log-likelihood per row, several values per row) is refused by ArviZ's own
    ``loo_pit``, which needs one pointwise value per observed value; here each value gets the
    leave-its-row-out weights of its row, so the result is the PIT of each component under
    the leave-one-row-out predictive.

    Example::

        pit = pyro_mle.loo_pit(pyro_mle.to_datatree(fit))["y"]   # one value per observation
    """
    import arviz_stats as azs

    point = bool(
        dt.attrs.get("point_estimate")
        or ("log_likelihood" in dt.children and dt["log_likelihood"].attrs.get("point_estimate"))
    )
    events = _event_vars(dt)
    if not point and not events:
        return azs.loo_pit(dt, **kwargs)
    ll = dt["log_likelihood"].to_dataset()
    if point:
        n = ll.sizes["chain"] * ll.sizes["draw"]
        log_weights = xr.full_like(ll, -np.log(n))
        pareto_k = xr.zeros_like(ll.isel(chain=0, draw=0, drop=True))
    else:
        log_weights, pareto_k = xr.Dataset(), xr.Dataset()
        for var in ll.data_vars:
            elpd = azs.loo(dt, var_name=var, pointwise=True)
            log_weights[var], pareto_k[var] = elpd.log_weights, elpd.pareto_k
    pp = dt["posterior_predictive"].to_dataset()
    for var in events:  # each value of a row takes its row's weights
        log_weights[var] = log_weights[var].broadcast_like(pp[var])
        pareto_k[var] = pareto_k[var].broadcast_like(pp[var].isel(chain=0, draw=0, drop=True))
    return azs.loo_pit(dt, log_weights=log_weights, pareto_k=pareto_k, **kwargs)


def _event_vars(dt: xr.DataTree) -> list[str]:
    """Observation variables whose predictive draws have dims their log-likelihood lacks."""
    if "log_likelihood" not in dt.children or "posterior_predictive" not in dt.children:
        return []
    ll, pp = dt["log_likelihood"], dt["posterior_predictive"]
    return [v for v in ll.data_vars if v in pp.data_vars and set(pp[v].dims) - set(ll[v].dims)]
