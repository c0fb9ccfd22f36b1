r"""Point estimates of a Pyro program: maximum likelihood (MLE) and maximum a posteriori (MAP).

:func:`fit` only orchestrates the building blocks:

* :func:`pyro_mle.objective` (:mod:`pyro_mle.objective`): the program read as a function of
  its unconstrained parameters, :math:`-\log p(y\mid\theta)` or
  :math:`-\log p(y\mid\theta)-\log p(\theta)`;
* :mod:`pyro_mle.evaluation`: that function evaluated inside a run, with failures named and,
  for a data-parallel fit, summed over processes; :mod:`pyro_mle.compile` traces it;
* :mod:`pyro_mle.optim`: L-BFGS, Adam and a Newton finish, free of Pyro, and the stopping rule;
* :mod:`pyro_mle.nonsmooth`: the exact solver for absolute-error (Laplace) terms;
* :mod:`pyro_mle.existence`: whether every parameter reaches the loss and whether the estimate
  exists at all;
* :mod:`pyro_mle.results`: the :class:`~pyro_mle.results.Fit` it returns.

The same fit by hand, with Pyro's own blocks::

    guide = AutoDelta(model)
    svi = SVI(pyro_mle.handlers.likelihood_only(model), guide, Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(5000):
        svi.step(x, y)
"""

from __future__ import annotations

import math
import sys
import warnings
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro.infer.autoguide import AutoDelta
from pyro.poutine.runtime import Message
from tqdm import tqdm

from . import compile as compiling
from . import existence, nonsmooth
from ._rng import rng_scope, spawn_seeds
from ._validation import validation
from .evaluation import Collective, Diverged, Evaluator, TraceMismatch
from .objective import METHODS, PointObjective, _inspect, _ScaleObserved, init_to_centre
from .optim.adam import adam
from .optim.lbfgs import flat_grad, lbfgs
from .optim.newton import newton
from .optim.result import OptimResult
from .optim.stopping import default_tolerances, relative_gradient
from .results import (
    ConvergenceWarning,
    Fit,
    FitDivergedError,
    FitInterrupted,
    NoOptimumWarning,
    Prediction,
    UnusedParameterError,
    ZeroGradientWarning,
    load,
)

OPTIMIZERS = ("lbfgs", "adam")
_NUM_STEPS = {"lbfgs": 1000, "adam": 5000}
_LR = {"lbfgs": 1.0, "adam": 0.01}
#: Adam runs at least this long trace their objective by default: tracing and checking the
#: trace cost a few evaluations and tens of milliseconds, and save a Python run of the
#: program at every step after that.
_JIT_MIN_STEPS = 200
#: Full-batch fits with at most this many parameters always end with Newton steps (a dense
#: Hessian costs one backward pass per parameter: cheap here, and it certifies the optimum
#: where L-BFGS cannot tell an ill-conditioned valley from a minimum) ...
_NEWTON_ALWAYS = 200
#: ... and with at most this many when L-BFGS did not converge.
_NEWTON_MAX = 2000
#: Newton steps of the finish: near an optimum a handful suffice; far from one (a network
#: stalled on a ridge) more only cost Hessians.
_NEWTON_STEPS = 20
#: The tolerances (rtol, gtol) to which L-BFGS brings the point when a Newton finish follows.
_NEAR = (1e-6, 1e-4)
#: Condition number below which a positive definite Hessian at the end certifies a strict minimum.
_WELL_CONDITIONED = 1e8
#: iterates kept for the test of an estimate at infinity (the direction the fit last moved in)
_RAY_MEMORY, _RAY_MAX_PARAMS = 8, 100_000
#: An Adam run is judged by the relative gradient of the full objective at its estimate; a
#: first-order stochastic method is not expected below this, whatever the dtype.
_ADAM_GTOL = 1e-4
#: ... or, for a subsampled fit, the estimate's distance from the optimum in standard errors.
_ADAM_STANDARD_ERRORS = 0.1
#: L-BFGS steps on the full data after a subsampled Adam run that is not at the optimum.
_POLISH_STEPS = 100


