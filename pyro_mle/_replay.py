"""Running a Pyro program at given values of its latent sites: the observed sites, their
pointwise log-likelihood, and posterior predictive draws.

Replaying many draws at once needs the program to broadcast over an extra leading plate;
programs written with ``X @ w`` for a weight vector ``w`` do not, but run unchanged under
:func:`torch.func.vmap` over the draws. Every function here tries the broadcast replay first,
then (for values computed from the latents, not drawn) vmap, and falls back to a loop over
draws, and says which it used, so no result is ever silently missing.

Site roles: a ``pyro.deterministic`` site (a ``Delta`` observed at its own value) and a
``pyro.factor`` site (a ``Unit`` distribution) are sample sites to Pyro but neither a latent
nor an observation here; :func:`deterministic_sites` and :func:`factor_sites` find them.
``obs_mask`` splits an observed site ``y`` into ``y_observed`` (observed, masked),
``y_unobserved`` (latent, the imputed values) and a deterministic ``y``;
:func:`observed_names` names the observation ``y`` again.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.func import vmap

from ._validation import validation


@contextlib.contextmanager
def param_store_copy() -> Iterator[None]:
    """Run inside a param-store scope that starts as a copy of the current store: the
    program sees every ``pyro.param`` at its current value, and nothing created or changed
    inside (a guide's parameters, say) leaks out."""
    store = pyro.get_param_store()
    with store.scope(state=copy.deepcopy(store.get_state())):
        yield


def trace_model(model: Callable, args: tuple, kwargs: Mapping[str, Any]) -> poutine.Trace:
    """One run of ``model`` under a trace, shapes of every site filled in."""
    tr = poutine.trace(model).get_trace(*args, **kwargs)
    tr.compute_log_prob()
    return tr


def _base_fn(fn: Any) -> Any:
    while hasattr(fn, "base_dist"):  # Masked, Expanded, Independent wrappers
        fn = fn.base_dist
    return fn


def is_deterministic(site: dict) -> bool:
    """A ``pyro.deterministic`` site: a value computed from the latents, not a random variable."""
    return site["type"] == "sample" and bool(site["infer"].get("_deterministic"))


def is_factor(site: dict) -> bool:
    """A ``pyro.factor`` site: a term added to the log density, with no value to predict."""
    return site["type"] == "sample" and isinstance(_base_fn(site["fn"]), dist.Unit)


def _is_real_sample(site: dict) -> bool:
    return (
        site["type"] == "sample"
        and not site_is_subsample(site)
        and not site["infer"].get("_do_not_trace")
        and not is_deterministic(site)
        and not is_factor(site)
    )


def deterministic_sites(tr: poutine.Trace) -> dict[str, dict]:
    """``pyro.deterministic`` sites of a trace, in program order."""
    return {n: s for n, s in tr.nodes.items() if is_deterministic(s)}


def factor_sites(tr: poutine.Trace) -> dict[str, dict]:
    """``pyro.factor`` sites of a trace, in program order."""
    return {n: s for n, s in tr.nodes.items() if is_factor(s)}


def observed_names(tr: poutine.Trace) -> dict[str, str]:
    """Observed site → the name the user gave the observation: ``y_observed`` → ``y`` for a
    site split by ``obs_mask`` (its ``y_unobserved`` latent and deterministic ``y`` present),
    every other observed site → itself."""
    out = {}
    for n in observed_sites(tr):
        base = n[: -len("_observed")]
        split = (
            n.endswith("_observed")
            and f"{base}_unobserved" in tr.nodes
            and base in tr.nodes
            and is_deterministic(tr.nodes[base])
        )
        out[n] = base if split else n
    return out


def observation_mask(site: dict) -> torch.Tensor | None:
    """Which observations of a site count, over its batch shape (``None``: all of them).
    ``poutine.mask`` and ``obs_mask`` set it; a masked observation is not data."""
    mask = site["mask"]
    if mask is None or mask is True:
        return None
    shape = site["fn"].batch_shape
    m = torch.as_tensor(mask, dtype=torch.bool).expand(shape)
    return None if bool(m.all()) else m


class MaskedNaN(Messenger):
    """Lets an observed value hold NaN where its site is masked (``obs_mask``, ``poutine.mask``):
    Pyro's support check refuses NaN even where the mask drops it, so those entries are
    replaced by one of the site's own finite values (always inside the support) before the
    site runs. NaN at an unmasked entry is left for Pyro to refuse."""

    def _process_message(self, msg: dict) -> None:
        value, mask = msg.get("value"), msg.get("mask")
        if msg["type"] != "sample" or not msg["is_observed"] or mask is None or isinstance(mask, bool):
            return
        if not torch.is_tensor(value) or not value.is_floating_point():
            return
        nan = torch.isnan(value)
        if not bool(nan.any()):
            return
        event_dim = msg["fn"].event_dim
        nan_rows = nan.reshape(nan.shape[: nan.dim() - event_dim] + (-1,)).any(-1) if event_dim else nan
        if bool((nan_rows & torch.as_tensor(mask, dtype=torch.bool).expand_as(nan_rows)).any()):
            return  # NaN in an observation that counts: Pyro's own error names it
        finite = value[~nan]
        fill = finite.reshape(-1)[0] if finite.numel() else value.new_zeros(())
        msg["infer"]["obs_with_nan"] = value  # the user's tensor, for telling data from inputs
        msg["value"] = torch.where(nan, fill, value)


class _Resample(Messenger):
    """:func:`pyro.poutine.uncondition` for observations only: deterministic and factor sites
    stay as they are (unconditioning Pyro's ``Delta`` of a deterministic inside a plate samples
    it with the plate's shape twice over)."""

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["is_observed"] and not is_deterministic(msg) and not is_factor(msg):
            msg["is_observed"] = False
            msg["infer"]["was_observed"] = True
            msg["infer"]["obs"] = msg["value"]
            msg["value"] = None
            msg["done"] = False


def resample_observed(model: Callable) -> Callable:
    """``model`` with every observed site drawn afresh from its distribution."""
    return _Resample()(model)


def allow_masked_nan(model: Callable) -> Callable:
    """``model`` with :class:`MaskedNaN` applied: NaN accepted in ``obs`` where masked. The
    wrapper keeps the program's name (messages name the user's program) and signature."""
    wrapped = MaskedNaN()(model)
    wrapped.__name__ = getattr(model, "__name__", repr(model))
    wrapped.__wrapped__ = model
    return wrapped


def observed_sites(tr: poutine.Trace) -> dict[str, dict]:
    """Observed sample sites of a trace, in program order."""
    return {n: s for n, s in tr.nodes.items() if _is_real_sample(s) and s["is_observed"]}


def latent_sites(tr: poutine.Trace) -> dict[str, dict]:
    """Latent (non-observed) sample sites of a trace, in program order."""
    return {n: s for n, s in tr.nodes.items() if _is_real_sample(s) and not s["is_observed"]}


def require_observed(model: Callable, tr: poutine.Trace) -> dict[str, dict]:
    """The observed sites, or a clear error when the program observes nothing."""
    obs = observed_sites(tr)
    if not obs:
        name = getattr(model, "__name__", repr(model))
        raise ValueError(
            f"model {name!r} has no observed site, so there is no likelihood to fit. Pass the data "
            "to the model and observe it: pyro.sample('y', dist, obs=y) or a likelihood head "
            "Normal(scale=...)('y', outputs, obs=y)."
        )
    return obs


def max_plate_nesting(tr: poutine.Trace) -> int:
    """How many batch dimensions the program's plates use (at least 1)."""
    dims = [-f.dim for s in tr.nodes.values() if s["type"] == "sample" for f in s["cond_indep_stack"] if f.vectorized]
    return max(dims, default=1)


def _pad(value: torch.Tensor, site: dict, nesting: int) -> torch.Tensor:
    """(S, *site shape) → (S, 1, …, 1, *site shape) so S sits left of every plate dim."""
    site_dims = site["value"].dim()
    batch_dims = site_dims - site["fn"].event_dim
    return value.reshape(value.shape[:1] + (1,) * (nesting - batch_dims) + value.shape[1:])


def _fixed_rows(model: Callable, tr0: poutine.Trace) -> Callable:
    """``model`` with every subsampling plate pinned to the rows ``tr0`` drew, so that all
    replays (and the observed data taken from ``tr0``) refer to the same observations."""
    rows = {n: s["value"] for n, s in tr0.nodes.items() if s["type"] == "sample" and site_is_subsample(s)}
    return poutine.condition(model, data=rows) if rows else model


def _site_log_lik(site: dict) -> torch.Tensor:
    """Pointwise log-density of an observed site: event dims summed, its mask applied (masked
    rows give 0, as in the joint density), no subsampling scale."""
    return scale_and_mask(site["fn"].log_prob(site["value"]), mask=site["mask"])


def _vectorised(model, draws, args, kwargs, tr0, resample_observed):
    num = next(iter(draws.values())).shape[0]
    nesting = max_plate_nesting(tr0)
    latent = latent_sites(tr0)
    data = {k: _pad(v, latent[k], nesting) for k, v in draws.items()}
    inner = resample_observed(model) if resample_observed else model
    with pyro.plate("_draws", num, dim=-(nesting + 1)):
        tr = poutine.trace(poutine.condition(inner, data=data)).get_trace(*args, **kwargs)
    return tr, num, nesting


#: the ways of replaying many draws, fastest first (see :func:`replay_sites`)
TIERS = ("vectorised", "vmap", "loop")

#: upper bound on the elements one chunk of a vmapped replay holds per site value (float64:
#: 128 MiB), so thousands of draws of a large program do not materialise at once
VMAP_CHUNK_ELEMENTS = 2**24


def _vmapped(model, draws, args, kwargs, value_of, shapes, tr0):
    """``value_of`` of every draw by :func:`torch.func.vmap` over the draws: the program runs
    once per chunk on batched tensors that look to it like one draw, so ``X @ w`` works
    unchanged. Raises when the program cannot run batched (a Python branch on a latent's
    value, ``.item()``, an op without a batching rule, a random draw inside)."""

    def one_draw(data: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        tr = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
        return (*(f(tr.nodes[n]).reshape(shapes[n]) for n, f in value_of.items()), _trace_valid(tr))

    per_draw = sum(s["value"].numel() for s in tr0.nodes.values() if s["type"] in ("sample", "param"))
    chunk = max(1, VMAP_CHUNK_ELEMENTS // max(per_draw, 1))
    # input checks branch on values (``if bad.any(): raise``), which vmap cannot batch: they are
    # off, and each draw's run returns instead whether its parameters and values pass the same
    # checks (_trace_valid); an invalid draw, or a NaN, sends the caller to the loop, which runs
    # the checks and names the draw
    with validation(False), pyro.validation_enabled(False):
        *values, valid = vmap(one_draw, randomness="error", chunk_size=chunk)(dict(draws))
    if not bool(valid.all()):
        bad = torch.nonzero(~valid).flatten().tolist()
        raise ValueError(f"vmapped replay: draws {bad[:10]} give invalid distribution parameters or values")
    out = dict(zip(value_of, values))
    if any(bool(torch.isnan(v).any()) for v in out.values() if v.is_floating_point()):
        raise ValueError("vmapped replay gave NaN: the loop names the draw with its checks on")
    return out


def _dist_valid(fn: Any) -> torch.Tensor:
    """Whether ``fn`` and every distribution it wraps have parameters inside their
    ``arg_constraints``, as :class:`torch.distributions.Distribution` checks them with
    validation on, without a Python branch on a value (so it runs under vmap)."""
    ok = torch.ones((), dtype=torch.bool)
    while fn is not None:
        for param, constraint in getattr(fn, "arg_constraints", {}).items():
            if torch.distributions.constraints.is_dependent(constraint):
                continue
            if param not in fn.__dict__ and isinstance(
                getattr(type(fn), param, None), torch.distributions.utils.lazy_property
            ):
                continue  # the other parametrisation (logits for probs): not given
            value = getattr(fn, param, None)
            if isinstance(value, torch.Tensor):
                ok = ok & torch.as_tensor(constraint.check(value)).all()
        fn = getattr(fn, "base_dist", None)
    return ok


def _trace_valid(tr: poutine.Trace) -> torch.Tensor:
    """Whether every sample site of ``tr`` has valid distribution parameters and a value in
    its support (a boolean scalar; batched under vmap)."""
    ok = torch.ones((), dtype=torch.bool)
    for site in tr.nodes.values():
        if site["type"] != "sample" or is_deterministic(site):
            continue
        fn = site["fn"]
        ok = ok & _dist_valid(fn)
        support = getattr(fn, "support", None)
        if support is not None and not torch.distributions.constraints.is_dependent(support):
            ok = ok & torch.as_tensor(support.check(site["value"])).all()
    return ok


def _sites_out(tr, names, num, shape_of, value_of):
    out = {}
    for name in names:
        v = value_of(tr.nodes[name])
        target = (num,) + tuple(shape_of[name])
        if v.numel() != torch.Size(target).numel():
            raise ValueError(f"vectorised replay gave {tuple(v.shape)} for {name!r}, expected {target}")
        out[name] = v.reshape(target)
    return out


def replay_sites(
    model: Callable,
    draws: Mapping[str, torch.Tensor],
    args: tuple,
    kwargs: Mapping[str, Any],
    value_of: Mapping[str, Callable[[dict], torch.Tensor]],
    tr0: poutine.Trace | None = None,
    tiers: Sequence[str] = TIERS,
) -> tuple[dict[str, torch.Tensor], str]:
    """``value_of[name](site)`` for every draw: ``({name: (S, *shape in one run)}, how)``.

    Tries three tiers, fastest first: the broadcast replay (one run under an extra plate),
    :func:`torch.func.vmap` over the draws (programs written ``X @ w``, which do not
    broadcast), and a loop over draws. A batched tier's first and last draws are checked
    against single-draw replays; ``how`` says which tier gave the result (``"vectorised"``,
    ``"vmap"`` or ``"loop"``). ``tiers`` restricts the batched tiers tried (the loop is
    always the last resort), for measuring one against another. Latent sites not in
    ``draws`` keep their values of one run (they are none in a conditioned replay of
    posterior draws).
    """
    kwargs = dict(kwargs)
    tr0 = tr0 if tr0 is not None else trace_model(model, args, kwargs)
    shapes = {n: f(tr0.nodes[n]).shape for n, f in value_of.items()}
    model = _fixed_rows(model, tr0)

    def one(i: int) -> dict[str, torch.Tensor]:
        data = {k: v[i] for k, v in draws.items()}
        tr = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
        return {n: f(tr.nodes[n]).reshape(shapes[n]) for n, f in value_of.items()}

    def agrees(out: dict[str, torch.Tensor], num: int) -> bool:
        # guard against a batched run that fits the shape but not the meaning
        for i in {0, num - 1}:
            single = one(i)
            if not all(torch.allclose(out[n][i], single[n], rtol=1e-5, atol=1e-6, equal_nan=True) for n in value_of):
                return False
        return True

    with torch.no_grad():
        if draws and "vectorised" in tiers:
            try:
                tr, num, _ = _vectorised(model, draws, args, kwargs, tr0, resample_observed=False)
                out = _sites_out(tr, value_of, num, shapes, lambda s: value_of[s["name"]](s))
                if agrees(out, num):
                    return out, "vectorised"
            except Exception:  # noqa: BLE001 - any failure of the broadcast path means: next tier
                pass
        if draws and "vmap" in tiers:
            num = next(iter(draws.values())).shape[0]
            try:
                out = _vmapped(model, draws, args, kwargs, value_of, shapes, tr0)
                if agrees(out, num):
                    return out, "vmap"
            except Exception:  # noqa: BLE001 - data-dependent control flow, unsupported ops: loop
                pass
        num = next(iter(draws.values())).shape[0] if draws else 1
        per_draw = [one(i) for i in range(num)]
        return {n: torch.stack([d[n] for d in per_draw]) for n in value_of}, "loop"


def discrete_without_draws(tr: poutine.Trace, draws: Mapping[str, torch.Tensor]) -> list[str]:
    """Discrete latent sites that ``draws`` has no values for (NUTS sums them out)."""
    return [n for n, s in latent_sites(tr).items() if n not in draws and s["fn"].support.is_discrete]


def pointwise_log_likelihood(
    model: Callable,
    draws: Mapping[str, torch.Tensor],
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    sites: Sequence[str] | None = None,
    tiers: Sequence[str] = TIERS,
) -> tuple[dict[str, torch.Tensor], str]:
    """Log-likelihood of every observed value under every draw.

    ``draws`` maps latent site names to tensors with one leading draw dimension S. Returns
    ``({site: (S, *batch_shape)}, "vectorised" | "vmap" | "loop")``: the log-density of each
    observation (event dims summed, masked observations 0, no subsampling scale), and how
    it was computed. Discrete latent sites without draws are summed out by enumeration
    (:mod:`pyro_mle._enumeration`): the marginal log-likelihood, ``how`` then starting
    ``"enumerated"``. ``sites`` picks the sites (default: every observed site; a
    ``pyro.factor`` site may be named too). ``tiers``: as in :func:`replay_sites`.
    """
    kwargs = dict(kwargs or {})
    tr0 = trace_model(model, args, kwargs)
    obs = require_observed(model, tr0)
    names = list(obs) if sites is None else list(sites)
    unknown = [n for n in names if n not in obs and not (n in tr0.nodes and is_factor(tr0.nodes[n]))]
    if unknown:
        raise ValueError(
            f"pointwise log-likelihood: {unknown} are not observed or factor sites of the program; "
            f"observed: {list(obs)}, factors: {list(factor_sites(tr0))}."
        )
    discrete = discrete_without_draws(tr0, draws)
    if discrete:  # NUTS summed them out: the marginal log-likelihood, summed out here too
        from . import _enumeration

        return _enumeration.pointwise_log_likelihood(model, draws, args, kwargs, names, discrete, tr0)
    return replay_sites(model, draws, args, kwargs, {n: _site_log_lik for n in names}, tr0, tiers)


def deterministic_draws(
    model: Callable, draws: Mapping[str, torch.Tensor], args: tuple = (), kwargs: Mapping[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], str]:
    """The value of every ``pyro.deterministic`` site at every draw: ``({site: (S, *shape)}, how)``."""
    kwargs = dict(kwargs or {})
    tr0 = trace_model(model, args, kwargs)
    names = deterministic_sites(tr0)
    if not names:
        return {}, "none"
    return replay_sites(model, draws, args, kwargs, {n: lambda s: s["value"] for n in names}, tr0)


def predictive_draws(
    model: Callable,
    draws: Mapping[str, torch.Tensor],
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    num: int | None = None,
) -> tuple[dict[str, torch.Tensor], str]:
    """One draw of every observed site from the likelihood at each latent draw.

    Observed sites are resampled (their ``obs`` ignored), so the program can be called with
    its data. ``num`` gives the number of draws when ``draws`` is empty (a program without
    latent sites). Returns ``({site: (S, *value shape)}, "vectorised" | "loop")``.
    """
    kwargs = dict(kwargs or {})
    tr0 = trace_model(model, args, kwargs)
    # observed sites, and sites left latent because their data were not passed (y=None)
    obs = {n: s for n, s in tr0.nodes.items() if _is_real_sample(s) and n not in draws}
    if not obs:
        raise ValueError(
            f"model {getattr(model, '__name__', repr(model))!r} has no site to predict: every sample site "
            "has posterior draws. Predictions are drawn for observed sites (or sites given obs=None)."
        )
    model = _fixed_rows(model, tr0)
    shapes = {n: s["value"].shape for n, s in obs.items()}
    with torch.no_grad():
        if draws:
            try:
                tr, num, _ = _vectorised(model, draws, args, kwargs, tr0, resample_observed=True)
                out = _sites_out(tr, obs, num, shapes, lambda s: s["value"])
                vec_lp = _sites_out(
                    tr,
                    obs,
                    num,
                    {n: s["log_prob"].shape for n, s in obs.items()},
                    lambda s: s["fn"].log_prob(s["value"]),
                )
                # guard: each predicted value must have the same density under the single-draw
                # replay of its draw as under the vectorised one
                for i in {0, num - 1}:
                    data = {k: v[i] for k, v in draws.items()} | {n: out[n][i] for n in obs}
                    one = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
                    for n in obs:
                        lp = one.nodes[n]["fn"].log_prob(one.nodes[n]["value"]).reshape(vec_lp[n][i].shape)
                        if not torch.allclose(lp, vec_lp[n][i], rtol=1e-5, atol=1e-6):
                            raise ValueError("vectorised replay disagrees with a single-draw replay")
                return out, "vectorised"
            except Exception:  # noqa: BLE001 - any failure of the vectorised path means: loop
                pass
        num = next(iter(draws.values())).shape[0] if draws else (num or 1)
        per_draw = {n: [] for n in obs}
        for i in range(num):
            conditioned = poutine.condition(resample_observed(model), data={k: v[i] for k, v in draws.items()})
            tr = poutine.trace(conditioned).get_trace(*args, **kwargs)
            for n in obs:
                per_draw[n].append(tr.nodes[n]["value"].reshape(shapes[n]))
        return {n: torch.stack(v) for n, v in per_draw.items()}, "loop"
