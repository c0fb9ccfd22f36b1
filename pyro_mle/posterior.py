"""Full posterior inference on the same Pyro program that :func:`pyro_mle.fit` reads as MLE/MAP.

Three readings of the posterior:

* ``"nuts"``: NUTS on the program's unconstrained potential, compiled once and checked
  against the interpreted program (:mod:`pyro_mle.potential`). ``sampler="nutpie"`` (default)
  runs nutpie's Rust NUTS with chains in parallel; ``sampler="pyro"`` runs
  :class:`pyro.infer.NUTS`, chains one after another, each from its own seed spawned from
  ``seed`` (:func:`pyro_mle._rng.spawn_seeds`). Programs with discrete latents or subsampling
  plates run on Pyro's NUTS, interpreted (``info["fallback"]`` says why).
* ``"laplace"``: a Gaussian at the posterior mode in the unconstrained space, with covariance
  the inverse Hessian of the negative log joint there (exact for a linear-Gaussian model).
* ``"vi"``: SVI with a full-rank multivariate normal guide
  (:class:`~pyro.infer.autoguide.AutoMultivariateNormal`).

Every method runs inside :func:`pyro_mle._rng.rng_scope`: the draws depend on ``seed`` only,
and the caller's global generators (``random``, NumPy, torch) are left as they were, so a
bootstrap loop around :func:`posterior` does not repeat itself.

``pyro.param`` and ``pyro.module`` parameters are not random variables: every method keeps
them at their current values in Pyro's param store (fit them first with
:func:`pyro_mle.fit`, or give them priors with ``PyroSample``).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from arviz_base import from_dict
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal
from pyro.infer.mcmc.util import initialize_model
from pyro.poutine.util import site_is_subsample

from . import _nutpie, _pyro_nuts, _replay
from ._rng import rng_scope, spawn_seeds
from .diagnostics import sampling_messages, warn
from .optim.lbfgs import lbfgs
from .optim.newton import hessian_from, newton, value_and_grad_from
from .optim.stopping import default_tolerances, relative_gradient
from .potential import build_potential

METHODS = ("nuts", "laplace", "vi")
SAMPLERS = ("nutpie", "pyro")


@dataclass(frozen=True)
class Posterior:
    """Draws from the posterior of a Pyro program's latent sites.

    Fields:
      * ``method``: ``"nuts"``, ``"laplace"`` or ``"vi"``.
      * ``samples``: latent site name → tensor of shape ``(chain, draw, *site shape)``, in
        the constrained space (a scale is positive).
      * ``sample_stats``: sampler statistics, each ``(chain, draw)``. NUTS gives
        ``diverging``, ``acceptance_rate`` (the transition's mean acceptance probability
        over its tree, Stan's ``accept_stat__``; *not* Pyro's running "acceptance rate"
        diagnostic), ``step_size``, ``tree_depth``, ``n_steps`` (leapfrog steps),
        ``energy`` (the Hamiltonian of the transition), ``lp`` (log joint density at the
        draw, unconstrained space) and ``reached_max_treedepth``. ``tree_depth`` is Stan's
        ``treedepth__`` (doublings taken) for both engines. Laplace and VI draws are independent and
        have no sampler statistics.
      * ``info``: run facts: ``run_time_s``, ``seed``, ``chains``, ``num_samples``,
        ``warmup``, and for NUTS ``sampler``, ``route`` of the potential (``"script"``,
        ``"fx-script"``, ``"interpreted"``), ``route_reason`` (why faster routes were refused),
        ``jit`` (a compiled route ran), ``fallback`` (why Pyro's engine ran); per method
        ``loc``/``covariance``/``layout`` of the Gaussian (Laplace, VI; unconstrained
        space), ``elbo`` history (VI).
      * ``model``, ``args``, ``kwargs``: the program and the data it was run on, for
        :meth:`predict` and :func:`pyro_mle.to_datatree`.
    """

    method: str
    samples: Mapping[str, torch.Tensor]
    sample_stats: Mapping[str, torch.Tensor]
    info: Mapping[str, Any]
    model: Callable = field(repr=False)
    args: tuple = field(default=(), repr=False)
    kwargs: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_chains(self) -> int:
        return next(iter(self.samples.values())).shape[0]

    @property
    def num_draws(self) -> int:
        return next(iter(self.samples.values())).shape[1]

    def flat_samples(self) -> dict[str, torch.Tensor]:
        """Samples with chain and draw merged into one leading dimension."""
        return {k: v.reshape((-1,) + v.shape[2:]) for k, v in self.samples.items()}

    def predict(self, *args: Any, datatree: bool = False, **kwargs: Any) -> dict[str, torch.Tensor] | Any:
        """One posterior predictive draw of every observed site per posterior draw.

        With no arguments the program runs on the data it was fitted to; pass new inputs
        as the program's own arguments. Returns site → ``(chain, draw, *value shape)``; with
        ``datatree=True``, an ArviZ DataTree with ``predictions`` and
        ``predictions_constant_data`` groups (dims from plates), as
        ``to_datatree(post, predictions=args)`` builds it.
        """
        if not args and not kwargs:
            args, kwargs = self.args, self.kwargs
        if datatree:
            from .datatree import to_datatree  # datatree imports this module

            return to_datatree(
                self, predictions=tuple(args), pred_kwargs=kwargs, predictive=False, log_likelihood=False
            )
        draws, _ = _replay.predictive_draws(self.model, self.flat_samples(), args, kwargs)
        c, d = self.num_chains, self.num_draws
        return {k: v.reshape((c, d) + v.shape[1:]) for k, v in draws.items()}


def posterior(
    model: Callable,
    *args: Any,
    method: str = "nuts",
    num_samples: int = 1000,
    warmup: int = 1000,
    chains: int = 2,
    seed: int | None = 0,
    progress: bool | None = None,
    jit: bool = True,
    sampler: str = "nutpie",
    adaptation: str = "diag",
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    target_accept_prob: float | None = None,
    vi_steps: int = 3000,
    vi_lr: float = 0.01,
    diagnose: bool = True,
    **kwargs: Any,
) -> Posterior:
    """Posterior draws of ``model(*args, **kwargs)``'s latent sites.

    :param method: ``"nuts"``, ``"laplace"`` or ``"vi"`` (see the module docstring).
    :param num_samples: draws kept per chain.
    :param warmup: NUTS warm-up (adaptation) steps per chain, discarded.
    :param chains: independent chains (for Laplace and VI: independent groups of draws,
        so r-hat is defined).
    :param seed: the run's seed: the same seed gives the same draws; ``None`` draws fresh
        entropy. The chains get independent seeds spawned from it
        (:func:`~pyro_mle._rng.spawn_seeds`). The caller's global generators are untouched.
    :param progress: progress bars; default on when stderr is a terminal.
    :param jit: compile the NUTS potential (:mod:`pyro_mle.potential`: traced, checked against
        the program, the interpreted program when no trace reproduces it).
    :param sampler: the NUTS engine: ``"nutpie"`` (default; Rust, chains in parallel) or
        ``"pyro"`` (:class:`pyro.infer.NUTS`, chains one after another). Programs with
        discrete latent sites or subsampling plates run on Pyro's NUTS, interpreted;
        ``info["fallback"]`` says why.
    :param adaptation: nutpie's mass-matrix adaptation, ``"diag"`` or ``"low_rank"`` (adapts to
        correlations between parameters).
    :param target_accept: the mean acceptance probability the step size is adapted to; raise it
        (0.9–0.99) when transitions diverge. ``target_accept_prob`` is the same (Pyro's name).
    :param max_tree_depth: at most ``2**max_tree_depth`` leapfrog steps per transition.
    :param vi_steps, vi_lr: SVI steps and Adam learning rate for ``"vi"``.
    :param diagnose: after NUTS, warn (:class:`~pyro_mle.diagnostics.DiagnosticWarning`)
        about r-hat > 1.01, ESS below 100 per chain and divergent transitions.

    Example::

        post = pyro_mle.posterior(model, x, y, method="nuts", num_samples=500, warmup=500)
        post.samples["w"].shape        # (2, 500, D)
    """
    if method not in METHODS:
        raise ValueError(f"posterior: unknown method {method!r}; choose one of {list(METHODS)}.")
    for name, value in (("num_samples", num_samples), ("chains", chains)):
        if int(value) != value or value < 1:
            raise ValueError(f"posterior: {name} must be a positive integer; got {value!r}.")
    if int(warmup) != warmup or warmup < 0:
        raise ValueError(f"posterior: warmup must be a non-negative integer; got {warmup!r}.")
    if progress is None:
        progress = sys.stderr.isatty()
    if target_accept_prob is not None:
        target_accept = target_accept_prob
    if sampler not in SAMPLERS:
        raise ValueError(f"posterior: unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}.")
    if adaptation not in _nutpie.ADAPTATIONS:
        raise ValueError(f"posterior: unknown adaptation {adaptation!r}; choose one of {list(_nutpie.ADAPTATIONS)}.")
    if not 0 < target_accept < 1:
        raise ValueError(f"posterior: target_accept must be in (0, 1); got {target_accept!r}.")
    if int(max_tree_depth) != max_tree_depth or max_tree_depth < 1:
        raise ValueError(f"posterior: max_tree_depth must be a positive integer; got {max_tree_depth!r}.")
    start = time.perf_counter()
    with rng_scope(seed):  # the caller's generators are restored on the way out, also on error
        tr = _replay.trace_model(model, args, kwargs)
        _replay.require_observed(model, tr)
        if not _replay.latent_sites(tr):
            raise ValueError(
                f"posterior: model {getattr(model, '__name__', model)!r} has no latent sample site, so there is no "
                "posterior to draw. Give the parameters priors (pyro.sample), or use pyro_mle.fit for point estimates."
            )
        if method == "nuts":
            options = dict(
                sampler=sampler, adaptation=adaptation, target_accept=target_accept, max_tree_depth=max_tree_depth
            )
            samples, stats, info = _run_nuts(
                model, args, kwargs, tr, num_samples, warmup, chains, seed, progress, jit, options
            )
        elif method == "laplace":
            samples, stats, info = _run_laplace(model, args, kwargs, num_samples, chains, seed)
        else:
            # the guide's parameters live in a copy of the store: reproducible from the seed, and
            # the user's store is left as it was
            with _replay.param_store_copy():
                samples, stats, info = _run_vi(
                    model, args, kwargs, num_samples, chains, seed, progress, vi_steps, vi_lr
                )
    info.update(run_time_s=time.perf_counter() - start, seed=seed, chains=chains, num_samples=num_samples)
    if method == "nuts":
        info["warmup"] = warmup
    result = Posterior(method, samples, stats, info, model, tuple(args), dict(kwargs))
    if diagnose and method == "nuts":
        warn(sampling_messages(_draws_tree(result), max_tree_depth=max_tree_depth))
    return result


def _draws_tree(result: Posterior):
    """The draws and sampler statistics as a bare DataTree, enough for
    :func:`~pyro_mle.diagnostics.sampling_messages` (which reads no dimension names).
    :func:`pyro_mle.to_datatree` builds the full one; it is not used here so that this module
    does not depend on the converter that depends on it."""
    groups = {"posterior": {k: v.detach().cpu().numpy() for k, v in result.samples.items()}}
    if result.sample_stats:
        groups["sample_stats"] = {k: v.detach().cpu().numpy() for k, v in result.sample_stats.items()}
    return from_dict(groups)


# --------------------------------------------------------------------------- NUTS


def _nutpie_refusal(tr) -> str:
    """Why nutpie cannot sample this program (``""`` when it can): its potential must be a
    deterministic function of one flat vector of continuous latents."""
    discrete = [n for n, s in _replay.latent_sites(tr).items() if s["fn"].support.is_discrete]
    if discrete:
        return f"discrete latent sites {discrete} are enumerated by Pyro's NUTS"
    subsampled = [
        n
        for n, s in tr.nodes.items()
        if s["type"] == "sample" and site_is_subsample(s) and s["value"].numel() < s["fn"].size
    ]
    if subsampled:
        return f"subsampling plates {subsampled} make the potential random"
    return ""


def _run_nuts(model, args, kwargs, tr, num_samples, warmup, chains, seed, progress, jit, options):
    sampler = options["sampler"]
    info: dict[str, Any] = {"sampler": sampler}
    refusal = _nutpie_refusal(tr)
    if refusal:
        # the program itself, interpreted: a trace of a random or enumerated potential cannot be
        # checked against the program at fixed points
        info.update(sampler="pyro", route="interpreted", jit=False, fallback=refusal)
        samples, stats = _pyro_nuts.sample(
            model,
            args,
            kwargs,
            num_samples,
            warmup,
            chains,
            seed,
            progress,
            options["target_accept"],
            options["max_tree_depth"],
        )
        _pyro_nuts.warn_fallback(model, sampler, refusal, jit)
        return samples, stats, info
    (check_seed, run_seed) = spawn_seeds(seed, 2)
    potential = build_potential(model, args, kwargs, compile=jit, check_seed=check_seed)
    info.update(route=potential.route, jit=potential.route != "interpreted", route_reason=potential.reason)
    if sampler == "nutpie":
        samples, stats = _nutpie.sample(
            potential,
            num_samples,
            warmup,
            chains,
            _nutpie.seed_for(run_seed),
            progress,
            options["adaptation"],
            options["target_accept"],
            options["max_tree_depth"],
        )
        info["adaptation"] = options["adaptation"]
    else:
        samples, stats = _pyro_nuts.sample(
            potential,
            args,
            kwargs,
            num_samples,
            warmup,
            chains,
            run_seed,
            progress,
            options["target_accept"],
            options["max_tree_depth"],
        )
    return samples, stats, info


# --------------------------------------------------------------------------- Laplace and VI


def _draw_gaussian(loc, scale_tril, layout, transforms, num_samples, chains, seed):
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


def _run_laplace(model, args, kwargs, num_samples, chains, seed):
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
    samples, stats = _draw_gaussian(mode, scale_tril, layout, transforms, num_samples, chains, draw_seed)
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


def _run_vi(model, args, kwargs, num_samples, chains, seed, progress, steps, lr):
    # the global generators were seeded by posterior's rng_scope(seed)
    _, potential_fn, transforms, _ = initialize_model(model, model_args=args, model_kwargs=kwargs)
    guide = AutoMultivariateNormal(model)
    # lr decays 100-fold over the run so the final iterates settle instead of jittering
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.01 ** (1 / max(steps, 1))})
    svi = SVI(model, guide, optim, Trace_ELBO())
    losses = []
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="vi", file=sys.stderr)
    for _ in iterator:
        losses.append(svi.step(*args, **kwargs))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(
                f"posterior(method='vi'): the ELBO became {losses[-1]} at step {len(losses)}. Lower vi_lr "
                "or check the model's scales."
            )
    with torch.no_grad():
        gaussian = guide.get_posterior()
        loc, scale_tril = gaussian.loc.detach().clone(), gaussian.scale_tril.detach().clone()
        # the guide's latent vector lists the sites in prototype order, unconstrained shapes
        layout = [
            (name, tuple(guide._unconstrained_shapes[name]))
            for name, _ in guide.prototype_trace.iter_stochastic_nodes()
        ]
    (draw_seed,) = spawn_seeds(seed, 1)
    samples, stats = _draw_gaussian(loc, scale_tril, layout, transforms, num_samples, chains, draw_seed)
    info = {"loc": loc, "covariance": scale_tril @ scale_tril.T, "layout": layout, "elbo": losses}
    return samples, stats, info