def fit(
    model: Callable[..., Any],
    *args: Any,
    method: str = "mle",
    optimizer: str | None = None,
    num_steps: int | None = None,
    lr: float | None = None,
    seed: int | None = 0,
    progress: bool | None = None,
    rtol: float | None = None,
    gtol: float | None = None,
    init_loc_fn: Callable[[Message], torch.Tensor] | None = None,
    jit: bool | None = None,
    **kwargs: Any,
) -> Fit:
    r"""Fit the maximum-likelihood or maximum a posteriori point estimate of a Pyro program.

    ``model(*args, **kwargs)`` is an ordinary Pyro program with at least one observed site.
    With ``method="mle"`` every latent site's prior is masked
    (:func:`~pyro_mle.handlers.likelihood_only`) and the objective is
    :math:`-\log p(y\mid\theta)`; latent sites are still estimated, as points. With
    ``method="map"`` the priors count: :math:`-\log p(y\mid\theta)-\log p(\theta)`. The MAP
    is the mode of the posterior density **in the constrained space** (AutoDelta places its
    point on the constrained value and no Jacobian enters), so it changes under a
    reparameterisation of a latent site.

    Optimizers:
      * ``"lbfgs"`` (default without subsampling): :class:`torch.optim.LBFGS` with strong-Wolfe
        line search, full batch; ``lr`` is the first trial step of each line search (1.0).
        Fits with at most 200 parameters (2,000 when L-BFGS does not converge) finish with
        damped Newton steps on the exact Hessian from autograd, solved with a pivoted
        factorisation (:func:`pyro_mle.optim.newton.newton`, the way IRLS solves GLMs): an
        ill-conditioned least-squares problem such as NIST's Longley data, unscaled, comes
        out as ``numpy.linalg.lstsq`` gives it.
      * ``"adam"`` (default when a ``pyro.plate(..., subsample_size=...)`` subsamples):
        :class:`torch.optim.Adam`, learning rate ``lr`` (0.01) decayed geometrically to
        ``lr/10`` over ``num_steps``.
      * Absolute-error terms (a Laplace likelihood: median regression; a Laplace prior under
        MAP: the lasso) are not smooth at their optimum, where gradient methods stall. Such
        programs are solved by majorise–minimise (iteratively reweighted least squares, as
        statsmodels' ``QuantReg``) with an exact finish; see :mod:`pyro_mle.nonsmooth`.

    Convergence (``Fit.converged`` is a promise): the relative gradient
    :math:`\max_i |g_i|\max(|x_i|,1)/\max(|f|,N)` over the unconstrained parameters is at
    most ``gtol`` (defaults 1e-7 for float64 parameters, 1e-4 for float32) and, for L-BFGS,
    the relative loss change of the last step at most ``rtol`` (1e-10, 1e-6). A loss that
    merely stops decreasing is never taken for convergence: the fit ends with
    ``converged=False``, a :class:`~pyro_mle.results.ConvergenceWarning` and a message that
    names the likely cause (ill-conditioning, with the condition number; non-smoothness) and
    the remedy. Adam's losses and gradients are noisy: it runs until two windows of steps
    show a plateau (:func:`pyro_mle.optim.adam.adam`); the estimate is then judged by the
    gradient of the **full** objective (one sweep over the data in minibatch-sized chunks),
    relative gradient at most ``max(gtol, 1e-4)``. Reaching ``num_steps`` (1000 for L-BFGS,
    5000 for Adam) first sets ``converged=False``; the estimate is then the last iterate.

    Existence: when the objective has no minimum, there is no estimate to report. A fit whose
    loss keeps falling beyond its end point along the direction it was moving (separable
    classes: logistic weights running to infinity) or whose constrained parameter has run to
    the edge of its support (a scale collapsing to 0 where the density is unbounded, as τ in a
    centred hierarchy under MAP) ends with ``converged=False`` and a
    :class:`~pyro_mle.results.NoOptimumWarning` that names the parameters and the remedy.

    Checks before any optimisation: the model has an observed site; every observed value has
    exactly the shape of its distribution (``batch_shape + event_shape``; ``(N,)`` against
    ``(N, 1)`` would broadcast to an N×N table) and is finite; latent sites are continuous;
    every fitted parameter has a gradient path to the loss, else
    :class:`~pyro_mle.results.UnusedParameterError` names it (a module built inside the model;
    under MLE a latent that appears only in priors). A parameter whose gradient is exactly zero
    at the start and at the end warns (:class:`~pyro_mle.results.ZeroGradientWarning`). A loss
    that turns NaN or infinite at an iterate raises :class:`~pyro_mle.results.FitDivergedError`,
    naming the step and the sites whose log-prob broke, with the last finite estimate in
    ``err.fit``; at an L-BFGS line-search *trial point* it only shortens the step.

    Start: latent sites start at zero in their unconstrained space (0 for a real value, 1 for a
    positive scale, the midpoint of an interval: :func:`~pyro_mle.objective.init_to_centre`),
    never at a draw from the prior, so an MLE does not depend on the prior; ``init_loc_fn``
    chooses another start, as for :class:`~pyro.infer.autoguide.AutoDelta`.

    State and randomness belong to the call:
      * The fit runs in a fresh scope of the global param store, restored afterwards: bare
        ``pyro.param`` values and guide locations live only in ``Fit.params``. ``pyro.module``
        and :class:`~pyro.nn.PyroModule` networks hold the estimate after the fit (their
        weights are trained in place), and the next fit of the same network starts again from
        the weights it had before its first fit, so the same call gives the same answer. Weights
        you change yourself between fits are used as you set them.
      * ``seed`` seeds the fit's own random state; the caller's generators (torch, numpy,
        random) are saved before and restored after, so ``np.random.rand()`` after a fit is
        what it would have been without it. ``seed=None`` draws fresh randomness.
      * Ctrl-C during a fit raises :class:`~pyro_mle.results.FitInterrupted` (a
        ``KeyboardInterrupt``) whose ``.fit`` holds the last parameters with a finite loss.

    Data types: nothing is cast; the fit runs in the dtype of the model's parameters. Give
    float64 data and float64 initial values (``torch.zeros(d, dtype=x.dtype)``) to recover
    closed-form answers to 1e-6 and beyond; float32 stops near 1e-4.

    Speed and large data: a Normal observed site whose scale is one value for every element
    is summed with a single fused kernel (``mse_loss``: least squares is its negative
    log-likelihood); plates that do not subsample reuse their index tensor. A plate that
    subsamples B ≤ N/100 of its N rows draws each minibatch in O(B) time and memory, so data
    memory-mapped from disk (:class:`pyro_mle.data.MemoryMappedRows`) can have any number of
    rows. With ``jit`` (default: for Adam runs of at least 200 steps) the objective is traced
    once with :func:`torch.jit.trace` (:mod:`pyro_mle.compile`) and used only if it reproduces
    the interpreted loss and gradient; it is checked again at the estimate, and a program whose
    Python decisions depend on parameter values is fitted again, interpreted.

    Usage::

        def model(x, y=None):
            w = pyro.param("w", torch.zeros(x.shape[1], dtype=x.dtype))
            pyro_mle.likelihoods.Normal(scale=0.5)("y", x @ w, obs=y)

        result = pyro_mle.fit(model, x, y)              # least squares
        result.params["w"], result.nll, result.converged
        result.predict(x_new, num_samples=200).mean["y"]

    :param callable model: the Pyro program.
    :param args: positional arguments of the model.
    :param str method: ``"mle"`` or ``"map"``.
    :param str optimizer: ``"lbfgs"`` or ``"adam"``; ``None`` chooses as above.
    :param int num_steps: the most optimizer updates.
    :param float lr: step size (see Optimizers).
    :param int seed: seed of the fit's own random state; ``None``: fresh randomness.
    :param bool progress: show a tqdm bar with the loss; ``None``: when stderr is a terminal.
    :param float rtol: relative loss-change tolerance (see Convergence).
    :param float gtol: relative-gradient tolerance (see Convergence).
    :param callable init_loc_fn: initial values of latent sites (see Start).
    :param bool jit: trace the objective with TorchScript (see Speed); ``None``: for Adam
        runs of at least 200 steps, where the one-off tracing cost pays.
    :param kwargs: keyword arguments of the model.
    :returns: a :class:`~pyro_mle.results.Fit`.
    :raises FitDivergedError: when the loss becomes NaN or infinite.
    :raises UnusedParameterError: when a fitted parameter cannot reach the loss.
    :raises FitInterrupted: on Ctrl-C, with the work so far.
    """
    return _fit(
        model,
        args,
        kwargs,
        method=method,
        optimizer=optimizer,
        num_steps=num_steps,
        lr=lr,
        seed=seed,
        progress=progress,
        rtol=rtol,
        gtol=gtol,
        init_loc_fn=init_loc_fn,
        jit=jit,
    )


