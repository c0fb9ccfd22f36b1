"""Discrete latent sites summed out by enumeration: the marginal pointwise log-likelihood
and draws of the discrete sites from their conditional posterior.

NUTS (Pyro's, which the library falls back to for such programs) never draws a discrete
latent site marked ``infer={"enumerate": "parallel"}`` (or under ``config_enumerate``): it
sums it out. Its posterior draws therefore hold the continuous sites only, and the
pointwise log-likelihood of an observation is the *marginal* one,

.. math:: \\log p(y_n \\mid \\theta) = \\log \\sum_k p(z_n = k \\mid \\theta)\\, p(y_n \\mid z_n = k, \\theta),

computed here by running the program under :class:`pyro.poutine.enum` (every value of each
discrete site at once, on its own tensor dim left of the plates), adding the log-density of
the enumerated sites an observation depends on, and a log-sum-exp over their enumeration
dims. :func:`discrete_draws` draws the discrete sites from
:math:`p(z \\mid y, \\theta)` at each posterior draw with :func:`pyro.infer.infer_discrete`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import xarray as xr
from arviz_base import from_dict
from pyro import poutine
from pyro.infer import infer_discrete

from . import _replay
from ._groups import _np, _site_dims
from .diagnostics import warn


def enumerated(model: Callable, names: Sequence[str]) -> Callable:
    """``model`` with the discrete latent sites ``names`` enumerated in parallel (whatever
    the program says: ``"sequential"`` enumeration has no tensor dim to sum over)."""
    chosen = set(names)
    return poutine.infer_config(model, lambda msg: {"enumerate": "parallel"} if msg["name"] in chosen else {})


def _enum_dims(t: torch.Tensor, dims: set[int]) -> set[int]:
    """The enumeration dims (negative) along which ``t`` varies (size above 1)."""
    return {d for d in dims if t.dim() >= -d and t.shape[d] > 1}


def _marginal(tr: poutine.Trace, sites: Sequence[str], discrete: Sequence[str], shared: set) -> dict[str, torch.Tensor]:
    """Per site of ``sites``: its log-density with every enumerated site it depends on summed out
    (log-sum-exp over their enumeration dims, keepdim), in an enumerated trace ``tr``. Adds
    to ``shared`` each (site, discrete site, plates) where the discrete site is shared."""
    enum = {n: tr.nodes[n] for n in discrete if tr.nodes[n]["infer"].get("_enumerate_dim") is not None}
    dim_of = {n: s["infer"]["_enumerate_dim"] for n, s in enum.items()}
    all_dims = set(dim_of.values())
    factor = {n: _replay._site_log_lik(s) for n, s in enum.items()}
    out = {}
    for name in sites:
        lp = _replay._site_log_lik(tr.nodes[name])
        dims, included = _enum_dims(lp, all_dims), []
        # an enumerated site whose dim the observation varies along brings its own prior
        # term, and that term may vary along the dims of its own parents (a chain of them)
        grew = True
        while grew:
            grew = False
            for n, d in dim_of.items():
                if d in dims and n not in included:
                    included.append(n)
                    dims |= _enum_dims(factor[n], all_dims)
                    grew = True
        total = lp
        for n in included:
            try:
                total = total + factor[n]
            except RuntimeError:
                raise ValueError(
                    f"to_datatree: observation {name!r} depends on the enumerated site {n!r}, whose log-density has "
                    f"shape {tuple(factor[n].shape)} against the observation's {tuple(lp.shape)}: the discrete site "
                    "sits in a plate the observation is not in, so no pointwise marginal exists. Marginalise it in "
                    "the program, or pass its draws."
                ) from None
        for d in sorted(dims):
            total = total.logsumexp(d, keepdim=True)
        out[name] = total
        plates = _plates(tr.nodes[name])
        for n in included:
            # a discrete site in fewer plates than the observation is shared by several values
            missing = plates - _plates(enum[n]) - {"_draws"}
            if missing:
                shared.add((name, n, tuple(sorted(missing))))
    return out


def _plates(site: dict) -> set[str]:
    return {f.name for f in site["cond_indep_stack"] if f.vectorized}


def _warn_shared(shared: set) -> None:
    """Each pointwise value is then a marginal, but the values are not independent given the
    continuous latents, which PSIS-LOO assumes."""
    for name, parent, plates in sorted(shared):
        warn(
            [
                f"to_datatree: the enumerated site {parent!r} is shared by the values of {name!r} across the "
                f"plate(s) {list(plates)}: each pointwise log-likelihood is that value's marginal, but the values "
                "are not independent given the other latents, as LOO assumes. Put the discrete site inside the "
                "plate if each observation has its own."
            ]
        )


def pointwise_log_likelihood(
    model: Callable,
    draws: Mapping[str, torch.Tensor],
    args: tuple,
    kwargs: Mapping[str, Any],
    sites: Sequence[str],
    discrete: Sequence[str],
    tr0: poutine.Trace,
) -> tuple[dict[str, torch.Tensor], str]:
    """Marginal log-likelihood of every value of ``sites`` under every draw of the continuous
    latents, the ``discrete`` sites summed out: ``({site: (S, *batch shape)}, how)``.

    ``how`` is ``"enumerated, vectorised"`` (all draws in one run under an extra plate,
    checked against single-draw runs at the first and last draw) or ``"enumerated, loop"``.
    """
    kwargs = dict(kwargs)
    nesting = _replay.max_plate_nesting(tr0)
    shapes = {n: _replay._site_log_lik(tr0.nodes[n]).shape for n in sites}
    model = enumerated(_replay._fixed_rows(model, tr0), discrete)
    latent = _replay.latent_sites(tr0)
    shared: set = set()

    def run(data: dict, first_dim: int) -> dict[str, torch.Tensor]:
        with poutine.enum(first_available_dim=first_dim):
            tr = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
        return _marginal(tr, sites, discrete, shared)

    def one(i: int) -> dict[str, torch.Tensor]:
        values = run({k: v[i] for k, v in draws.items()}, -(nesting + 1))
        return {n: v.reshape(shapes[n]) for n, v in values.items()}

    num = next(iter(draws.values())).shape[0] if draws else 1
    with torch.no_grad():
        if draws:
            try:
                data = {k: _replay._pad(v, latent[k], nesting) for k, v in draws.items()}
                with _draws_plate(num, nesting):
                    values = run(data, -(nesting + 2))
                out = {n: v.reshape((num,) + tuple(shapes[n])) for n, v in values.items()}
                for i in {0, num - 1}:
                    single = one(i)
                    if not all(torch.allclose(out[n][i], single[n], rtol=1e-10, atol=1e-12) for n in sites):
                        raise ValueError("vectorised replay disagrees with a single-draw replay")
                _warn_shared(shared)
                return out, "enumerated, vectorised"
            except Exception:  # noqa: BLE001 - any failure of the vectorised path means: loop
                pass
        per_draw = [one(i) for i in range(num)]
    _warn_shared(shared)
    return {n: torch.stack([d[n] for d in per_draw]) for n in sites}, "enumerated, loop"


def _draws_plate(num: int, nesting: int):
    import pyro

    return pyro.plate("_draws", num, dim=-(nesting + 1))


def discrete_draws(
    model: Callable,
    draws: Mapping[str, torch.Tensor],
    args: tuple,
    kwargs: Mapping[str, Any],
    discrete: Sequence[str],
    tr0: poutine.Trace,
) -> tuple[dict[str, torch.Tensor], str]:
    """One draw of each ``discrete`` site from :math:`p(z \\mid y, \\theta)` per posterior draw
    θ (:func:`pyro.infer.infer_discrete`, forward-filter backward-sample), from the current
    generators: ``({site: (S, *shape)}, how)``.

    All draws in one run under an extra plate (``how="vectorised"``) when the program's
    enumerated log-likelihood replays that way and agrees with single-draw runs (the random
    draws themselves cannot be compared), else a loop over draws (``"loop"``)."""
    kwargs = dict(kwargs)
    nesting = _replay.max_plate_nesting(tr0)
    enum_model = enumerated(_replay._fixed_rows(model, tr0), discrete)
    shapes = {n: tr0.nodes[n]["value"].shape for n in discrete}
    num = next(iter(draws.values())).shape[0] if draws else 1
    observed = list(_replay.observed_sites(tr0))
    with torch.no_grad():
        if draws and observed:
            _, how = pointwise_log_likelihood(model, draws, args, kwargs, observed, discrete, tr0)
            if how.endswith("vectorised"):
                latent = _replay.latent_sites(tr0)
                data = {k: _replay._pad(v, latent[k], nesting) for k, v in draws.items()}
                conditioned = poutine.condition(enum_model, data=data)

                def plated(*a, **k):  # inside: infer_discrete blocks the handlers around it
                    with _draws_plate(num, nesting):
                        return conditioned(*a, **k)

                sampler = infer_discrete(plated, first_available_dim=-(nesting + 2), temperature=1)
                tr = poutine.trace(sampler).get_trace(*args, **kwargs)
                values = {n: tr.nodes[n]["value"] for n in discrete}
                if all(v.numel() == num * shapes[n].numel() for n, v in values.items()):
                    return {n: v.reshape((num,) + tuple(shapes[n])) for n, v in values.items()}, "vectorised"
        out = {n: [] for n in discrete}
        for i in range(num):
            conditioned = poutine.condition(enum_model, data={k: v[i] for k, v in draws.items()})
            sampler = infer_discrete(conditioned, first_available_dim=-(nesting + 1), temperature=1)
            tr = poutine.trace(sampler).get_trace(*args, **kwargs)
            for n in discrete:
                out[n].append(tr.nodes[n]["value"].reshape(shapes[n]))
    return {n: torch.stack(v) for n, v in out.items()}, "loop"


def add_discrete_draws(
    dt: xr.DataTree,
    ctx: Mapping[str, Any],
    coords: Mapping[str, Sequence] | None,
    dims: Mapping[str, Sequence[str]] | None,
) -> None:
    """``to_datatree(..., infer_discrete=True)``: draws of the discrete sites NUTS summed out,
    added to ``dt["posterior"]`` (dims from their plates), ``attrs["infer_discrete_method"]``
    set. ``ctx`` is the converter's context (model, args, kwargs, flat draws, chains)."""
    model, args, kwargs = ctx["model"], ctx["args"], ctx["kwargs"]
    tr = _replay.trace_model(model, args, kwargs)
    discrete = _replay.discrete_without_draws(tr, ctx["draws"])
    if not discrete:
        warn(["to_datatree: infer_discrete=True, but every discrete latent site has draws already; nothing added."])
        return
    values, how = discrete_draws(model, ctx["draws"], args, kwargs, discrete, tr)
    dt.attrs["infer_discrete_method"] = how
    chains = ctx["chains"]
    variables = {n: _np(v.reshape((chains, -1) + v.shape[1:])) for n, v in values.items()}
    var_dims = {n: _site_dims(n, tr.nodes[n]) for n in discrete} | dict(dims or {})
    extra = from_dict({"posterior": variables}, coords=dict(coords or {}), dims=var_dims)["posterior"].to_dataset()
    ds = dt["posterior"].to_dataset()
    attrs = dict(ds.attrs)
    ds = ds.assign(extra.data_vars)
    ds.attrs = attrs
    dt["posterior"] = xr.DataTree(ds)
