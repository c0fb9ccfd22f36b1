r"""Point estimates of a Pyro program: maximum likelihood (MLE) and maximum a posteriori (MAP).

:func:`fit` only orchestrates the building blocks:

* :func:`pyro_mle.objective` (:mod:`pyro_mle.objective`): the program read as a function of
  its unconstrained parameters, :math:`-\log p(y\mid\theta)` or
  :math:`-\log p(y\mid\theta)-\log p(\theta)`;
* :mod:`pyro_mle.evaluation`: that function evaluated inside a run, with failures named and,
  for a data-parallel fit, summed over processes; :mod:`pyro_mle.compile` traces it;
* :mod:`pyro_mle.optim`: L-BFGS, Adam and a Newton finish, free of Pyro, and the stopping rule;
* :mod:`pyro_mle.nonsmooth`: the exact solver for absolute-error (Laplace) terms;
* :mod:`pyro_mle.starts`: where a fit starts, and whether every parameter can move from there;
* :mod:`pyro_mle.solver`: which of the optimisers run, in which order, and the verdict;
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

import contextlib
import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro.infer.autoguide import AutoDelta
from pyro.poutine.runtime import Message

from . import compile as compiling
from ._rng import rng_scope, spawn_seeds
from ._threads import threads_for, work_elements
from ._validation import validation
from .evaluation import Collective, Diverged, Evaluator
from .objective import METHODS, PointObjective, _inspect, _ScaleObserved, init_to_centre
from .optim.stopping import default_tolerances
from .progress import progress_bar
from .results import ConvergenceWarning, Fit, FitDivergedError, FitInterrupted, NoOptimumWarning
from .solver import Outcome, Settings, Solver
from .starts import MODULE_STARTS, break_symmetry, check_reaches_loss

OPTIMIZERS = ("lbfgs", "adam")
_NUM_STEPS = {"lbfgs": 1000, "adam": 5000}
_LR = {"lbfgs": 1.0, "adam": 0.01}
#: Adam runs at least this long trace their objective by default: tracing and checking the
#: trace cost a few evaluations and tens of milliseconds, and save a Python run of the
#: program at every step after that.
_JIT_MIN_STEPS = 200
#: argument elements below which a second fit of the same program traces it (see _use_trace)
_TRACE_REPAYS_BELOW = 1_000_000


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
    rows. With ``jit`` the objective is traced once with :func:`torch.jit.trace`
    (:mod:`pyro_mle.compile`), its argument tensors inputs of the trace, and used only if it
    reproduces the interpreted loss and gradient; it is checked again at the estimate, and a
    program whose Python decisions depend on parameter values is fitted again, interpreted.
    By default a trace is made for Adam runs of at least 200 steps, and for the second fit of
    the same program with arguments of the same shapes and fewer than 10⁶ elements (refits,
    cross-validation folds, bootstraps, :func:`~pyro_mle.compare`; above that the checks of a
    reused trace cost more than it saves): traces are kept in
    :data:`~pyro_mle.compile.TRACE_CACHE` (32 at most, :func:`~pyro_mle.clear_trace_cache`)
    and reused, after a check at the start, on new data of the same shapes. A trace the fit
    chooses by itself must reproduce the program bit for bit, so the same call gives the same
    estimate whether it ran traced or not. Threads: a fit whose evaluations touch fewer than
    4·10⁶ elements runs on one CPU thread (threads waiting for each other cost more than they
    gain there, many times more on a busy machine); the caller's setting is restored after.

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
    :param bool progress: report progress with the loss (:mod:`pyro_mle.progress`): a
        ``tqdm.auto`` bar on a terminal or in a notebook, a line every few seconds in a log;
        ``False``: silent. ``None`` (default) and ``True`` are the same.
    :param float rtol: relative loss-change tolerance (see Convergence).
    :param float gtol: relative-gradient tolerance (see Convergence).
    :param callable init_loc_fn: initial values of latent sites (see Start).
    :param bool jit: trace the objective with TorchScript (see Speed); ``None``: for Adam
        runs of at least 200 steps, where the one-off tracing cost pays, and for programs met
        before with arguments of the same shapes (the trace cache); ``False``: never.
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
    if seed is not None and (not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0):
        raise ValueError(f"{caller}(model): seed must be a non-negative integer or None; got {seed!r}.")
    # every process of a data-parallel fit draws its own minibatches
    stream = seed if collective is None or seed is None else spawn_seeds(seed, rank + 1)[rank]
    init = init_loc_fn or init_to_centre

    with rng_scope(stream), pyro.get_param_store().scope(), contextlib.ExitStack() as stack:
        elements, on_cuda = work_elements(args, kwargs)
        stack.enter_context(threads_for(elements, on_cuda))
        structure = _inspect(model, args, kwargs, init)
        if structure.subsample:  # each step reads only its minibatch
            fraction = min(b / n for n, b, *_ in structure.subsample.values())
            stack.enter_context(threads_for(*work_elements(args, kwargs, fraction)))
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
        starts = MODULE_STARTS.begin(obj.params)
        cache = None if collective is not None or jit is False else _cache_entry(model, method, args, kwargs, obj)
        dtype = torch.float64 if all(p.dtype == torch.float64 for p in obj.params) else torch.float32
        default_rtol, default_gtol = default_tolerances(dtype)
        if optimizer == "adam":
            default_rtol = 1e-4
        settings = Settings(
            method=method,
            optimizer=optimizer,
            num_steps=num_steps,
            lr=lr,
            rtol=default_rtol if rtol is None else float(rtol),
            gtol=default_gtol if gtol is None else float(gtol),
            num_data=num_data,
            jit=_use_trace(jit, optimizer, num_steps, cache, elements),
        )
        bar = progress_bar(num_steps, f"{method.upper()} ({optimizer})", progress)

        def on_loss(loss: float) -> None:
            if not bar.disable:
                bar.set_postfix(loss=f"{loss:.6g}", refresh=False)
                bar.update(1)

        ev = Evaluator(
            obj,
            method=method,
            optimizer=optimizer,
            lr=lr,
            weight=weight,
            collective=collective,
            on_loss=on_loss,
            cache=cache,
        )
        ev.exact = jit is None and not (optimizer == "adam" and num_steps >= _JIT_MIN_STEPS)

        def make(converged: bool, message: str, run: Outcome | None = None) -> Fit:
            return _make_fit(obj, ev, settings, seed, converged, message, run)

        try:
            with pyro.validation_enabled(False), validation(False):
                # Checks ran once in _inspect; inside the loop they would only slow every
                # evaluation, and invalid parameters show up as a non-finite loss instead.
                zero_at_start = check_reaches_loss(obj, method, caller, collective)
                if init_loc_fn is None and break_symmetry(obj, zero_at_start, collective):
                    zero_at_start = check_reaches_loss(obj, method, caller, collective)
                outcome = Solver(obj, ev, settings, structure, collective, bar).run()
                outcome.warn_zero_gradients(zero_at_start)
        except Diverged as d:
            ev.restore(d.good)
            result = make(False, d.message)
            starts.finish()
            raise FitDivergedError(d.message, result, d.step, d.sites) from d.cause
        except BaseException as error:
            if not isinstance(error, KeyboardInterrupt):
                starts.abandon()  # an error of the program: no estimate, the tensors as they were
                raise
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
def _cache_entry(model: Callable, method: str, args: tuple, kwargs: dict, obj: PointObjective) -> tuple | None:
    """``(key, model, data)`` of this fit in :data:`~pyro_mle.compile.TRACE_CACHE`, or ``None``
    when its arguments cannot be keyed (a tensor passed twice, an unhashable value)."""
    params = set(map(id, obj.params))
    data = compiling.data_tensors(args, kwargs)
    if data is None or any(id(t) in params for t in data):
        return None
    key = compiling.TRACE_CACHE.key(model, method, args, kwargs, list(obj.names), obj.params, list(obj.constraints))
    return None if key is None else (key, model, data)


def _use_trace(jit: bool | None, optimizer: str, num_steps: int, cache: tuple | None, elements: int) -> bool:
    """Whether the fit runs on a traced objective: as asked, or by default for a long Adam run
    (the trace pays within it) and for a program met before with arguments of the same shapes
    (the trace is cached, see :class:`~pyro_mle.compile.TraceCache`) whose evaluations are
    small enough that Pyro's effect handlers are a good part of their cost: a reused trace is
    checked against the program at the start and the end, two evaluations that a dozen
    faster ones repay below about 10⁶ elements and not above (least squares on 10⁵ x 20 rows:
    70 ms a repeated fit with the trace, 60 without)."""
    if jit is not None:
        return bool(jit)
    if optimizer == "adam" and num_steps >= _JIT_MIN_STEPS:
        return True
    return cache is not None and elements < _TRACE_REPAYS_BELOW and compiling.TRACE_CACHE.seen(cache[0], cache[1])


def _choice(what: str, value: object, valid: tuple[str, ...], caller: str = "fit") -> str:
    if not isinstance(value, str) or value.lower() not in valid:
        raise ValueError(f"{caller}(model): {what} must be one of {list(valid)}; got {value!r}.")
    return value.lower()


def _make_fit(
    obj: PointObjective,
    ev: Evaluator,
    settings: Settings,
    seed: int | None,
    converged: bool,
    message: str,
    run: Outcome | None,
) -> Fit:
    if obj.compiled is not None and settings.method == "mle" and ev.collective is None and not obj.structure.subsample:
        # the MLE objective over the full batch is the NLL itself: one run of the trace
        # instead of a sweep through the program's handlers
        with torch.no_grad():
            nll = float(obj.loss())
    else:
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


__all__ = ["Collective", "fit"]
