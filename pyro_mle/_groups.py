"""The groups of a DataTree that need runs of the program beyond the posterior replay:
``prior``/``prior_predictive`` (draws from the prior) and ``predictions``/
``predictions_constant_data`` (posterior predictive draws at new inputs); and the naming
helpers every group shares (dims from plates, tensor arguments as constant data)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pyro import poutine

from . import _replay


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _site_dims(name: str, site: dict) -> list[str]:
    """Dimension names of a site's value: plate names where plates sit, else ``{name}_dim_{i}``."""
    value = site["value"]
    by_dim = {f.dim: f for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None}
    # pyro.deterministic declares every axis an event axis by default: align its axes with the
    # plates from the right, where the sizes agree; an explicit smaller event_dim is kept
    batch_ndim = value.dim() - site["fn"].event_dim
    if _replay.is_deterministic(site) and batch_ndim == 0:
        batch_ndim = value.dim()
    names = []
    for i in range(value.dim()):
        rel = i - batch_ndim
        frame = by_dim.get(rel) if rel < 0 else None
        names.append(frame.name if frame is not None and frame.size == value.shape[i] else None)
    return _name_rest(name, site, names)


def _name_rest(name: str, site: dict, names: list) -> list[str]:
    """Fill the axes no plate names: ``infer={"event_dims": [...]}`` names the event axes (as
    ArviZ's NumPyro converter reads it), the others are ``{name}_dim_{k}`` counting only the
    unnamed axes, as ArviZ does (a latent in a ``dim=-2`` plate: ``(plate, z_dim_0)``)."""
    event_dims = list(site["infer"].get("event_dims") or [])
    if event_dims:
        # pyro.deterministic(..., event_dim=k) keeps k on its Delta (every axis by default)
        event_ndim = getattr(site["fn"], "event_dim", len(names))
        if len(event_dims) != event_ndim:
            raise ValueError(
                f"to_datatree: site {name!r} has infer={{'event_dims': {event_dims!r}}}, {len(event_dims)} name(s) "
                f"for its {event_ndim} event dim(s) (value shape {tuple(site['value'].shape)}). Give one name per "
                "event dim, or use dims= for the batch dims."
            )
        names[len(names) - event_ndim :] = event_dims
    unnamed = iter(range(len(names)))
    return [n if n is not None else f"{name}_dim_{next(unnamed)}" for n in names]


def _signature(model: Callable) -> inspect.Signature:
    """The signature the program is called with: a ``PyroModule`` (or any ``nn.Module``,
    also under Pyro's handlers) is called through ``forward``, whose parameters name the
    arguments; ``Module.__call__`` itself only says ``(*args, **kwargs)``."""
    fn = inspect.unwrap(model)
    # a program under Pyro's handlers (``poutine.x(model)``) is a partial of
    # ``_context_wrap(messenger, model)``: the program is its last bound argument
    while isinstance(fn, functools.partial):
        if isinstance(fn.func, functools.partial):
            fn = fn.func
        elif getattr(fn.func, "__name__", "") == "_context_wrap" and fn.args:
            fn = inspect.unwrap(fn.args[-1])
        else:
            break
    if isinstance(fn, torch.nn.Module):
        fn = fn.forward
    return inspect.signature(fn)


def _constant_data(model: Callable, args: tuple, kwargs: Mapping[str, Any], obs: dict) -> dict[str, torch.Tensor]:
    """Tensor arguments of the program that are not one of its observed values."""
    try:
        bound = _signature(model).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return {}
    observed = [s["value"] for s in obs.values()] + [
        s["infer"]["obs_with_nan"] for s in obs.values() if "obs_with_nan" in s["infer"]
    ]
    out = {}
    for k, v in bound.arguments.items():
        if isinstance(v, torch.Tensor) and not any(v is o for o in observed):
            out[k] = v
    return out


def prior_groups(
    model: Callable, args: tuple, kwargs: Mapping[str, Any], num: int, names: Mapping[str, str], select: Mapping
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``num`` joint draws from the prior: ``(prior, prior_predictive)``, each variable
    ``(1, num, …)``. ``prior`` holds the latent and deterministic sites, ``prior_predictive``
    the observations (named by ``names``, rows picked by ``select`` as in observed_data).

    A loop over draws: the prior draws every site afresh, so a vectorised replay would need
    the program to broadcast its latents, which ``X @ w`` programs do not."""
    if int(num) != num or num < 1:
        raise ValueError(f"to_datatree: prior must be a positive number of draws; got {num!r}.")
    runs = [poutine.trace(_replay.resample_observed(model)).get_trace(*args, **kwargs) for _ in range(int(num))]
    first = runs[0]
    # under resample_observed the observations are latent too: leave them to prior_predictive
    latent = [n for n in [*_replay.latent_sites(first), *_replay.deterministic_sites(first)] if n not in names]
    prior = {n: _np(torch.stack([tr.nodes[n]["value"] for tr in runs]))[None] for n in latent}
    predictive = {}
    for site, var in names.items():
        values = _np(torch.stack([tr.nodes[site]["value"] for tr in runs]))[None]
        predictive[var] = select[var](values)
    return prior, predictive


def predictions_groups(
    model: Callable,
    user_model: Callable,
    draws: Mapping[str, torch.Tensor],
    chains: int,
    args: tuple,
    kwargs: Mapping[str, Any],
    pred_dims: Mapping[str, Sequence[str]] | None = None,
    num: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, list[str]]]:
    """Posterior predictive draws at new inputs: ``(predictions, predictions_constant_data,
    dims)``. ``draws`` has one leading draw dim (``chains`` × draws; ``num`` draws when it is
    empty, a program whose estimates are all ``pyro.param``). Dims come from the
    plates of a run on the new inputs (the ``y_observed`` of ``obs_mask`` is named ``y``);
    ``pred_dims`` overrides them."""
    tr = _replay.trace_model(model, args, kwargs)
    pp, _ = _replay.predictive_draws(model, draws, args, kwargs, num=num)
    names = _replay.observed_names(tr)
    out, dims = {}, {}
    for site, v in pp.items():
        if site.endswith("_unobserved"):
            continue  # the imputed values of obs_mask: predicted as their observation
        var = names.get(site, site)
        out[var] = _np(v.reshape((chains, -1) + v.shape[1:]))
        dims[var] = _site_dims(var, tr.nodes[site])
    obs = {s: tr.nodes[s] for s in pp if s in tr.nodes}
    constant = {k: _np(v) for k, v in _constant_data(user_model, args, kwargs, _replay.observed_sites(tr)).items()}
    if out:
        first = next(iter(out))
        for k, v in constant.items():
            names_k = [f"{k}_dim_{i}" for i in range(v.ndim)]
            shape = out[first].shape[2:]
            if v.ndim and dims[first] and shape and v.shape[0] == shape[0]:
                names_k[0] = dims[first][0]  # rows of X_new share the predictions' plate
            dims[k] = names_k
    del obs
    dims.update(dict(pred_dims or {}))
    return out, constant, dims
