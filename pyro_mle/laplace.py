"""The Laplace approximation of a Pyro program's posterior: a Gaussian at the mode of the
unconstrained posterior density, with covariance the inverse Hessian of the negative log joint
there (exact for a linear-Gaussian model).

The mode is found with the optimisers of :func:`pyro_mle.fit` (L-BFGS, then Newton steps on the
exact Hessian) and judged by the same relative-gradient rule. A posterior without a mode (a
centred hierarchy) and a Hessian that is not positive definite are refused by name.
:func:`draw_gaussian` also serves the Gaussian guides of :mod:`pyro_mle.vi`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from pyro.infer.mcmc.util import initialize_model

from ._rng import spawn_seeds
from .optim.lbfgs import lbfgs
from .optim.newton import hessian_from, newton, value_and_grad_from
from .optim.stopping import default_tolerances, relative_gradient


def draw_gaussian(loc, scale_tril, layout, transforms, num_samples, chains, seed):
    """Draws of a Gaussian over the flat unconstrained vector, unpacked and constrained.

    ``seed`` is a seed spawned from the run's (:func:`~pyro_mle._rng.spawn_seeds`), so the
    draws' stream is not the one that drove the fit before them.
    """
    g = torch.Generator().manual_seed(seed)
    total = num_samples * chains
    eps = torch.randn(total, loc.numel(), generator=g, dtype=loc.dtype)
    flat = loc + eps @ scale_tril.T
    samples, offset = {}, 0
    for name, shape in layout:
        size = math.prod(shape)
        value = transforms[name].inv(flat[:, offset : offset + size].reshape((total,) + tuple(shape)))
        samples[name] = value.reshape((chains, num_samples) + value.shape[1:])
        offset += size
    return samples, {}


def _flat_potential(potential_fn, layout):
    def f(theta):
        params, offset = {}, 0
        for name, shape in layout:
            size = math.prod(shape)
            params[name] = theta[offset : offset + size].reshape(shape)
            offset += size
        with warnings.catch_warnings():
            # a trial point of the mode search where a log-density is NaN is a step too long,
            # handled by the optimiser; Pyro's warning about it would only be noise
            warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
            return potential_fn(params)

    return f


def run_laplace(model, args, kwargs, num_samples, chains, seed):
    """``(samples, sample_stats, info)`` of the Laplace approximation, ``num_samples`` draws per
    chain; ``info`` holds the Gaussian (``loc``, ``covariance``, ``layout``: site name and
    unconstrained shape, in the order of the flat vector)."""
    # the global generators were seeded by posterior's rng_scope(seed)
    init, potential_fn, transforms, _ = initialize_model(model, model_args=args, model_kwargs=kwargs)
    layout = [(k, tuple(v.shape)) for k, v in init.items()]
    f = _flat_potential(potential_fn, layout)
    mode = _find_mode(f, torch.cat([v.detach().reshape(-1) for v in init.values()]), layout)
    hess = torch.autograd.functional.hessian(f, mode)
    hess = 0.5 * (hess + hess.T)
    try:
        precision_tril = torch.linalg.cholesky(hess)
    except RuntimeError:
        raise ValueError(
            "posterior(method='laplace'): the Hessian of the negative log joint at the mode is not positive "
            "definite (a flat or non-identified direction). Use method='nuts', or add informative priors."
        ) from None
    eye = torch.eye(mode.numel(), dtype=mode.dtype)
    covariance = torch.cholesky_solve(eye, precision_tril)
    scale_tril = torch.linalg.cholesky(covariance)
    (draw_seed,) = spawn_seeds(seed, 1)
    samples, stats = draw_gaussian(mode, scale_tril, layout, transforms, num_samples, chains, draw_seed)
    info = {"loc": mode, "covariance": covariance, "layout": layout}
    return samples, stats, info


def _running_off(x: torch.Tensor, layout: list, beyond: float = 5.0) -> list[str]:
    """The latent sites with an unconstrained value beyond ``±beyond`` (a scale below e⁻⁵ of
    its unit): where a posterior without a mode sends its iterates."""
    names, offset = [], 0
    for name, shape in layout:
        size = math.prod(shape)
        segment = x[offset : offset + size]
        if size and bool((segment.abs() > beyond).any()):
            names.append(name)
        offset += size
    return names


def _find_mode(f: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, layout: list = ()) -> torch.Tensor:
    """The mode of the unconstrained posterior density: the same optimisers as ``fit`` (L-BFGS,
    then Newton steps on the exact Hessian), judged by the same rule; a posterior without a mode
    (a centred hierarchy, whose density is unbounded as its scale goes to 0) is refused by name."""
    theta = start.clone().requires_grad_()

    def evaluate(probe: bool) -> torch.Tensor | None:
        theta.grad = None
        with torch.enable_grad():
            try:
                loss = f(theta)
            except (ValueError, RuntimeError):
                loss = None
        if loss is None or not bool(torch.isfinite(loss)):
            if probe:
                return None
            raise ValueError(_NO_MODE.format(detail="the log density is not finite at the start"))
        loss.backward()
        return loss.detach()

    num_data = 1.0
    tolerance = default_tolerances(theta.dtype)
    lbfgs(evaluate, [theta], num_steps=1000, lr=1.0, rtol=tolerance[0], gtol=tolerance[1], num_data=num_data)
    value_and_grad = value_and_grad_from(f)

    def safe(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        try:
            loss, grad = value_and_grad(x)
            return float(loss), grad
        except (ValueError, RuntimeError):
            return math.inf, torch.zeros_like(x)

    result = newton(
        safe,
        theta.detach(),
        hessian=hessian_from(f),
        converged=lambda x, loss, g: relative_gradient(g, x, float(loss), num_data) <= tolerance[1],
        max_decrement=100 * torch.finfo(theta.dtype).eps,
        min_steps=1,
    )
    if not result.converged:
        off = _running_off(result.x.detach(), list(layout)) or _running_off(theta.detach(), list(layout))
        where = f"; running off in the unconstrained space: {', '.join(map(repr, off))}" if off else ""
        raise ValueError(_NO_MODE.format(detail=result.message.rstrip(".") + where))
    return result.x


_NO_MODE = (
    "posterior(method='laplace'): no mode of the posterior density was found ({detail}). A posterior "
    "without a mode (a centred hierarchy, whose density grows without bound as its scale goes to 0) has no "
    "Laplace approximation: use method='nuts', a non-centred parameterisation, or more informative priors."
)


__all__ = ["draw_gaussian", "run_laplace"]
