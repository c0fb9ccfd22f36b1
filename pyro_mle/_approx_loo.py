"""PSIS-LOO for draws that are not posterior draws.

Laplace and VI draws come from a Gaussian ``q`` over the unconstrained parameters, not from
the posterior ``p``. PSIS-LOO on them as if they were posterior draws estimates the LOO of
``q``; :func:`arviz_stats.loo_approximate_posterior` corrects the importance ratios with
``log p − log q`` (Magnusson et al. 2019, "Bayesian leave-one-out cross-validation for large
data"), and both densities are at hand: ``q`` is the Gaussian the draws came from
(``Posterior.info["loc"]``, ``["covariance"]``), ``p`` the program's unnormalised log joint in
the same unconstrained space (Pyro's potential, Jacobian included). A VI guide that is not
Gaussian gives the log density of each draw under it instead (``info["log_q"]``, same space).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pyro
import torch
import xarray as xr
from pyro import poutine
from pyro.infer.mcmc.util import initialize_model

from . import _replay
from ._rng import rng_scope

APPROXIMATE_METHODS = ("laplace", "vi")


def approximation_log_densities(post: Any) -> tuple[xr.DataArray, xr.DataArray]:
    """``(log_p, log_q)`` at every draw of a Laplace or VI :class:`~pyro_mle.Posterior`,
    each a DataArray over ``(chain, draw)``, both in the unconstrained space the Gaussian
    ``q`` lives in (``log_p`` up to its normalising constant, which LOO does not need)."""
    info = post.info
    gaussian = "loc" in info and "covariance" in info
    if post.method not in APPROXIMATE_METHODS or not (gaussian or "log_q" in info):
        raise ValueError(
            f"approximation_log_densities: a {post.method!r} posterior has no proposal density; only Laplace and "
            "VI draws (with info['loc'] and info['covariance'], or info['log_q']) do. Use arviz_stats.loo for "
            "NUTS draws."
        )
    # initialize_model draws an initial point (and differentiates there); its random draws must
    # not touch the caller's generators
    model = _replay.allow_masked_nan(post.model)  # NaN where an observation is masked out
    with _replay.param_store_copy(), rng_scope(0):
        _, potential_fn, transforms, _ = initialize_model(model, model_args=post.args, model_kwargs=post.kwargs)
        return _log_densities(post, info, potential_fn, transforms, model)


def _log_densities(post, info, potential_fn, transforms, model):
    with torch.no_grad():
        flat = post.flat_samples()
        total = next(iter(flat.values())).shape[0]
        pieces, unconstrained = [], {}
        dtype = info["loc"].dtype if "loc" in info else info["log_q"].dtype
        for name, shape in info["layout"]:
            u = transforms[name](flat[name].to(dtype))
            unconstrained[name] = u
            pieces.append(u.reshape(total, math.prod(shape)))
        theta = torch.cat(pieces, dim=-1)
        if "log_q" in info:  # a guide that is not Gaussian: its own density at each draw
            log_q = info["log_q"].reshape(-1)
        else:
            q = torch.distributions.MultivariateNormal(info["loc"], covariance_matrix=info["covariance"])
            log_q = q.log_prob(theta)
        log_p = _log_p(model, post.args, post.kwargs, potential_fn, transforms, unconstrained, total)
    shape = (post.num_chains, post.num_draws)
    as_da = lambda t: xr.DataArray(t.detach().double().reshape(shape).numpy(), dims=("chain", "draw"))  # noqa: E731
    return as_da(log_p), as_da(log_q)


def _log_p(model, args, kwargs, potential_fn, transforms, unconstrained, total) -> torch.Tensor:
    """Pyro's log joint (``-potential_fn``) at every draw: by :func:`torch.func.vmap` over the
    draws when the program runs batched (one run instead of one per draw: the loop cost
    ~1.9 ms a draw, most of ``compare``'s time for Laplace and VI), checked against the loop
    at the first and last draws; else, or when a draw's parameters or values fail their
    constraints (the loop's checks then name it), the loop."""

    def one(i: int) -> torch.Tensor:
        return -potential_fn({k: v[i] for k, v in unconstrained.items()})

    try:
        batched = _log_p_vmapped(model, args, kwargs, transforms, unconstrained)
        for i in {0, total - 1}:
            single = one(i)
            rtol = 1e-9 if single.dtype == torch.float64 else 1e-5
            if not torch.allclose(batched[i].to(single.dtype), single, rtol=rtol, atol=rtol * abs(float(single))):
                raise ValueError("the batched log joint differs from Pyro's potential")
        return batched
    except Exception:  # noqa: BLE001 - any failure of the batched run means: loop
        return torch.stack([one(i) for i in range(total)])


def _log_p_vmapped(model, args, kwargs, transforms, unconstrained) -> torch.Tensor:
    from torch.func import vmap

    from ._validation import validation

    def one_draw(u: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = {k: transforms[k].inv(v) for k, v in u.items()}
        tr = poutine.trace(poutine.condition(model, data=x)).get_trace(*args, **kwargs)
        log_joint = tr.log_prob_sum()
        for k, v in u.items():  # the change of variables to the unconstrained space
            log_joint = log_joint + transforms[k].inv.log_abs_det_jacobian(v, x[k]).sum()
        return log_joint, _replay._trace_valid(tr)

    # input checks branch on values, which vmap cannot batch: each draw returns whether it
    # passes them instead (as the replay's vmap tier does)
    with validation(False), pyro.validation_enabled(False):
        log_p, valid = vmap(one_draw, randomness="error", chunk_size=256)(dict(unconstrained))
    if not bool(valid.all()) or not bool(torch.isfinite(log_p).all()):
        raise ValueError("a draw with invalid parameters or a non-finite density: the loop names it")
    return log_p


def posterior_loo(post: Any, dt: xr.DataTree, log_densities: tuple[xr.DataArray, xr.DataArray] | None = None) -> Any:
    """PSIS-LOO of a posterior's DataTree: :func:`arviz_stats.loo` for NUTS draws,
    :func:`arviz_stats.loo_approximate_posterior` for Laplace and VI draws (``log_densities``:
    :func:`approximation_log_densities` of ``post`` when the caller has them already; they
    cost one evaluation of the program per draw).

    Several observed sites over the same rows are scored leave-one-row-out (their pointwise
    values summed), as :func:`pyro_mle.diagnostics.loo` does. The generic Pareto-k
    UserWarning is held back; :func:`pyro_mle.diagnostics.pareto_k_messages` reports it."""
    import arviz_stats as azs

    from .diagnostics import loo

    if post.method not in APPROXIMATE_METHODS:
        return loo(dt)
    names = list(dt["log_likelihood"].data_vars)
    if len(names) > 1:
        ll = dt["log_likelihood"].to_dataset()
        if len({ll[n].dims for n in names}) != 1:
            raise ValueError(
                f"loo: the observed sites {names} have different dimensions, so there is no common row to leave "
                "out. Call arviz_stats.loo_approximate_posterior(dt, log_p, log_q, var_name=...) for one site."
            )
        dt = dt.copy()
        dt["log_likelihood"] = xr.DataTree(xr.Dataset({"+".join(names): sum(ll[n] for n in names)}))
    log_p, log_q = log_densities if log_densities is not None else approximation_log_densities(post)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        return azs.loo_approximate_posterior(dt, log_p, log_q)


__all__ = ["APPROXIMATE_METHODS", "approximation_log_densities", "posterior_loo"]
