"""Running a Pyro program at given values of its latent sites: the observed sites, their
pointwise log-likelihood, and posterior predictive draws.

Replaying many draws at once needs the program to broadcast over an extra leading plate;
programs written with ``X @ w`` for a weight vector ``w`` do not. Every function here tries
the vectorised replay first and falls back to a loop over draws, and says which it used, so
no result is ever silently missing.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample


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


def _is_real_sample(site: dict) -> bool:
    return site["type"] == "sample" and not site_is_subsample(site) and not site["infer"].get("_do_not_trace")


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
    inner = poutine.uncondition(model) if resample_observed else model
    with pyro.plate("_draws", num, dim=-(nesting + 1)):
        tr = poutine.trace(poutine.condition(inner, data=data)).get_trace(*args, **kwargs)
    return tr, num, nesting


def _sites_out(tr, names, num, shape_of, value_of):
    out = {}
    for name in names:
        v = value_of(tr.nodes[name])
        target = (num,) + tuple(shape_of[name])
        if v.numel() != torch.Size(target).numel():
            raise ValueError(f"vectorised replay gave {tuple(v.shape)} for {name!r}, expected {target}")
        out[name] = v.reshape(target)
    return out


def pointwise_log_likelihood(
    model: Callable, draws: Mapping[str, torch.Tensor], args: tuple = (), kwargs: Mapping[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], str]:
    """Log-likelihood of every observed value under every draw.

    ``draws`` maps latent site names to tensors with one leading draw dimension S. Returns
    ``({site: (S, *batch_shape)}, "vectorised" | "loop")``: the log-density of each
    observation (event dims summed, no subsampling scale), and how it was computed.
    """
    kwargs = dict(kwargs or {})
    tr0 = trace_model(model, args, kwargs)
    obs = require_observed(model, tr0)
    missing = [n for n, s in latent_sites(tr0).items() if n not in draws and s["fn"].support.is_discrete]
    if missing:
        raise ValueError(
            f"pointwise log-likelihood: the discrete latent site(s) {missing} have no posterior draws (NUTS "
            "sums them out by enumeration), and replaying them from the prior would condition the "
            "likelihood on random values. Marginalise them inside the model (e.g. a mixture "
            "distribution instead of a discrete site), or pass their draws (pyro.infer.infer_discrete)."
        )
    model = _fixed_rows(model, tr0)
    shapes = {n: s["log_prob"].shape for n, s in obs.items()}
    with torch.no_grad():
        if draws:
            try:
                tr, num, _ = _vectorised(model, draws, args, kwargs, tr0, resample_observed=False)
                out = _sites_out(tr, obs, num, shapes, _site_log_lik)
                # guard against a broadcast that fits the shape but not the meaning
                for i in {0, num - 1}:
                    one = _log_lik_one(model, draws, i, args, kwargs, obs, shapes)
                    if not all(torch.allclose(out[n][i], one[n], rtol=1e-5, atol=1e-6) for n in obs):
                        raise ValueError("vectorised replay disagrees with a single-draw replay")
                return out, "vectorised"
            except Exception:  # noqa: BLE001 - any failure of the vectorised path means: loop
                pass
        num = next(iter(draws.values())).shape[0] if draws else 1
        per_draw = [_log_lik_one(model, draws, i, args, kwargs, obs, shapes) for i in range(num)]
        return {n: torch.stack([d[n] for d in per_draw]) for n in obs}, "loop"


def _log_lik_one(model, draws, i, args, kwargs, obs, shapes):
    data = {k: v[i] for k, v in draws.items()}
    tr = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
    return {n: _site_log_lik(tr.nodes[n]).reshape(shapes[n]) for n in obs}


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
            conditioned = poutine.condition(poutine.uncondition(model), data={k: v[i] for k, v in draws.items()})
            tr = poutine.trace(conditioned).get_trace(*args, **kwargs)
            for n in obs:
                per_draw[n].append(tr.nodes[n]["value"].reshape(shapes[n]))
        return {n: torch.stack(v) for n, v in per_draw.items()}, "loop"