def _fit(
    model: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    *,
    method: str,
    optimizer: str | None,
    num_steps: int | None,
    lr: float | None,
    seed: int | None,
    progress: bool | None,
    rtol: float | None,
    gtol: float | None,
    init_loc_fn: Callable[[Message], torch.Tensor] | None,
    jit: bool | None,
    collective: Collective | None = None,
    rank: int = 0,
    caller: str = "fit",
) -> Fit:
    """:func:`fit`, and with ``collective`` the data-parallel fit of
    :func:`pyro_mle.distributed.fit_distributed`: this process holds a share ``w`` of the
    observed data; its observed sites are scaled by ``1/w`` so that its objective is an
    estimate of the whole objective (priors counted once), and the objectives and gradients
    of all processes are averaged with weights ``w``. Every decision of the optimiser is taken
    on averaged values, so all processes take the same steps and stop together."""
    method = _choice("method", method, METHODS, caller)
    if optimizer is not None:
        optimizer = _choice("optimizer", optimizer, OPTIMIZERS, caller)
    if num_steps is not None and (int(num_steps) != num_steps or num_steps < 1):
        raise ValueError(f"{caller}(model): num_steps must be a positive integer; got {num_steps!r}.")
    for name, value in (("lr", lr), ("rtol", rtol), ("gtol", gtol)):
        if value is not None and not (isinstance(value, (int, float)) and 0 < value < math.inf):
            raise ValueError(f"{caller}(model): {name} must be a positive number; got {value!r}.")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise ValueError(f"{caller}(model): seed must be a non-negative integer or None; got {seed!r}.")
    if progress is None:
        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    # every process of a data-parallel fit draws its own minibatches
    stream = seed if collective is None or seed is None else spawn_seeds(seed, rank + 1)[rank]
    init = init_loc_fn or init_to_centre

    with rng_scope(stream), pyro.get_param_store().scope():
        structure = _inspect(model, args, kwargs, init)
        if optimizer is None:
            optimizer = "adam" if structure.subsample else "lbfgs"
        elif optimizer == "lbfgs" and structure.subsample:
            plates = ", ".join(f"{p!r} ({s} of {n})" for p, (n, s, _) in structure.subsample.items())
            raise ValueError(
                f"{caller}(model): optimizer='lbfgs' needs the full-batch loss, but plate {plates} subsamples. "
                "Use optimizer='adam' (the default here), or drop subsample_size to fit the full batch."
            )
        num_steps = int(num_steps) if num_steps is not None else _NUM_STEPS[optimizer]
        lr = float(lr) if lr is not None else _LR[optimizer]
        num_data, weight, fitted = structure.num_data, 1.0, None
        if collective is not None:
            num_data = collective.sum(structure.num_data)
            weight = structure.num_data / num_data
            fitted = _ScaleObserved(1.0 / weight)(model)
        guide = AutoDelta(model, init_loc_fn=init) if structure.latent else None
        obj = PointObjective(model, args, kwargs, method=method, structure=structure, guide=guide, fitted=fitted)
        if not obj.params:
            raise ValueError(
                f"{caller}(model): nothing to fit: the model has no latent sample site and no pyro.param or "
                "module parameter, so its likelihood has no free parameter."
            )
        if collective is not None:
            collective.broadcast(obj.params)  # every process starts from process 0's initial values
        starts = _STARTS.begin(obj.params)
        dtype = torch.float64 if all(p.dtype == torch.float64 for p in obj.params) else torch.float32
        default_rtol, default_gtol = default_tolerances(dtype)
        if optimizer == "adam":
            default_rtol = 1e-4
        settings = _Settings(
            method=method,
            optimizer=optimizer,
            num_steps=num_steps,
            lr=lr,
            rtol=default_rtol if rtol is None else float(rtol),
            gtol=default_gtol if gtol is None else float(gtol),
            num_data=num_data,
            jit=(optimizer == "adam" and num_steps >= _JIT_MIN_STEPS) if jit is None else bool(jit),
        )
        bar = tqdm(
            total=num_steps,
            desc=f"{method.upper()} ({optimizer})",
            disable=not progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )

        def on_loss(loss: float) -> None:
            if not bar.disable:
                bar.set_postfix(loss=f"{loss:.6g}", refresh=False)
                bar.update(1)

        ev = Evaluator(
            obj, method=method, optimizer=optimizer, lr=lr, weight=weight, collective=collective, on_loss=on_loss
        )

        def make(converged: bool, message: str, run: _Outcome | None = None) -> Fit:
            return _make_fit(obj, ev, settings, seed, converged, message, run)

        try:
            with pyro.validation_enabled(False), validation(False):
                # Checks ran once in _inspect; inside the loop they would only slow every
                # evaluation, and invalid parameters show up as a non-finite loss instead.
                zero_at_start = _check_reaches_loss(obj, method, caller)
                if init_loc_fn is None and _break_symmetry(obj, zero_at_start, collective):
                    zero_at_start = _check_reaches_loss(obj, method, caller)
                outcome = _Run(obj, ev, settings, structure, collective, bar).run()
                outcome.warn_zero_gradients(zero_at_start)
        except Diverged as d:
            ev.restore(d.good)
            result = make(False, d.message)
            starts.finish()
            raise FitDivergedError(d.message, result, d.step, d.sites) from d.cause
        except KeyboardInterrupt:
            ev.restore(ev.good)
            step = max(len(ev.losses) - 1, 0)
            message = (
                f"interrupted (Ctrl-C) at step {step}: Fit.params holds the last parameters whose loss was finite "
                f"(loss {ev.losses[-1] if ev.losses else math.nan:.6g}); converged=False."
            )
            result = make(False, message)
            starts.finish()
            raise FitInterrupted(f"{caller}(model): {message}", result, step) from None
        finally:
            bar.close()
        result = make(outcome.converged, outcome.message, outcome)
        starts.finish()
    if outcome.no_optimum:
        warnings.warn(f"{caller}(model): {result.message}", NoOptimumWarning, stacklevel=3)
    elif not result.converged:
        warnings.warn(f"{caller}(model): {result.message}", ConvergenceWarning, stacklevel=3)
    return result


