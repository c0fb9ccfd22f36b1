"""Full posterior inference on the same Pyro program that :func:`pyro_mle.fit` reads as MLE/MAP.

Three readings of the posterior:

* ``"nuts"``: NUTS on the program's unconstrained potential, compiled once and checked
  against the interpreted program (:mod:`pyro_mle.potential`). ``sampler="nutpie"`` (default)
  runs nutpie's Rust NUTS with chains in parallel; ``sampler="pyro"`` runs
  :class:`pyro.infer.NUTS`, chains one after another, each from its own seed spawned from
  ``seed`` (:func:`pyro_mle._rng.spawn_seeds`). Programs with discrete latents or subsampling
  plates run on Pyro's NUTS, interpreted (``info["fallback"]`` says why).
* ``"laplace"``: a Gaussian at the posterior mode in the unconstrained space, with covariance
  the inverse Hessian of the negative log joint there (exact for a linear-Gaussian model;
  :mod:`pyro_mle.laplace`).
* ``"vi"``: SVI with a guide (default a full-rank multivariate normal over the unconstrained
  latents), run until the guide's means and scales stop moving (:mod:`pyro_mle.vi`); subsampling
  plates give minibatch VI.

Every method runs inside :func:`pyro_mle._rng.rng_scope`: the draws depend on ``seed`` only,
and the caller's global generators (``random``, NumPy, torch) are left as they were, so a
bootstrap loop around :func:`posterior` does not repeat itself.

``pyro.param`` and ``pyro.module`` parameters are not random variables: every method keeps
them at their current values in Pyro's param store (fit them first with
:func:`pyro_mle.fit`, or give them priors with ``PyroSample``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from arviz_base import from_dict
from pyro.poutine.util import site_is_subsample

from . import _nutpie, _pyro_nuts, _replay
from ._rng import rng_scope, spawn_seeds
from ._threads import threads_for, work_elements
from .diagnostics import sampling_messages, warn
from .laplace import run_laplace
from .potential import build_potential
from .vi import run_vi

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
        ``loc``/``covariance``/``layout`` of the Gaussian (Laplace, and VI with a Gaussian
        guide; unconstrained space); for VI ``guide`` (its name), ``converged``, ``steps``,
        ``elbo`` (the loss at every step), ``message`` (the convergence test's verdict),
        ``tol`` (its tolerance), and ``log_q`` (chain, draw) for a guide that is not Gaussian.
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
    guide: Any = "mvn",
    vi_steps: int = 20000,
    vi_lr: float = 0.01,
    vi_tol: float = 0.1,
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
    :param guide: the VI guide: ``"mvn"`` (default; full-rank Gaussian), ``"diag"`` (mean
        field), a Pyro :class:`~pyro.infer.autoguide.AutoGuide` class, or a callable
        ``model -> guide``.
    :param vi_steps: the most SVI steps VI may take; a run that has not converged by then warns
        (:class:`~pyro_mle.results.ConvergenceWarning`) and has ``info["converged"] = False``.
    :param vi_lr: Adam's learning rate while the guide approaches the optimum (lowered for
        the averaging phase).
    :param vi_tol: the convergence tolerance of VI: the largest move of the guide's means (in
        posterior sds) and log-scales between the halves of the averaging phase
        (:mod:`pyro_mle.vi`); widened by ``sqrt(1 + N/B)`` under a subsampling plate.
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
    if int(vi_steps) != vi_steps or vi_steps < 1:
        raise ValueError(f"posterior: vi_steps must be a positive integer; got {vi_steps!r}.")
    if not (vi_lr > 0 and vi_tol > 0):
        raise ValueError(f"posterior: vi_lr and vi_tol must be positive; got vi_lr={vi_lr!r}, vi_tol={vi_tol!r}.")
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
    user_model = model
    # NaN where an observation is masked (obs_mask, poutine.mask) is how missing data are
    # written; Pyro's support check refuses it even there, so those entries get a finite value
    model = _replay.allow_masked_nan(model)
    with rng_scope(seed):  # the caller's generators are restored on the way out, also on error
        tr = _replay.trace_model(model, args, kwargs)
        _replay.require_observed(model, tr)
        if not _replay.latent_sites(tr):
            raise ValueError(
                f"posterior: model {getattr(model, '__name__', model)!r} has no latent sample site, so there is no "
                "posterior to draw. Give the parameters priors (pyro.sample), or use pyro_mle.fit for point estimates."
            )
        imputed = _imputed_sites(tr)
        if imputed:
            names = ", ".join(repr(n) for n in imputed)
            why = (
                f"site(s) {names} impute their missing entries through obs_mask. Pyro makes '<site>_unobserved' "
                "a latent of the site's full shape whose observed entries carry no density: a flat, improper "
                "direction per observed row"
            )
            fix = (
                "To leave the missing rows out of the likelihood, write `with pyro.poutine.mask(mask=mask): "
                "pyro.sample(name, dist, obs=y)` (NaN allowed where masked); to impute them, draw the missing "
                "values from the posterior predictive afterwards."
            )
            if method != "vi":
                raise ValueError(
                    f"posterior(method={method!r}): {why}, which NUTS cannot adapt to and Laplace cannot invert. {fix}"
                )
            warn([f"posterior(method='vi'): {why}; the guide's scales along them are not estimates. {fix}"])
        if method == "nuts":
            options = dict(
                sampler=sampler, adaptation=adaptation, target_accept=target_accept, max_tree_depth=max_tree_depth
            )
            samples, stats, info = _run_nuts(
                model, args, kwargs, tr, num_samples, warmup, chains, seed, progress, jit, options
            )
        elif method == "laplace":
            with threads_for(*work_elements(args, kwargs)):  # thousands of small evaluations
                samples, stats, info = run_laplace(model, args, kwargs, num_samples, chains, seed)
        else:
            # the guide's parameters live in a copy of the store: reproducible from the seed, and
            # the user's store is left as it was. Thousands of small SVI steps: on one thread
            # unless the data are large (a step took 30 ms on 2 busy cores, 5-6 ms on one).
            with _replay.param_store_copy(), threads_for(*work_elements(args, kwargs)):
                samples, stats, info = run_vi(
                    model, args, kwargs, tr, num_samples, chains, seed, progress, guide, vi_steps, vi_lr, vi_tol
                )
    info.update(run_time_s=time.perf_counter() - start, seed=seed, chains=chains, num_samples=num_samples)
    if method == "nuts":
        info["warmup"] = warmup
    result = Posterior(method, samples, stats, info, user_model, tuple(args), dict(kwargs))
    if diagnose and method == "nuts":
        warn(sampling_messages(_draws_tree(result), max_tree_depth=max_tree_depth))
    return result


def _imputed_sites(tr) -> list[str]:
    """Observed sites written with ``obs_mask``: Pyro splits each into ``{name}_observed``
    and a masked latent ``{name}_unobserved`` of the full shape."""
    suffix = "_unobserved"
    return [
        name[: -len(suffix)]
        for name, site in tr.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and name.endswith(suffix)
        and f"{name[: -len(suffix)]}_observed" in tr.nodes
        and site.get("mask") is not None
    ]


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
