"""Variational inference on a Pyro program: SVI with a chosen guide, run until the guide has
converged, then independent draws from it.

**Guides.** ``guide="mvn"`` (default) is :class:`~pyro.infer.autoguide.AutoMultivariateNormal`
(a full-rank Gaussian over the unconstrained latents), ``"diag"`` is
:class:`~pyro.infer.autoguide.AutoDiagonalNormal` (mean field); an
:class:`~pyro.infer.autoguide.AutoGuide` class, or any callable ``model -> guide``, is built on
the model. Guides that are Gaussian in the unconstrained space (the two above, ``AutoNormal``,
``AutoLowRankMultivariateNormal``) are read as that Gaussian (``info["loc"]``,
``["covariance"]``, ``["layout"]``); any other guide is sampled, and the log density of each draw
under it is kept in ``info["log_q"]`` for the approximate LOO of :mod:`pyro_mle._approx_loo`.

**Convergence is judged on the guide, not on the ELBO alone.** The ELBO is flat near its optimum
(an error δ in a log-scale moves it by about δ², far below its Monte Carlo noise), so a plateau
of the ELBO stops while the scales are still drifting. The run is cut into windows of
``window`` Adam steps and summarised by the guide's mean and standard deviation of every
unconstrained coordinate, evaluated at the window's average of the guide's parameters:

1. *approach*: constant learning rate ``lr`` until two consecutive windows' summaries differ by
   less than ``APPROACH`` posterior standard deviations (means) and log-units (scales);
2. *averaging*: the parameters restart from that window's average, a fresh Adam runs at
   ``lr * DECAY`` (the old one's second-moment average would still hold the approach's large
   gradients), and after every window the iterates since the drop (the last ``2 m`` windows,
   ``m`` at most ``MAX_HALF``) are split into two halves. The run has converged when the two
   halves' summaries agree within ``tol`` standard deviations (means) and ``tol`` in log-scale,
   and their mean losses agree within two standard errors. The estimate is the average of the
   guide's parameters over both halves (Polyak–Ruppert averaging).

In the averaging phase a Gaussian autoguide's location takes natural-gradient steps (its
gradient times the guide's covariance, settled by the approach): affine invariant, so a
posterior with strongly correlated coordinates relaxes as fast along its ridge as across it (Adam, scaling each
coordinate alone, stalled 1.4 sd away on the spector logit). Gradients use the "sticking the
landing" estimator (:func:`stl_loss`).

The halves' difference bounds both a remaining drift and the Monte Carlo error of the
average (about half the difference), so ``tol=0.1`` gives means within a few hundredths of a
standard deviation on a well-posed model. A subsampling plate multiplies the gradient's noise by
about ``sqrt(1 + N/B)`` (``N`` rows, ``B`` per step); the tolerance for the means (in both
phases) is widened by that factor so that a minibatch run needs about as many steps as a
full-batch one; the tolerance for the log-scales is not (a wide guide makes every mean look
settled in its own sds). ``info["tol"]`` gives both. ``max_steps`` caps the run: when it is reached, a
:class:`~pyro_mle.results.ConvergenceWarning` names the steps and the remedy, and
``info["converged"]`` is ``False`` (the draws come from the last window's average).
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import (
    AutoContinuous,
    AutoDiagonalNormal,
    AutoGuide,
    AutoMultivariateNormal,
    AutoNormal,
)
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from . import _replay
from ._rng import spawn_seeds
from .laplace import draw_gaussian
from .results import ConvergenceWarning

GUIDES = ("mvn", "diag")
WINDOW = 200
APPROACH = 0.1
DECAY = 0.3
MIN_HALF = 4
MAX_HALF = 10
SUMMARY_DRAWS = 64
NATURAL_STEP = 0.05
BETAS = (0.9, 0.999)  # torch's defaults


def make_guide(model: Callable, guide: Any) -> tuple[Callable, str]:
    """The guide ``guide`` names, built on ``model``, and its name for ``info["guide"]``.

    ``guide`` is ``"mvn"``, ``"diag"``, an :class:`~pyro.infer.autoguide.AutoGuide` subclass, or
    a callable ``model -> guide``."""
    if isinstance(guide, str):
        if guide == "mvn":
            return AutoMultivariateNormal(model), "mvn"
        if guide == "diag":
            return AutoDiagonalNormal(model), "diag"
        raise ValueError(
            f"posterior(method='vi'): unknown guide {guide!r}; choose one of {list(GUIDES)}, a Pyro AutoGuide class "
            "(e.g. pyro.infer.autoguide.AutoNormal) or a callable model -> guide."
        )
    if isinstance(guide, type) and issubclass(guide, AutoGuide):
        return guide(model), guide.__name__
    if callable(guide) and not isinstance(guide, AutoGuide):
        built = guide(model)
        if not callable(built):
            raise ValueError(
                f"posterior(method='vi'): guide {getattr(guide, '__name__', guide)!r} returned {built!r} for the "
                "model, not a guide. Pass a callable that takes the model and returns a guide (lambda m: AutoNormal(m))"
            )
        return built, type(built).__name__ if isinstance(built, AutoGuide) else getattr(guide, "__name__", "callable")
    raise ValueError(
        f"posterior(method='vi'): guide must be one of {list(GUIDES)}, an AutoGuide class or a callable model -> "
        f"guide; got {guide!r}. An AutoGuide instance is already tied to a model: pass its class."
    )


def gaussian_of(guide: Callable) -> tuple[torch.Tensor, torch.Tensor, list] | None:
    """``(loc, scale_tril, layout)`` of a guide that is a Gaussian over the flat unconstrained
    latent vector (layout: site name and unconstrained shape, in the vector's order), else ``None``."""
    if isinstance(guide, AutoContinuous):
        try:
            q = guide.get_posterior()
        except NotImplementedError:
            return None
        layout = [(n, tuple(guide._unconstrained_shapes[n])) for n, _ in guide.prototype_trace.iter_stochastic_nodes()]
        base = q.base_dist if isinstance(q, dist.Independent) else q
        if isinstance(base, dist.Normal):
            return base.loc.reshape(-1), torch.diag_embed(base.scale.reshape(-1)), layout
        if isinstance(base, (dist.MultivariateNormal, dist.LowRankMultivariateNormal)):
            return base.loc, base.scale_tril, layout
        return None
    if isinstance(guide, AutoNormal):
        locs, scales, layout = [], [], []
        for name, _ in guide.prototype_trace.iter_stochastic_nodes():
            loc, scale = guide._get_loc_and_scale(name)
            locs.append(loc.reshape(-1))
            scales.append(scale.reshape(-1))
            layout.append((name, tuple(loc.shape)))
        return torch.cat(locs), torch.diag_embed(torch.cat(scales)), layout
    return None


class _DetachParams(Messenger):
    """Every ``pyro.param`` read inside is detached: a guide replayed under it gives
    ``log q`` with the parameters held fixed."""

    def _pyro_post_param(self, msg: dict) -> None:
        msg["value"] = msg["value"].detach()


def stl_loss(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """A one-sample negative ELBO whose gradient is the "sticking the landing" estimator
    (Roeder, Wu & Duvenaud 2017): ``log q`` is evaluated with the guide's parameters held
    fixed, so only the path through the reparameterised draw carries gradient. The dropped
    score term has expectation zero, so the gradient stays unbiased, and its variance vanishes
    where ``q`` equals the posterior: the guide settles instead of jittering around the
    optimum. The value is the ordinary ELBO estimate (scaled by subsampling plates, as Pyro's
    :class:`~pyro.infer.Trace_ELBO`)."""
    guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
    with _DetachParams():
        q_tr = poutine.trace(poutine.replay(guide, trace=guide_tr)).get_trace(*args, **kwargs)
    return q_tr.log_prob_sum() - model_tr.log_prob_sum()


def _guide_params(guide: Callable, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The unconstrained tensors of the guide's parameters (created by a first run of the
    guide). The model's own ``pyro.param``\\ s are not among them: they stay where they are."""
    tr = poutine.trace(guide, param_only=True).get_trace(*args, **kwargs)
    params, seen = [], set()
    for site in tr.nodes.values():
        p = site["value"].unconstrained()
        if id(p) not in seen and p.requires_grad:
            seen.add(id(p))
            params.append(p)
    if not params:
        raise ValueError("posterior(method='vi'): the guide has no pyro.param to optimise.")
    return params


def _flat(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def _assign(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    with torch.no_grad():
        offset = 0
        for p in params:
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def _unconstrained_draw(tr: poutine.Trace, names: list[str], transforms: dict) -> torch.Tensor:
    return torch.cat([transforms[n].inv(tr.nodes[n]["value"].detach()).reshape(-1) for n in names])


class _Summary:
    """Mean and standard deviation of every unconstrained coordinate under the guide at given
    parameter values: read off the Gaussian, or, for other guides, estimated from
    ``SUMMARY_DRAWS`` draws with common random numbers (the same seed at every call, so that two
    calls differ by the parameters only)."""

    def __init__(self, guide, params, args, kwargs, names, transforms):
        self.guide, self.params, self.args, self.kwargs = guide, params, args, kwargs
        self.names, self.transforms = names, transforms
        self.gaussian = gaussian_of(guide) is not None

    def __call__(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        current = _flat(self.params)
        _assign(self.params, flat)
        try:
            with torch.no_grad():
                if self.gaussian:
                    loc, scale_tril, _ = gaussian_of(self.guide)
                    return loc.detach().clone(), scale_tril.detach().pow(2).sum(-1).sqrt()
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    draws = torch.stack(
                        [
                            _unconstrained_draw(
                                poutine.trace(self.guide).get_trace(*self.args, **self.kwargs),
                                self.names,
                                self.transforms,
                            )
                            for _ in range(SUMMARY_DRAWS)
                        ]
                    )
                return draws.mean(0), draws.std(0)
        finally:
            _assign(self.params, current)


def _subsample_noise(tr: poutine.Trace) -> float:
    """``sqrt(1 + N/B)`` for the most subsampled plate of the trace (1 without subsampling): the
    factor by which minibatches multiply the standard deviation of the ELBO's gradient."""
    ratio = 0.0
    for site in tr.nodes.values():
        if site["type"] == "sample" and site_is_subsample(site) and site["value"].numel() < site["fn"].size:
            ratio = max(ratio, site["fn"].size / site["value"].numel())
    return math.sqrt(1.0 + ratio) if ratio else 1.0


def _change(a: tuple, b: tuple) -> tuple[float, float]:
    """Largest move of a mean in standard deviations, and of a log standard deviation."""
    (loc_a, sd_a), (loc_b, sd_b) = a, b
    sd = torch.maximum(sd_a, sd_b).clamp_min(torch.finfo(sd_a.dtype).tiny)
    d_loc = float(((loc_a - loc_b).abs() / sd).max())
    d_scale = float((sd_a.clamp_min(1e-300).log() - sd_b.clamp_min(1e-300).log()).abs().max())
    return d_loc, d_scale


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
    return mean, math.sqrt(var / n)


def optimise(
    loss_fn: Callable[[], torch.Tensor],
    params: list[torch.Tensor],
    summary: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    *,
    lr: float,
    max_steps: int,
    tol: float,
    noise: float = 1.0,
    natural: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None,
    window: int = WINDOW,
    progress: bool = False,
) -> dict[str, Any]:
    """Adam on ``loss_fn`` (a one-sample negative ELBO) over ``params`` with the two-phase
    schedule and convergence test of the module docstring. Leaves ``params`` at the final
    Polyak average and returns ``converged``, ``steps``, ``elbo`` (the loss at every step),
    ``message`` and the last ``change`` (means in sds, log-scales) the test saw.

    ``natural()``, where given, returns the guide's location parameter (one of ``params``) and
    the guide's current covariance: in the averaging phase that location moves by
    natural-gradient steps ``-NATURAL_STEP * covariance @ grad`` instead of Adam's. Adam scales
    every coordinate alone, so on a correlated posterior (a regression on raw covariates) the noise across a
    narrow ridge sets its step sizes and the drift along the ridge becomes too slow for any
    window to see; the natural gradient is affine invariant and relaxes every direction in about
    ``1 / NATURAL_STEP`` steps."""
    opt = torch.optim.Adam(params, lr=lr, betas=BETAS)
    loc_param, covariance = None, None
    losses: list[float] = []
    blocks: list[tuple[torch.Tensor, float]] = []  # per window: parameter sum, mean loss
    phase, previous, converged, change = "approach", None, False, (math.inf, math.inf)
    previous_losses: list[float] = []
    half = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, desc="vi", file=sys.stderr)
    final = None
    try:
        while len(losses) < max_steps:
            total, block_losses = None, []
            if loc_param is not None:
                covariance = natural()[1]
            for _ in range(min(window, max_steps - len(losses))):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"posterior(method='vi'): the ELBO became {value} at step {len(losses) + 1}. Lower vi_lr "
                        "or check the model's scales and priors."
                    )
                loss.backward()
                if loc_param is not None:
                    with torch.no_grad():
                        grad = loc_param.grad.reshape(-1)
                        # at most one guide sd (Mahalanobis) a step: a safeguard, never reached when
                        # the covariance matches the posterior's curvature
                        length = NATURAL_STEP * float(grad @ covariance @ grad).__abs__() ** 0.5
                        step = NATURAL_STEP / max(1.0, length) * (covariance @ grad)
                        loc_param -= step.view_as(loc_param)
                    loc_param.grad = None
                opt.step()
                losses.append(value)
                block_losses.append(value)
                flat = _flat(params)
                total = flat if total is None else total.add_(flat)
                if bar is not None:
                    bar.update(1)
            count = len(block_losses)
            blocks.append((total, sum(block_losses) / count))
            final = total / count
            if count < window:
                break
            if phase == "approach":
                current = summary(final)
                if previous is not None:
                    change = _change(current, previous)
                    (mean_a, se_a), (mean_b, se_b) = _mean_se(block_losses), _mean_se(previous_losses)
                    if (
                        change[0] <= APPROACH * noise
                        and change[1] <= APPROACH
                        and abs(mean_a - mean_b) <= 2 * math.hypot(se_a, se_b)
                    ):
                        phase = "averaging"
                        _assign(params, final)
                        # a fresh Adam: its second-moment average (memory ~1000 steps) would still hold
                        # the large gradients of the approach and shrink every step of the averaging
                        # the approach has settled the covariance: natural steps are stable now
                        # (with the initial covariance, far wider than the posterior's, they are not)
                        loc_param = natural()[0] if natural is not None else None
                        adam_params = [p for p in params if p is not loc_param]
                        opt = torch.optim.Adam(adam_params, lr=lr * DECAY, betas=BETAS)
                        blocks = []
                previous, previous_losses = current, block_losses
                continue
            half = min(len(blocks) // 2, MAX_HALF)
            if half < MIN_HALF:
                continue
            first, second = blocks[-2 * half : -half], blocks[-half:]
            mean_first = sum(b[0] for b in first) / (half * window)
            mean_second = sum(b[0] for b in second) / (half * window)
            final = (mean_first + mean_second) / 2
            change = _change(summary(mean_second), summary(mean_first))
            (la, sa), (lb, sb) = _mean_se([b[1] for b in first]), _mean_se([b[1] for b in second])
            if change[0] <= tol * noise and change[1] <= tol and abs(la - lb) <= 2 * math.hypot(sa, sb):
                converged = True
                break
    finally:
        if bar is not None:
            bar.close()
    if final is not None:
        _assign(params, final)
    steps = len(losses)
    if converged:
        message = (
            f"converged after {steps} steps: the guide's means moved by {change[0]:.3g} posterior sds and its "
            f"log-scales by {change[1]:.3g} between the halves of the last {2 * half * window} steps (tol {tol:.3g})."
        )
    else:
        where = "still approaching" if phase == "approach" else "averaging"
        message = (
            f"not converged after {steps} steps ({where}): between the last windows the guide's means moved by "
            f"{change[0]:.3g} posterior sds and its log-scales by {change[1]:.3g} (tol "
            f"{tol if phase == 'averaging' else APPROACH:.3g}). Raise vi_steps, or raise vi_lr if the means are "
            "still far away (the draws come from the last window's average)."
        )
    return {"converged": converged, "steps": steps, "elbo": losses, "message": message, "change": change}


def run_vi(
    model: Callable,
    args: tuple,
    kwargs: dict,
    tr: poutine.Trace,
    num_samples: int,
    chains: int,
    seed: int | None,
    progress: bool,
    guide: Any = "mvn",
    max_steps: int = 20000,
    lr: float = 0.01,
    tol: float = 0.1,
) -> tuple[dict, dict, dict]:
    """``(samples, sample_stats, info)`` of VI on ``model(*args, **kwargs)``; ``tr`` is one
    trace of the model (its latent sites and their supports). The global generators are
    seeded by the caller (:func:`pyro_mle.posterior` runs this in ``rng_scope(seed)``)."""
    guide_fn, name = make_guide(model, guide)
    latents = _replay.latent_sites(tr)
    transforms = {n: biject_to(s["fn"].support) for n, s in latents.items()}  # unconstrained → constrained
    elbo = Trace_ELBO()
    try:
        params = _guide_params(guide_fn, args, kwargs)
    except NotImplementedError as e:
        raise ValueError(
            f"posterior(method='vi'): guide {name!r} cannot be built on this model ({e}). A latent site inside a "
            "subsampling plate needs a guide with local parameters, e.g. guide=pyro.infer.autoguide.AutoNormal."
        ) from None
    names = list(latents)
    summary = _Summary(guide_fn, params, args, kwargs, names, transforms)
    noise = _subsample_noise(tr)
    guide_tr = poutine.trace(guide_fn).get_trace(*args, **kwargs)
    if all(
        s["fn"].has_rsample
        for s in guide_tr.nodes.values()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    ):
        loss_fn = lambda: stl_loss(model, guide_fn, args, kwargs)  # noqa: E731
    else:  # a guide with a non-reparameterised draw needs the score term STL drops
        loss_fn = lambda: elbo.differentiable_loss(model, guide_fn, *args, **kwargs)  # noqa: E731
    natural = None
    if isinstance(guide_fn, AutoContinuous) and gaussian_of(guide_fn) is not None:

        def natural() -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                _, scale_tril, _ = gaussian_of(guide_fn)
                return guide_fn.loc.unconstrained(), (scale_tril @ scale_tril.T).detach()

    run = optimise(
        loss_fn,
        params,
        summary,
        natural=natural,
        lr=lr,
        max_steps=max_steps,
        tol=tol,
        noise=noise,
        progress=progress,
    )
    if not run["converged"]:
        warnings.warn(f"posterior(method='vi'): {run['message']}", ConvergenceWarning, stacklevel=3)
    info: dict[str, Any] = {
        "guide": name,
        "converged": run["converged"],
        "steps": run["steps"],
        "elbo": run["elbo"],
        "message": run["message"],
        "tol": (tol * noise, tol),
    }
    (draw_seed,) = spawn_seeds(seed, 1)
    with torch.no_grad():
        gaussian = gaussian_of(guide_fn)
    if gaussian is not None:
        loc, scale_tril, layout = (t.detach().clone() if torch.is_tensor(t) else t for t in gaussian)
        # draw_gaussian takes initialize_model's transforms: constrained → unconstrained
        to_unconstrained = {n: t.inv for n, t in transforms.items()}
        samples, stats = draw_gaussian(loc, scale_tril, layout, to_unconstrained, num_samples, chains, draw_seed)
        info.update(loc=loc, covariance=scale_tril @ scale_tril.T, layout=layout)
        return samples, stats, info
    samples, log_q, layout = _sample_guide(guide_fn, args, kwargs, names, transforms, num_samples * chains, draw_seed)
    samples = {k: v.reshape((chains, num_samples) + v.shape[1:]) for k, v in samples.items()}
    info.update(log_q=log_q.reshape(chains, num_samples), layout=layout)
    return samples, {}, info


def _sample_guide(guide, args, kwargs, names, transforms, total, seed):
    """``total`` independent draws of the latent sites from a guide, and the log density of each
    under the guide in the unconstrained space: the guide trace's log density (constrained
    values) plus the log Jacobian of the map from unconstrained to constrained values."""
    values: dict[str, list] = {n: [] for n in names}
    log_q = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for _ in range(total):
            tr = poutine.trace(guide).get_trace(*args, **kwargs)
            lq = tr.log_prob_sum()
            for n in names:
                z = tr.nodes[n]["value"].detach()
                u = transforms[n].inv(z)
                lq = lq + transforms[n].log_abs_det_jacobian(u, z).sum()
                values[n].append(z)
            log_q.append(lq)
    layout = [(n, tuple(transforms[n].inv(values[n][0]).shape)) for n in names]
    return {n: torch.stack(v) for n, v in values.items()}, torch.stack(log_q), layout


__all__ = ["GUIDES", "gaussian_of", "make_guide", "optimise", "run_vi"]