# ---------------------------------------------------------------------------- internals
def _choice(what: str, value: object, valid: tuple[str, ...], caller: str = "fit") -> str:
    if not isinstance(value, str) or value.lower() not in valid:
        raise ValueError(f"{caller}(model): {what} must be one of {list(valid)}; got {value!r}.")
    return value.lower()


@dataclass(frozen=True)
class _Settings:
    """The resolved options of one fit."""

    method: str
    optimizer: str
    num_steps: int
    lr: float
    rtol: float
    gtol: float
    num_data: float
    jit: bool


@dataclass
class _Outcome:
    """How a run ended: the verdict and what the result reports of it."""

    converged: bool = False
    message: str = ""
    num_steps: int = 0
    grad_norm: float = math.nan
    no_optimum: bool = False
    zero_at_end: list[bool] | None = None
    names: tuple[str, ...] = ()

    def warn_zero_gradients(self, zero_at_start: list[bool]) -> None:
        if self.zero_at_end is None:
            return
        stuck = [n for n, a, b in zip(self.names, zero_at_start, self.zero_at_end) if a and b]
        if stuck:
            shown = ", ".join(repr(existence.display_name(n)) for n in stuck)
            warnings.warn(
                f"fit(model): the gradient of {shown} was exactly zero at the start and at the estimate: the loss "
                "does not depend on it there (a dead unit, a masked term, a module whose output is unused?). Its "
                "value is its starting value, not an estimate.",
                ZeroGradientWarning,
                stacklevel=4,
            )


