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
dims.

When the observations are dependent given the continuous latents because they share an
enumerated site (a hidden Markov chain ``z_0 → z_1 → …`` under ``pyro.markov``, whose dims Pyro
recycles, or one discrete site read by several observed sites), that marginal is not the
quantity leave-one-out needs. PSIS-LOO reweights the posterior draws by
:math:`1 / p(y_n \\mid y_{-n}, \\theta)` to reach :math:`p(\\theta \\mid y_{-n})`, so the pointwise
value is then the leave-one-out conditional (as for non-factorised models, Bürkner, Gabry and
Vehtari 2021),

.. math:: \\log p(y_n \\mid y_{-n}, \\theta) = \\log p(y \\mid \\theta) - \\log p(y_{-n} \\mid \\theta),

both terms summed over every enumerated site exactly by Pyro's tensor-variable elimination
(:func:`pyro.ops.contract.contract_to_tensor`, the forward algorithm for a chain), with the
value ``y_n`` left out of the second. (The sequential :math:`\\log p(y_t \\mid y_{<t}, \\theta)`
sums to :math:`\\log p(y \\mid \\theta)` too, but is the quantity of leave-future-out, not of
LOO.) ``how`` then says ``"enumerated, conditional, …"``. :func:`discrete_draws` draws the discrete sites from
:math:`p(z \\mid y, \\theta)` at each posterior draw with :func:`pyro.infer.infer_discrete`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import xarray as xr
from arviz_base import from_dict
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import infer_discrete
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor

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


def _recycled(tr: poutine.Trace, discrete: Sequence[str]) -> dict[int, list[str]]:
    """Enumeration dims that ``pyro.markov`` gave to more than one site: dim → its sites."""
    by_dim: dict[int, list[str]] = {}
    for n in discrete:
        d = tr.nodes[n]["infer"].get("_enumerate_dim")
        if d is not None:
            by_dim.setdefault(d, []).append(n)
    return {d: ns for d, ns in by_dim.items() if len(ns) > 1}


def _marginal(
    tr: poutine.Trace, sites: Sequence[str], discrete: Sequence[str], shared: set, readers: dict | None = None
) -> dict[str, torch.Tensor]:
    """Per site of ``sites``: its log-density with every enumerated site it depends on summed out
    (log-sum-exp over their enumeration dims, keepdim), in an enumerated trace ``tr`` whose
    enumerated sites each have their own dim. Adds to ``shared`` each (site, discrete site,
    plates) where the discrete site is shared, and to ``readers`` (if given) discrete site →
    the observed sites whose marginal includes it."""
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
            if readers is not None:
                readers.setdefault(n, set()).add(name)
            # a discrete site in fewer plates than the observation is shared by several values
            missing = plates - _plates(enum[n]) - {"_draws"}
            if missing:
                shared.add((name, n, tuple(sorted(missing))))
    return out


def _conditional(
    tr: poutine.Trace, sites: Sequence[str], terms: Sequence[str], discrete: Sequence[str], shapes: Mapping
) -> dict[str, torch.Tensor]:
    """Per site of ``sites``: :math:`\\log p(y_n \\mid y_{-n}, \\theta)` of each of its values
    (``(draws, values)``, or ``(values,)`` in a single-draw run), by exact contraction of the
    log-densities of ``terms`` (the observed and factor sites) and of the enumerated sites,
    once with every value and once per left-out value."""
    tr.compute_log_prob()
    tr.pack_tensors()
    enum = [n for n in discrete if tr.nodes[n]["infer"].get("_enumerate_dim") is not None]
    names = [n for n in terms if n in tr.nodes] + enum

    def ordinal(site: dict) -> frozenset:
        return frozenset(tr.plate_to_symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized)

    def term(n: str) -> torch.Tensor:
        p = tr.nodes[n]["packed"]
        lp = p["unscaled_log_prob"]
        return lp if n in enum else packed.scale_and_mask(lp, mask=p["mask"])

    base = {n: term(n) for n in names}
    sum_dims = {tr.nodes[n]["infer"]["_enumerate_symbol"] for n in enum}
    target = frozenset({tr.plate_to_symbol["_draws"]}) if "_draws" in tr.plate_to_symbol else frozenset()

    def evidence(replaced: Mapping[str, torch.Tensor]) -> torch.Tensor:
        tree: OrderedDict = OrderedDict()
        for n in names:
            tree.setdefault(ordinal(tr.nodes[n]), []).append(replaced.get(n, base[n]))
        return packed.unpack(contract_to_tensor(tree, sum_dims, target_ordinal=target), tr.symbol_to_dim).reshape(-1)

    full = evidence({})
    out = {}
    for name in sites:
        site = tr.nodes[name]
        lp = scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])
        size = shapes[name].numel()
        values = []
        for j in range(size):
            keep = torch.ones(size, dtype=torch.bool, device=lp.device)
            keep[j] = False
            left_out = torch.where(keep.reshape(shapes[name]), lp, torch.zeros((), dtype=lp.dtype, device=lp.device))
            values.append(full - evidence({name: packed.pack(left_out, site["infer"]["_dim_to_symbol"])}))
        out[name] = torch.stack(values, -1)
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
    checked against single-draw runs at the first and last draw) or ``"enumerated, loop"``;
    ``"enumerated, conditional, …"`` when the observations share enumerated sites and the
    values are the leave-one-out conditionals (module docstring).
    """
    kwargs = dict(kwargs)
    nesting = _replay.max_plate_nesting(tr0)
    shapes = {n: _replay._site_log_lik(tr0.nodes[n]).shape for n in sites}
    model = enumerated(_replay._fixed_rows(model, tr0), discrete)
    latent = _replay.latent_sites(tr0)
    observed = list(_replay.observed_sites(tr0))
    terms = [*observed, *_replay.factor_sites(tr0)]
    # dependence is judged over every observed site, whichever sites are asked for
    judged = list(dict.fromkeys([*sites, *observed]))
    shared: set = set()
    kind = {"conditional": False}

    def run(data: dict, first_dim: int) -> dict[str, torch.Tensor]:
        with poutine.enum(first_available_dim=first_dim):
            tr = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
        readers: dict = {}
        # pyro.markov recycles the dims of a chain's sites: the per-dim marginal cannot tell them apart
        found: set = set()
        if not _recycled(tr, discrete):
            values = _marginal(tr, judged, discrete, found, readers)
            if all(len(r) < 2 for r in readers.values()):
                shared.update(x for x in found if x[0] in sites)
                return {n: values[n] for n in sites}
        kind["conditional"] = True  # observations dependent through an enumerated site
        return _conditional(tr, sites, terms, discrete, shapes)

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
                return out, "enumerated, conditional, vectorised" if kind["conditional"] else "enumerated, vectorised"
            except Exception:  # noqa: BLE001 - any failure of the vectorised path means: loop
                pass
        shared.clear()
        kind["conditional"] = False
        per_draw = [one(i) for i in range(num)]
    _warn_shared(shared)
    how = "enumerated, conditional, loop" if kind["conditional"] else "enumerated, loop"
    return {n: torch.stack([d[n] for d in per_draw]) for n in sites}, how


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