def _set_grads(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def _check_reaches_loss(obj: PointObjective, method: str, caller: str) -> list[bool]:
    """Raise :class:`UnusedParameterError` for parameters with no gradient path to the loss;
    return, per parameter, whether its gradient at the start is exactly zero."""
    try:
        loss, _ = obj()
    except (ValueError, RuntimeError):
        return [False] * len(obj.params)  # the run reports a program that cannot be evaluated
    if loss.requires_grad:
        grads = torch.autograd.grad(loss, obj.params, allow_unused=True)
    else:
        grads = (None,) * len(obj.params)
    missing = [n for n, g in zip(obj.names, grads) if g is None]
    if missing:
        names = tuple(existence.display_name(n) for n in missing)
        message = existence.unused_message(missing, method, obj.structure.latent).replace(
            "fit(model)", f"{caller}(model)"
        )
        raise UnusedParameterError(message, names)
    return [not bool(g.any()) for g in grads]


def _break_symmetry(obj: PointObjective, zero: list[bool], collective: Collective | None) -> bool:
    """Move latent sites whose gradient is exactly zero at the default start off it.

    The default start is zero in the unconstrained space; for the weights of a network written
    as latent sites that is a symmetric saddle (every hidden unit the same, every gradient
    zero) that a gradient method never leaves. Those sites get a small random step instead,
    uniform in ±2 in the unconstrained space (the radius of Pyro's ``init_to_uniform``), from the
    fit's own seeded stream. Starts the user chose (``init_loc_fn``,
    ``pyro.param`` values) are never moved.
    """
    moved = False
    with torch.no_grad():
        for name, p, z in zip(obj.names, obj.params, zero):
            if z and name.startswith("AutoDelta."):
                p.add_(torch.empty_like(p).uniform_(-2.0, 2.0))
                moved = True
    if moved and collective is not None:
        collective.broadcast(obj.params)
    return moved


class _ModuleStarts:
    """Where each network's fit starts: its weights as they were before its first fit.

    ``pyro.module`` and :class:`~pyro.nn.PyroModule` weights are trained in place (that is how
    Pyro's modules work, and users read the estimate from the network). Without this the next
    identical call would start from the last estimate and give another answer, and
    ``compare`` would depend on the order of its methods. A weight tensor that still holds the
    estimate a fit left in it is reset to its start; one the user has changed since is used as
    it is. Entries die with their tensors (weak references).
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, torch.Tensor, torch.Tensor]] = {}

    def begin(self, params: list[torch.Tensor]) -> _StartsOfFit:
        starts = []
        with torch.no_grad():
            for p in params:
                entry = self._entries.get(id(p))
                if entry is not None and entry[0]() is p and p.shape == entry[2].shape and torch.equal(p, entry[2]):
                    p.copy_(entry[1])
                    starts.append(entry[1])
                else:
                    starts.append(p.detach().clone())
        return _StartsOfFit(self, params, starts)


@dataclass
class _StartsOfFit:
    registry: _ModuleStarts
    params: list[torch.Tensor]
    starts: list[torch.Tensor]

    def finish(self) -> None:
        """Remember the estimate left in each tensor (only tensors that outlive the fit's scope
        matter: module weights; the rest die with it)."""
        entries = self.registry._entries
        for p, start in zip(self.params, self.starts):
            key = id(p)

            def forget(ref: weakref.ref, key: int = key) -> None:
                if key in entries and entries[key][0] is ref:
                    del entries[key]

            entries[key] = (weakref.ref(p, forget), start, p.detach().clone())


_STARTS = _ModuleStarts()


class _Run:
    """One fit's optimisation: the first-order run (traced where it verifies), the Newton
    finish, and the verdict: converged, not converged with a named cause, or no optimum."""

    def __init__(
        self,
        obj: PointObjective,
        ev: Evaluator,
        settings: _Settings,
        structure: Any,
        collective: Collective | None,
        bar: tqdm,
    ):
        self.obj, self.ev, self.s, self.structure, self.collective, self.bar = (
            obj,
            ev,
            settings,
            structure,
            collective,
            bar,
        )
        self.size = sum(p.numel() for p in obj.params)
        self.recent: deque[torch.Tensor] = deque(maxlen=_RAY_MEMORY)

    # ------------------------------------------------------------------ driver
    def run(self) -> _Outcome:
        if self.s.optimizer == "lbfgs" and self.collective is None and nonsmooth.nonsmooth_sites(self.obj):
            return self._nonsmooth()
        if not self.s.jit:
            return self._finish(self._first_order())
        cuda = compiling.cuda_devices(self.obj.params)
        start, state = self.ev.snapshot(), compiling.get_rng_state(cuda)
        self.ev.compile()
        try:
            result = self._first_order()
            if not self.ev.trace_agrees():
                raise TraceMismatch
        except TraceMismatch:
            # A program whose Python decisions depend on parameter values traces to a graph
            # that is right only where it was traced. Start again, interpreted.
            self.ev.compiled = None
            self.ev.jit_error = "the trace stopped reproducing the program's loss during the fit"
            self.ev.restore(start)
            compiling.set_rng_state(state, cuda)
            self.ev.losses.clear()
            self.recent.clear()
            self.bar.reset()
            result = self._first_order()
        return self._finish(result)

    def _nonsmooth(self) -> _Outcome:
        """Laplace likelihoods and (under MAP) Laplace priors put kinks at the optimum, where
        L-BFGS and Newton stall: majorise–minimise with an exact active-set finish instead
        (:mod:`pyro_mle.nonsmooth`), judged by its first-order optimality certificate."""
        s, ev, obj = self.s, self.ev, self.obj
        result = nonsmooth.solve(
            obj, rtol=s.rtol, gtol=s.gtol, num_data=s.num_data, record=self._on_step, max_outer=s.num_steps
        )
        loss = float(ev.evaluate(len(ev.losses)))  # gradients at the estimate, for the zero-gradient check
        outcome = _Outcome(
            converged=result.converged,
            message=result.message,
            num_steps=result.num_steps,
            grad_norm=result.stationarity,
            zero_at_end=existence.zero_gradient(obj.params),
            names=obj.names,
        )
        # a first-order certificate does not prove that a minimum exists (a latent scale → 0)
        self._check_existence(outcome, loss, False)
        return outcome

    def _on_step(self, loss: float) -> None:
        self.ev.record(loss)
        if self.size <= _RAY_MAX_PARAMS:
            self.recent.append(self.ev.good)

    def _finishes(self) -> bool:
        """Whether a converged L-BFGS run is always followed by Newton steps."""
        return self.collective is None and self.size <= _NEWTON_ALWAYS

    def _first_order(self, lr: float | None = None, num_steps: int | None = None) -> OptimResult:
        s = self.s
        lr = s.lr if lr is None else lr
        num_steps = s.num_steps if num_steps is None else num_steps
        if s.optimizer == "lbfgs":
            # With a Newton finish to follow, L-BFGS need only bring the point near the optimum:
            # its last steps to full precision cost more than one Newton step, which converges
            # quadratically from there.
            rtol, gtol = (max(s.rtol, _NEAR[0]), max(s.gtol, _NEAR[1])) if self._finishes() else (s.rtol, s.gtol)
            return lbfgs(
                lambda probe: self.ev.evaluate(len(self.ev.losses), probe),
                self.obj.params,
                num_steps=num_steps,
                lr=lr,
                rtol=rtol,
                gtol=gtol,
                num_data=s.num_data,
                on_step=self._on_step,
            )
        return adam(
            lambda step: self.ev.evaluate(step),
            self.obj.params,
            num_steps=num_steps,
            lr=lr,
            rtol=s.rtol,
            gtol=s.gtol,
            num_data=s.num_data,
            stochastic=bool(self.structure.subsample),
            on_step=self.ev.record,
        )

    def _finish(self, result: OptimResult) -> _Outcome:
        if self.s.optimizer == "adam":
            return self._judge_adam(result)
        return self._judge_full_batch(result)

    # ------------------------------------------------------------------ full batch
    def _judge_full_batch(self, result: OptimResult) -> _Outcome:
        s, ev = self.s, self.ev
        converged, message, steps = result.converged, result.message, result.num_steps
        if result.rejected:
            message += (
                f" {result.rejected} line-search trial point(s) had a non-finite loss and were treated as too "
                "long a step."
            )
        newton_run = None
        # The finish runs after L-BFGS converged or stalled, not when it spent num_steps: that
        # budget is the caller's.
        spent = not result.converged and not result.stalled
        if (
            self.collective is None
            and not spent
            and (self.size <= _NEWTON_ALWAYS or (not converged and self.size <= _NEWTON_MAX))
        ):
            newton_run = self._newton()
            if newton_run is not None:
                steps += newton_run.num_steps
                if newton_run.num_steps or not converged:
                    converged = newton_run.converged
                    message = f"{message} Newton finish: {newton_run.message}" if newton_run.num_steps else message
        # the gradient at the estimate (left in .grad by the last evaluation), for the record and
        # the zero-gradient check
        loss = ev.losses[-1]
        grad_norm = relative_gradient(flat_grad(self.obj.params), self.obj.flat(), loss, s.num_data)
        outcome = _Outcome(
            converged=converged,
            message=message,
            num_steps=steps,
            grad_norm=grad_norm,
            zero_at_end=existence.zero_gradient(self.obj.params),
            names=self.obj.names,
        )
        if self.collective is None:
            # A Newton finish that ends on a positive definite, moderately conditioned Hessian
            # has found a strict minimum: it exists, and the tests for an estimate at infinity
            # (which cost a Jacobian and a linear programme) are skipped. Separation and a
            # density without bound both flatten the Hessian along their direction (condition
            # numbers of 1e17 were measured on separated iris and breast-cancer fits).
            # The curvature must also be of the loss's size: separated classes drive the whole
            # Hessian to 0 (1e-14 at a loss of 1e-14), however well conditioned what is left.
            x_size = max(float(self.obj.flat().abs().max()), 1.0) if self.size else 1.0
            certified = (
                newton_run is not None
                and newton_run.converged
                and newton_run.min_eigenvalue > 0
                and newton_run.condition < _WELL_CONDITIONED
                and newton_run.min_eigenvalue * x_size**2 >= 1e-6 * max(abs(loss), s.num_data)
            )
            self._check_existence(outcome, loss, certified)
        if not outcome.converged and not outcome.no_optimum:
            outcome.message = self._why_not(outcome.message, newton_run)
        return outcome

    def _value(self, x: torch.Tensor) -> float:
        self.obj.set_flat(x)
        try:
            with torch.no_grad():
                return float(self.obj()[0])
        except (ValueError, RuntimeError):
            return math.nan

    def _newton(self) -> Any:
        """Damped Newton steps from the current point; ``None`` (and the point unchanged) when
        they cannot run or leave the point no better than they found it."""
        obj, s = self.obj, self.s

        def value_and_grad(x: torch.Tensor) -> tuple[float, torch.Tensor]:
            try:
                with torch.enable_grad():
                    loss, grad = obj.value_and_grad(x)
                return float(loss), grad
            except (ValueError, RuntimeError):  # an invalid trial point: too long a step
                return math.inf, torch.zeros_like(x)

        def hessian(x: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                return obj.hessian(x)

        def converged(x: torch.Tensor, loss: float, grad: torch.Tensor) -> bool:
            return relative_gradient(grad, x, float(loss), s.num_data) <= s.gtol

        start = obj.flat()
        try:
            before = (self.ev.losses[-1], flat_grad(obj.params))  # L-BFGS left the gradient at start
            result = newton(
                value_and_grad,
                start,
                hessian=hessian,
                converged=converged,
                max_steps=_NEWTON_STEPS,
                max_params=_NEWTON_MAX,
                max_decrement=100 * torch.finfo(obj.params[0].dtype).eps,
                min_steps=1,
            )
        except (ValueError, RuntimeError, NotImplementedError):
            obj.set_flat(start)  # the program has no second derivative here (or too many parameters)
            return None
        if not result.converged and result.num_steps:
            # A float32 Hessian of an ill-conditioned problem can send a step that lowers the loss
            # by rounding alone far from the optimum: keep the finish only if it did not make the
            # gradient worse than it found it.
            worse = relative_gradient(result.grad, result.x, float(result.loss), s.num_data) > relative_gradient(
                before[1], start, before[0], s.num_data
            )
            if worse:
                obj.set_flat(start)
                _set_grads(obj.params, before[1])
                return None
        obj.set_flat(result.x)
        _set_grads(obj.params, result.grad)
        if result.num_steps:
            self.ev.record(float(result.loss))
        return result

    def _check_existence(self, outcome: _Outcome, loss: float, certified: bool) -> None:
        """Three signs that the objective has no minimum: a constrained parameter at the edge
        of its support; the loss flat or falling along the direction the iterates last moved in
        (logistic weights at 900, where the loss has underflowed to 0); and separated classes
        (:func:`~pyro_mle.existence.separation`: float32 stops on its tolerance while
        separated weights are still growing, and the loss can no longer show it)."""
        obj = self.obj
        x_hat = obj.flat()
        edge = existence.at_edge(obj.names, obj.params)
        # The ray test checks a claim of convergence; from a point that is merely unfinished the
        # loss keeps falling for a while along any descent direction.
        ray = outcome.converged and bool(self.recent) and not certified
        ray = ray and existence.runs_off(self._value, x_hat, x_hat - self.recent[0], loss)
        obj.set_flat(x_hat)
        separated = [] if ray or edge or certified else existence.separation(obj.trace, obj.params)
        if edge or ray or separated:
            outcome.converged, outcome.no_optimum = False, True
            discrete = bool(separated) or any(self._observed_discrete())
            outcome.message = existence.no_optimum_message(self.s.method, edge, ray or bool(separated), discrete)

    def _observed_discrete(self) -> list[bool]:
        with torch.no_grad():
            trace = self.obj.trace()
        return [
            bool(site["fn"].support.is_discrete)
            for site in trace.nodes.values()
            if site["type"] == "sample" and site["is_observed"] and hasattr(site["fn"], "support")
        ]

    def _why_not(self, message: str, newton_run: Any) -> str:
        hints = []
        if newton_run is not None and math.isfinite(newton_run.condition) and newton_run.condition > 1e12:
            hints.append(
                f"the problem is ill-conditioned (condition number of the Hessian {newton_run.condition:.1g}): "
                "standardise the inputs (centre and scale each column) or drop near-collinear ones"
            )
        elif newton_run is not None and newton_run.min_eigenvalue < 0:
            hints.append("the Hessian is indefinite at the end point (a saddle or a ridge): start elsewhere")
        if self.obj.params[0].dtype != torch.float64:
            hints.append(
                "in float32 the loss of a sum of many terms carries rounding of about 1e-7 of its size, which can "
                "hide the remaining slope from the line search: fit in float64 (x.double(), float64 parameters) to "
                "go further"
            )
        hints.append("raise num_steps, loosen rtol/gtol, or rescale the inputs")
        return f"{message} Fit.params holds the last iterate. Likely cause and remedy: {'; '.join(hints)}."

    # ------------------------------------------------------------------ Adam
    def _judge_adam(self, result: OptimResult) -> _Outcome:
        """Judge Adam's end (:meth:`_adam_verdict`). A subsampled fit that reached a plateau but
        not yet the full-data optimum is polished by L-BFGS on the full objective, each
        evaluation one sweep over the data in minibatch-sized chunks (an epoch's work, a
        minibatch's memory): averaged minibatch steps approach the optimum only as fast as the
        minibatch noise averages out, about 1/√(epochs) of a standard error, while a few
        full-gradient steps reach it. A run that spent its ``num_steps`` is reported as it is."""
        outcome = self._adam_verdict(result)
        if outcome.converged or not result.converged or not self.structure.subsample:
            return outcome
        s, ev, obj = self.s, self.ev, self.obj

        def evaluate(probe: bool) -> torch.Tensor | None:
            value, _ = obj.full_data_value_and_grad()
            if self.collective is not None:
                value = ev.reduce(value, not math.isfinite(value))[0]
            if not math.isfinite(value):
                if probe:
                    return None
                raise ev.diverged(len(ev.losses), None, value)
            return torch.tensor(value, dtype=obj.params[0].dtype)

        if self.collective is None and self.size <= _NEWTON_MAX:
            polish, how = self._newton_on_sweeps(), "Newton steps on the full data (IRLS-like; one sweep an evaluation)"
        else:
            polish = lbfgs(
                evaluate,
                obj.params,
                num_steps=_POLISH_STEPS,
                lr=1.0,
                rtol=default_tolerances(obj.params[0].dtype)[0],
                gtol=s.gtol,
                num_data=s.num_data,
                on_step=ev.record,
            )
            how = "L-BFGS on the full data (one sweep an evaluation)"
        final = self._adam_verdict(polish, polished=True)
        final.num_steps = result.num_steps + polish.num_steps
        short = outcome.message.split(" But ", 1)[-1].split(":", 1)[0]
        final.message = f"{result.message} {short}; polished by {how}: {final.message}"
        return final

    def _newton_on_sweeps(self) -> OptimResult:
        """Newton steps on the full objective, its value, gradient and Hessian each summed over
        one sweep of the data in minibatch-sized chunks: the way IRLS finishes a GLM, and immune
        to the ill-conditioning of raw covariates that stalls a first-order polish."""
        obj, s = self.obj, self.s

        def value_and_grad(x: torch.Tensor) -> tuple[float, torch.Tensor]:
            obj.set_flat(x)
            try:
                value, _ = obj.full_data_value_and_grad()
            except (ValueError, RuntimeError):
                return math.inf, torch.zeros_like(x)
            return value, obj.flat_grad()

        start = obj.flat()
        try:
            result = newton(
                value_and_grad,
                start,
                hessian=obj.full_data_hessian,
                converged=lambda x, loss, g: relative_gradient(g, x, float(loss), s.num_data) <= s.gtol,
                max_steps=_NEWTON_STEPS,
                max_params=_NEWTON_MAX,
                max_decrement=100 * torch.finfo(start.dtype).eps,
                min_steps=1,
            )
        except (ValueError, RuntimeError, NotImplementedError) as e:
            obj.set_flat(start)
            return OptimResult(False, 0, math.nan, True, 0, f"no Newton polish ({e})")
        obj.set_flat(result.x)
        self.ev.record(float(result.loss))
        grad_norm = relative_gradient(result.grad, result.x, float(result.loss), s.num_data)
        return OptimResult(result.converged, result.num_steps, grad_norm, not result.converged, 0, result.message)

    def _adam_verdict(self, result: OptimResult, polished: bool = False) -> _Outcome:
        r"""Judge an Adam run by the gradient of the **full** objective at its estimate.

        A subsampled fit's gradient is read in standard errors: with :math:`J` the diagonal of
        the empirical Fisher information (from the spread of the minibatch-chunk gradients of
        the same sweep), :math:`|g_j|/\sqrt{J_{jj}}` is, to first order, how many standard
        errors coordinate :math:`j` lies from the optimum (the score statistic). Converged when
        every coordinate is within 0.1 standard error, or meets the relative-gradient test.
        Without subsampling, the relative gradient at most ``max(gtol, 1e-4)``.
        """
        s, ev, obj = self.s, self.ev, self.obj
        if not polished:
            value, trace = ev.current_loss()  # the objective at the estimate, for losses[-1]
            if not math.isfinite(value):
                raise ev.diverged(result.num_steps, trace, value)
            ev.record(value)
        information = None
        if self.structure.subsample:
            full, information = obj.full_data_value_and_grad()
            if self.collective is not None:
                full = ev.reduce(full, not math.isfinite(full))[0]
                information = self._reduce_information(information)
            what = "full-data"
        else:
            full = float(ev.evaluate(result.num_steps))
            what = "full-batch"
        tol = max(s.gtol, _ADAM_GTOL)
        grad = flat_grad(obj.params)
        grad_norm = relative_gradient(grad, obj.flat(), full, s.num_data)
        at_optimum = grad_norm <= tol
        detail = f"the {what} relative gradient is {grad_norm:.2g} ({'<=' if at_optimum else '>'} {tol:g})"
        if information is not None and not at_optimum:
            z = grad.abs().to(torch.float64) / information.to(torch.float64).sqrt()
            small = grad.abs() * obj.flat().abs().clamp(min=1.0) / max(abs(full), s.num_data) <= tol
            z = torch.where(small, torch.zeros_like(z), z)
            worst = float(z.max()) if z.numel() else 0.0
            at_optimum = worst <= _ADAM_STANDARD_ERRORS
            detail = (
                f"the {what} gradient puts the estimate within {worst:.2g} standard errors of the optimum "
                f"(score statistic; {'<=' if at_optimum else '>'} {_ADAM_STANDARD_ERRORS:g})"
            )
        converged = (result.converged or polished) and at_optimum
        if polished:
            message = f"{result.message} At the estimate {detail}."
        elif converged:
            message = f"converged: {result.message} At the estimate {detail}."
        elif result.converged:
            message = (
                f"not converged: {result.message} But at the estimate {detail}: the minibatch noise hides the "
                "slope that remains. Fit.params holds the averaged iterate. Raise num_steps, lower lr, or use larger "
                "minibatches (subsample_size)."
            )
        else:
            message = (
                f"{result.message} At the estimate {detail}. Fit.params holds the last iterate. Raise num_steps or "
                "lr, or loosen rtol/gtol."
            )
        return _Outcome(
            converged=converged,
            message=message,
            num_steps=result.num_steps,
            grad_norm=grad_norm,
            zero_at_end=existence.zero_gradient(obj.params),
            names=obj.names,
        )

    def _reduce_information(self, information: torch.Tensor | None) -> torch.Tensor | None:
        """The whole data's information from each process's estimate of it: a process whose
        likelihood is scaled by 1/w contributes w² times its scaled estimate."""
        missing = information is None
        if self.collective.sum(1.0 if missing else 0.0) > 0:
            return None
        total = information.to(torch.float64) * self.ev.weight**2
        self.collective.sum_(total)
        return total


def _make_fit(
    obj: PointObjective,
    ev: Evaluator,
    settings: _Settings,
    seed: int | None,
    converged: bool,
    message: str,
    run: _Outcome | None,
) -> Fit:
    nll = obj.full_data_nll()
    if ev.collective is not None:  # each process swept its own rows
        nll = ev.collective.sum(nll)
    structure = obj.structure
    return Fit(
        params=obj.estimate(),
        losses=tuple(ev.losses),
        converged=converged,
        nll=nll,
        method=settings.method,
        optimizer=settings.optimizer,
        num_steps=run.num_steps if run is not None else max(len(ev.losses) - 1, 0),
        grad_norm=run.grad_norm if run is not None else math.nan,
        message=message,
        latent=structure.latent,
        observed=structure.observed,
        seed=seed,
        model=obj.model,
        args=tuple(obj.args),
        kwargs=dict(obj.kwargs),
    )


__all__ = [
    "Collective",
    "ConvergenceWarning",
    "Fit",
    "FitDivergedError",
    "FitInterrupted",
    "NoOptimumWarning",
    "Prediction",
    "UnusedParameterError",
    "ZeroGradientWarning",
    "fit",
    "load",
]
