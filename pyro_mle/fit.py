r"""Point estimates of a Pyro program: maximum likelihood (MLE) and maximum a posteriori (MAP).

:func:`fit` reads an ordinary Pyro program as an objective and minimises it:

* ``method="mle"``: :math:`-\log p(y \mid \theta)`. The prior of every latent site is masked
  by :func:`~pyro_mle.handlers.likelihood_only`, so the classical losses come out exactly:
  least squares for a Normal likelihood with fixed scale, cross-entropy for Bernoulli and
  Categorical, and so on.
* ``method="map"``: :math:`-\log p(y \mid \theta) - \log p(\theta)`.

Latent sites are estimated through an :class:`~pyro.infer.autoguide.AutoDelta` guide (a point
mass per site) and ``pyro.param``, ``pyro.module`` and :class:`~pyro.nn.PyroModule`
parameters directly. The objective is the negative ELBO of that guide (what
:class:`~pyro.infer.Trace_ELBO` computes): one trace of the guide, one of the model replayed on
it, summed log-densities. A point mass has zero entropy, so nothing else enters.

The same fit by hand, with the building blocks::

    guide = AutoDelta(model)
    svi = SVI(pyro_mle.handlers.likelihood_only(model), guide, Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(5000):
        svi.step(x, y)
"""

from __future__ import annotations

import itertools
import math
import operator
import os
import pickle
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import pyro
import pyro.distributions
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.autoguide import AutoDelta
from pyro.infer.autoguide.initialization import init_to_median
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_factor, site_is_subsample
from torch.optim.adam import adam as adam_update
from tqdm import tqdm

from ._validation import check_finite, describe_rows, validation
from .handlers import likelihood_only

METHODS = ("mle", "map")
OPTIMIZERS = ("lbfgs", "adam")

#: Default stopping tolerances ``(rtol, gtol)`` by floating type of the parameters. ``rtol``
#: bounds the relative change of the loss between iterates, with scipy L-BFGS-B's
#: denominator max(|f|, |f'|, 1); ``gtol`` bounds the largest entry of the gradient of the
#: loss divided by the number of observed data points, i.e. of the mean loss per example
#: (scikit-learn's convention for ``tol``). float32 sums of thousands of terms carry about
#: 1e-7 relative error, so its tolerances sit above that floor.
_TOLERANCES = {torch.float64: (1e-10, 1e-7), torch.float32: (1e-6, 1e-4)}
_NUM_STEPS = {"lbfgs": 1000, "adam": 5000}
_LR = {"lbfgs": 1.0, "adam": 0.01}
#: L-BFGS memory: scipy keeps 10 pairs, torch 100; 20 is plenty for the problems here and
#: keeps the memory at 40 copies of the parameters for large networks.
_HISTORY_SIZE = 20
_MAX_LINE_SEARCH = 25
_FORMAT, _FORMAT_VERSION = "pyro_mle.Fit", 1
#: Adam runs at least this long trace their objective by default: tracing and checking the
#: trace cost a few evaluations and tens of milliseconds, and save a Python run of the
#: program at every step after that.
_JIT_MIN_STEPS = 200


class Collective(Protocol):
    """What a data-parallel fit needs from a communication backend (implemented with
    :mod:`torch.distributed` in :mod:`pyro_mle.distributed`)."""

    def sum(self, value: float) -> float:
        """The sum of ``value`` over all processes."""
        ...

    def sum_(self, tensor: torch.Tensor) -> None:
        """Replace ``tensor`` by its elementwise sum over all processes, in place."""
        ...

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite every process's ``tensors`` with process 0's, in place."""
        ...


class ConvergenceWarning(UserWarning):
    """A fit stopped before its convergence criterion held; ``Fit.converged`` is ``False``."""


class FitDivergedError(FloatingPointError):
    """The loss of a fit became NaN or infinite at an iterate.

    Attributes:
      * ``fit``: a :class:`Fit` at the last parameters whose loss was finite (the initial
        ones when the very first loss is not finite), with ``converged=False``.
      * ``step``: the step at which the loss broke (0: the initial parameters).
      * ``sites``: names of the sample sites whose log-prob was not finite there.
    """

    def __init__(self, message: str, fit: Fit, step: int, sites: tuple[str, ...]):
        super().__init__(message)
        self.fit = fit
        self.step = step
        self.sites = sites


@dataclass(frozen=True, eq=False)
class Prediction:
    """Draws of every observed site from the likelihood at a point estimate.

    Fields:
      * ``draws``: site name → tensor of shape ``(num_samples, *site_shape)``.
      * ``mean``: site name → the mean of the site's distribution at the estimate, exact
        (``distribution.mean``); where the family has no mean (Categorical labels give NaN,
        as in torch) use ``distributions`` instead, e.g. ``.probs``. Where torch does not
        implement a mean, the average of the draws.
      * ``distributions``: site name → the :mod:`pyro.distributions` object at the estimate.
    """

    draws: Mapping[str, torch.Tensor]
    mean: Mapping[str, torch.Tensor]
    distributions: Mapping[str, Any]


@dataclass(frozen=True, eq=False)
class Fit:
    r"""The result of :func:`fit`: a point estimate of a Pyro program and how it was reached.

    Fields:
      * ``params``: name → point estimate in the **constrained** space (a positive scale is
        positive), for every latent site (by site name) and every ``pyro.param`` and module
        parameter the model uses (by param-store name: ``"net$$$0.weight"`` for
        ``pyro.module("net", ...)``, ``"0.weight"`` for a top-level :class:`~pyro.nn.PyroModule`).
      * ``losses``: the objective after each update, ``losses[0]`` at the initial parameters:
        :math:`-\log p(y\mid\theta)` for MLE, :math:`-\log p(y\mid\theta)-\log p(\theta)` for
        MAP, summed over examples (a minibatch estimate scaled to the full data when the model
        subsamples).
      * ``converged``: whether the stopping criterion held (see :func:`fit`).
      * ``nll``: :math:`-\log p(y\mid\hat\theta)` summed over every example of every observed
        site, the full data even when the model subsamples; comparable to the classical loss
        with its constants (least squares: :math:`\sum(y-\mu)^2/2\sigma^2+N\log\sigma\sqrt{2\pi}`).
      * ``method``, ``optimizer``: what was run (``"mle"``/``"map"``, ``"lbfgs"``/``"adam"``).
      * ``num_steps``: optimizer updates taken.
      * ``grad_norm``: largest entry of the gradient of the objective per observed data point,
        at the end (for Adam, of the gradient averaged over the last window of steps).
      * ``message``: why the fit stopped, in words.
      * ``latent``: names in ``params`` that are latent sample sites (the rest are params).
      * ``observed``: names of the observed sites.
      * ``seed``: the random seed of the fit (``None``: not seeded).
      * ``model``: the Pyro program, for :meth:`predict`; ``None`` after :func:`load` unless
        given. Not saved.
      * ``args``, ``kwargs``: the arguments the program was fitted with (the data), for
        :func:`pyro_mle.to_datatree`. Not saved.
    """

    params: Mapping[str, torch.Tensor]
    losses: tuple[float, ...]
    converged: bool
    nll: float
    method: str
    optimizer: str
    num_steps: int
    grad_norm: float
    message: str
    latent: tuple[str, ...]
    observed: tuple[str, ...]
    seed: int | None
    model: Callable[..., Any] | None = field(default=None, repr=False)
    args: tuple = field(default=(), repr=False)
    kwargs: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        object.__setattr__(self, "losses", tuple(float(v) for v in self.losses))

    @property
    def loss(self) -> float:
        """The objective at the estimate (``losses[-1]``; NaN when the very first loss broke)."""
        return self.losses[-1] if self.losses else math.nan

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k!r}: {tuple(v.shape)}" for k, v in self.params.items())
        return (
            f"Fit(method={self.method!r}, optimizer={self.optimizer!r}, converged={self.converged}, "
            f"num_steps={self.num_steps}, loss={self.loss:.6g}, nll={self.nll:.6g}, params={{{shapes}}})"
        )

    def predict(
        self,
        *args: Any,
        num_samples: int = 100,
        model: Callable[..., Any] | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> Prediction:
        """Draw every observed site from its likelihood at the estimate.

        Runs the model once with ``*args, **kwargs`` (new inputs, and ``y=None`` or the data,
        as the model takes them), latent sites fixed at the estimate and every parameter
        replaced by its estimate; each observed site's distribution is then sampled
        ``num_samples`` times. A site whose distribution depends on another observed site's
        value (an autoregressive model) is drawn given the value in that run: the data when
        passed, else one simulated draw; use :class:`pyro.infer.Predictive` for joint
        simulation. A model that subsamples draws a minibatch here too: pass arguments that
        turn subsampling off to predict every row.

        Modules registered with ``pyro.module`` get the estimate loaded into their weights
        (that is how ``pyro.module`` works); :class:`~pyro.nn.PyroModule` networks are left as
        they are. The global param store is not touched.

        :param int num_samples: draws per site.
        :param callable model: the program that was fitted; needed after :func:`load`.
        :param int seed: seed for the draws (default: the global random state).
        """
        model = model if model is not None else self.model
        if model is None:
            raise ValueError(
                "Fit.predict: this Fit has no model (it was loaded from a file, which stores only the "
                "estimate). Pass the program that was fitted: fit.predict(x, model=model), or "
                "pyro_mle.load(path, model=model)."
            )
        if int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"Fit.predict: num_samples must be a positive integer; got {num_samples!r}.")
        if seed is not None:
            pyro.set_rng_seed(seed)
        latent = {k: self.params[k] for k in self.latent}
        fixed = {k: v for k, v in self.params.items() if k not in latent}
        with pyro.get_param_store().scope(), torch.no_grad():
            conditioned = _FixParams(fixed)(poutine.condition(model, data=latent))
            trace = poutine.trace(conditioned).get_trace(*args, **kwargs)
            draws: dict[str, torch.Tensor] = {}
            means: dict[str, torch.Tensor] = {}
            dists: dict[str, Any] = {}
            for name in self.observed:
                site = trace.nodes.get(name)
                if site is None or site["type"] != "sample" or site_is_factor(site):
                    continue
                d = site["fn"]
                draws[name] = d.sample((int(num_samples),))
                try:
                    means[name] = d.mean
                except NotImplementedError:
                    means[name] = draws[name].to(torch.get_default_dtype()).mean(0)
                dists[name] = d
        if not draws:
            raise ValueError(
                f"Fit.predict: none of the observed sites {list(self.observed)} ran with these "
                "arguments. Call predict with the arguments the model takes (the same as fit's)."
            )
        return Prediction(MappingProxyType(draws), MappingProxyType(means), MappingProxyType(dists))

    def save(self, path: str | os.PathLike) -> None:
        """Write the fit to ``path`` with :func:`torch.save`: parameters as tensors, the loss
        history, flags and names; never the model. Read it back with :func:`load`."""
        torch.save(
            {
                "format": _FORMAT,
                "version": _FORMAT_VERSION,
                "params": {k: v.detach().cpu() for k, v in self.params.items()},
                "losses": list(self.losses),
                "converged": bool(self.converged),
                "nll": float(self.nll),
                "method": self.method,
                "optimizer": self.optimizer,
                "num_steps": int(self.num_steps),
                "grad_norm": float(self.grad_norm),
                "message": self.message,
                "latent": list(self.latent),
                "observed": list(self.observed),
                "seed": None if self.seed is None else int(self.seed),
            },
            path,
        )


def load(path: str | os.PathLike, model: Callable[..., Any] | None = None) -> Fit:
    """Read a :class:`Fit` written by :meth:`Fit.save`.

    The file holds only tensors and plain values (read with ``weights_only=True``, so no code
    runs). :meth:`Fit.predict` needs the program: pass it here or to ``predict(model=...)``.
    """
    try:
        payload = torch.load(path, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"load({str(path)!r}): not a file written by Fit.save ({_first_line(e)})") from e
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"load({str(path)!r}): not a file written by Fit.save (no {_FORMAT!r} header).")
    if payload.get("version") != _FORMAT_VERSION:
        raise ValueError(
            f"load({str(path)!r}): file format version {payload.get('version')!r}; this pyro_mle reads "
            f"version {_FORMAT_VERSION}. Refit, or load it with the pyro_mle version that wrote it."
        )
    return Fit(
        params=payload["params"],
        losses=tuple(payload["losses"]),
        converged=payload["converged"],
        nll=payload["nll"],
        method=payload["method"],
        optimizer=payload["optimizer"],
        num_steps=payload["num_steps"],
        grad_norm=payload["grad_norm"],
        message=payload["message"],
        latent=tuple(payload["latent"]),
        observed=tuple(payload["observed"]),
        seed=payload["seed"],
        model=model,
    )


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
    init_loc_fn: Callable[[Message], torch.Tensor] = init_to_median,
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
      * ``"adam"`` (default when a ``pyro.plate(..., subsample_size=...)`` subsamples):
        :class:`torch.optim.Adam`, learning rate ``lr`` (0.01) decayed geometrically to
        ``lr/10`` over ``num_steps``.

    Stopping: L-BFGS stops when the relative change of the loss over one step is at most
    ``rtol`` **and** the largest gradient entry per observed data point is at most ``gtol``
    (defaults by dtype: 1e-10 and 1e-7 for float64 parameters, 1e-6 and 1e-4 for float32);
    when its line search can no longer lower the loss it stops, converged only if the
    gradient test holds. Adam's losses and gradients are noisy, so it compares windows of
    ``num_steps // 10`` steps (10 to 500): converged when the mean loss of a window differs
    from the previous window's by at most ``rtol`` (relative; default 1e-4) or one standard
    error, and the window-averaged gradient is within ``gtol`` per data point or one standard
    error of zero. For a subsampled model the estimate is then the average of the iterates
    over those two windows (Polyak-Ruppert averaging), which removes the minibatch jitter of
    the last iterate. Reaching ``num_steps`` (1000 for L-BFGS, 5000 for Adam) first sets
    ``converged=False`` and warns (:class:`ConvergenceWarning`); the estimate is then the
    last iterate.

    Checks before any optimisation: the model has an observed site; every observed value has
    exactly the shape of its distribution (``batch_shape + event_shape``; ``(N,)`` against
    ``(N, 1)`` would broadcast to an N×N table) and is finite; latent sites are continuous.
    A loss that turns NaN or infinite at an iterate raises :class:`FitDivergedError`, naming
    the step and the sites whose log-prob broke, with the last finite estimate in ``err.fit``.
    For L-BFGS a non-finite loss at a line-search *trial point* only tells the search that the
    step was too long (it backs off; ``Fit.message`` counts such points).

    Parameters and randomness: the fit runs in a fresh scope of the global param store
    (:meth:`~pyro.params.param_store.ParamStoreDict.scope`), which is restored afterwards:
    bare ``pyro.param`` values and guide locations live only in ``Fit.params``, while
    ``pyro.module`` and :class:`~pyro.nn.PyroModule` networks are trained in place (their
    weights hold the estimate after the fit). ``pyro.set_rng_seed(seed)`` seeds the global
    generators (torch, numpy, random) first, so the fit is reproducible.

    Data types: nothing is cast; the fit runs in the dtype of the model's parameters. Give
    float64 data and float64 initial values (``torch.zeros(d, dtype=x.dtype)``) to recover
    closed-form answers to 1e-6 and beyond; float32 stops near 1e-4 (see Stopping).

    Speed and large data: a Normal observed site whose scale is one value for every element
    (a fixed scale, or one latent scale) is summed with a single fused kernel (``mse_loss``:
    least squares is its negative log-likelihood) instead of element by element; plates that
    do not subsample reuse their index tensor. A plate that subsamples B ≤ N/100 of its N rows
    draws each minibatch in O(B) time and memory (B indices uniformly at random with
    replacement, sorted) instead of Pyro's O(N) ``randperm``, so data memory-mapped from disk
    (:class:`pyro_mle.data.MemoryMappedRows`) can have any number of rows; the N/B scale and
    the unbiasedness of the minibatch objective are unchanged. With ``jit`` (default: for Adam
    runs of at least 200 steps) the objective is traced once with :func:`torch.jit.trace` as a
    function of the parameters, which removes the Python cost of running the program at every
    step. The trace is used only if it reproduces the interpreted loss and gradient at the
    initial parameters under two random states (so a minibatch is drawn anew, not frozen),
    and it is checked again at the estimate: a program whose Python decisions depend on
    parameter values (``if float(w) > 0``) fails that check and is fitted again, interpreted.

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
    :param int seed: random seed; ``None`` leaves the global generators as they are.
    :param bool progress: show a tqdm bar with the loss; ``None``: when stderr is a terminal.
    :param float rtol: relative loss-change tolerance (see Stopping).
    :param float gtol: gradient tolerance per observed data point (see Stopping).
    :param callable init_loc_fn: initial values of latent sites, as for
        :class:`~pyro.infer.autoguide.AutoDelta` (default: the median of the prior).
    :param bool jit: trace the objective with TorchScript (see Speed); ``None``: for Adam
        runs of at least 200 steps, where the one-off tracing cost pays.
    :param kwargs: keyword arguments of the model.
    :returns: a :class:`Fit`.
    :raises FitDivergedError: when the loss becomes NaN or infinite.
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
    init_loc_fn: Callable[[Message], torch.Tensor],
    jit: bool | None,
    collective: Collective | None = None,
    seed_offset: int = 0,
    caller: str = "fit",
) -> Fit:
    """:func:`fit`, and with ``collective`` the data-parallel fit of
    :func:`pyro_mle.distributed.fit_distributed`: this process holds a share ``w`` of the
    observed data; its observed sites are scaled by ``1/w`` so that its objective is an
    estimate of the whole objective (priors counted once), and the objectives and gradients
    of all processes are averaged with weights ``w`` (a plain average for equal shards, as
    DistributedDataParallel does). Every decision of the optimiser is taken on averaged values,
    so all processes take the same steps and stop together."""
    method = _choice("method", method, METHODS, caller)
    if optimizer is not None:
        optimizer = _choice("optimizer", optimizer, OPTIMIZERS, caller)
    if num_steps is not None and (int(num_steps) != num_steps or num_steps < 1):
        raise ValueError(f"{caller}(model): num_steps must be a positive integer; got {num_steps!r}.")
    for name, value in (("lr", lr), ("rtol", rtol), ("gtol", gtol)):
        if value is not None and not (isinstance(value, (int, float)) and 0 < value < math.inf):
            raise ValueError(f"{caller}(model): {name} must be a positive number; got {value!r}.")
    if progress is None:
        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())

    if seed is not None:
        pyro.set_rng_seed(seed + seed_offset)
    with pyro.get_param_store().scope():
        structure = _inspect(model, args, kwargs)
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
        num_data, weight, fitted = structure.num_data, 1.0, model
        if collective is not None:
            num_data = collective.sum(structure.num_data)
            weight = structure.num_data / num_data
            fitted = _ScaleObserved(1.0 / weight)(model)

        guide = AutoDelta(model, init_loc_fn=init_loc_fn) if structure.latent else None
        objective = _Objective(likelihood_only(fitted) if method == "mle" else fitted, guide, args, kwargs)
        store = pyro.get_param_store()
        objective()  # creates every parameter, the guide's point masses included
        params = [p for _, p in store.named_parameters()]
        if not params:
            raise ValueError(
                f"{caller}(model): nothing to fit: the model has no latent sample site and no pyro.param or "
                "module parameter, so its likelihood has no free parameter."
            )
        if collective is not None:
            collective.broadcast(params)  # every process starts from process 0's initial values
        dtype = torch.float64 if all(p.dtype == torch.float64 for p in params) else torch.float32
        default_rtol, default_gtol = _TOLERANCES[dtype]
        if optimizer == "adam":
            default_rtol = 1e-4
        run = _Run(
            objective=objective,
            params=params,
            method=method,
            optimizer=optimizer,
            num_steps=num_steps,
            lr=lr,
            rtol=default_rtol if rtol is None else float(rtol),
            gtol=default_gtol if gtol is None else float(gtol),
            num_data=num_data,
            stochastic=bool(structure.subsample),
            jit=(optimizer == "adam" and num_steps >= _JIT_MIN_STEPS) if jit is None else bool(jit),
            weight=weight,
            collective=collective,
        )
        bar = tqdm(
            total=num_steps,
            desc=f"{method.upper()} ({optimizer})",
            disable=not progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        try:
            with pyro.validation_enabled(False), validation(False):
                # Checks ran once in _inspect; inside the loop they would only slow every
                # evaluation, and invalid parameters show up as a non-finite loss instead.
                run.optimise(bar)
        except _Diverged as d:
            run.restore(d.good)
            result = _make_fit(run, structure, model, guide, args, kwargs, seed, converged=False, message=d.message)
            raise FitDivergedError(d.message, result, d.step, d.sites) from d.cause
        finally:
            bar.close()
        result = _make_fit(
            run, structure, model, guide, args, kwargs, seed, converged=run.converged, message=run.message
        )
    if not result.converged:
        warnings.warn(f"{caller}(model): {result.message}", ConvergenceWarning, stacklevel=3)
    return result


# ---------------------------------------------------------------------------- internals
def _choice(what: str, value: object, valid: tuple[str, ...], caller: str = "fit") -> str:
    if not isinstance(value, str) or value.lower() not in valid:
        raise ValueError(f"{caller}(model): {what} must be one of {list(valid)}; got {value!r}.")
    return value.lower()


@dataclass(frozen=True)
class _Structure:
    """What one trace of the model says about it, read before any optimisation."""

    order: tuple[str, ...]  # latent sites and params, in the order the model meets them
    latent: tuple[str, ...]
    params: tuple[str, ...]
    observed: tuple[str, ...]
    #: subsampling plate → (size, subsample_size, device)
    subsample: Mapping[str, tuple[int, int, Any]]
    #: observed data points at full scale (examples summed over observed sites)
    num_data: float


def _inspect(model: Callable, args: tuple, kwargs: dict) -> _Structure:
    """Trace the model once, with validation on, and refuse what cannot be fitted."""
    with pyro.validation_enabled(True), validation(True), _PlateIndices():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    order, latent, params, observed = [], [], [], []
    subsample: dict[str, tuple[int, int, Any]] = {}
    num_data = 0.0
    for name, site in trace.nodes.items():
        if site["type"] == "param":
            params.append(name)
            order.append(name)
            continue
        if site["type"] != "sample" or site["infer"].get("_deterministic"):
            continue
        if site_is_subsample(site):
            fn = site["fn"]
            if fn.subsample_size is not None and fn.subsample_size < fn.size:
                subsample[name] = (int(fn.size), int(fn.subsample_size), fn.device)
        elif site["is_observed"]:
            observed.append(name)
            num_data += _check_observed(name, site)
        else:
            _check_latent(name, site)
            latent.append(name)
            order.append(name)
    if not observed:
        found = f"Its sample sites are all latent: {latent}. " if latent else ""
        raise ValueError(
            "fit(model): the model has no observed site, so there is no likelihood to fit. "
            f"{found}Pass the targets as obs= to their sample statement (likelihood heads: "
            "Normal(scale=1.0)('y', outputs, obs=y); or pyro.sample('y', dist.Normal(mu, 1.0), obs=y)); "
            "if the model takes y as an argument, check that fit(model, x, y) passes it."
        )
    return _Structure(
        tuple(order), tuple(latent), tuple(params), tuple(observed), MappingProxyType(subsample), max(num_data, 1.0)
    )


def _check_observed(name: str, site: Message) -> float:
    """Shape and finiteness of one observed site; returns its number of data points."""
    fn = site["fn"]
    n = float(math.prod(fn.batch_shape))
    for frame in site["cond_indep_stack"]:
        if frame.full_size and frame.size and frame.size > 0 and frame.full_size != frame.size:
            n *= frame.full_size / frame.size
    if site_is_factor(site):
        return n
    value = site["value"] if isinstance(site["value"], torch.Tensor) else torch.as_tensor(site["value"])
    batch, event = tuple(fn.batch_shape), tuple(fn.event_shape)
    expected, got = batch + event, tuple(value.shape)
    if got != expected:
        raise ValueError(_shape_message(name, got, batch, event))
    if value.is_floating_point():
        check_finite(
            f"fit(model): observed site {name!r}: the data",
            value,
            len(event),
            "Drop or impute the rows with NaN/inf before fitting.",
        )
    return n


def _shape_message(name: str, got: tuple[int, ...], batch: tuple[int, ...], event: tuple[int, ...]) -> str:
    expected = batch + event
    try:
        table = tuple(torch.broadcast_shapes(torch.Size(got), torch.Size(expected)))
    except RuntimeError:
        table = None
    if len(got) == len(expected) + 1 and got[-1] == 1 and got[:-1] == expected:
        fix = (
            f"the data carry a trailing dimension of size 1: pass y.squeeze(-1) (shape {expected}), "
            "the classic (N, 1) against (N,) mistake"
        )
    elif len(expected) == len(got) + 1 and expected[-1] == 1 and expected[:-1] == got:
        fix = (
            "the distribution's parameters carry a trailing dimension of size 1 (outputs of shape (N, 1)?): "
            "squeeze them (mu.squeeze(-1)), or pass y.unsqueeze(-1)"
        )
    else:
        fix = f"reshape the data to {expected}, or the distribution's parameters to batch shape {got}"
    silent = f"; log_prob would silently broadcast them to shape {table}" if table not in (None, expected) else ""
    return (
        f"fit(model): observed site {name!r}: the data have shape {got} but the distribution has "
        f"batch_shape {batch} + event_shape {event} = {expected}; they must match exactly{silent}. "
        f"Fix: {fix}."
    )


def _check_latent(name: str, site: Message) -> None:
    fn = site["fn"]
    if fn.support.is_discrete:
        raise ValueError(
            f"fit(model): latent site {name!r} is discrete ({type(fn).__name__}, support {fn.support}); "
            "a point estimate by gradient needs continuous latent sites. Observe it (obs=...), sum it "
            "out in the likelihood (a mixture distribution), or make it continuous."
        )


def _log_prob_terms(trace: Trace, elementwise: bool = False) -> dict[str, torch.Tensor]:
    """Scaled, masked log-density of each sample site that enters the objective.

    Sites masked with ``False`` (every latent site under ``likelihood_only``) are skipped
    without computing their log-prob; plate subsample sites and ``pyro.deterministic`` sites
    carry no density.
    """
    terms = {}
    for name, site in trace.nodes.items():
        if (
            site["type"] != "sample"
            or site["mask"] is False
            or site_is_subsample(site)
            or site["infer"].get("_deterministic")
        ):
            continue
        summed = None if elementwise else _fused_sum_log_prob(site)
        if summed is not None:
            terms[name] = summed
            continue
        lp = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
        lp = scale_and_mask(lp, site["scale"], site["mask"])
        terms[name] = lp if elementwise else lp.sum()
    return terms


_NORMALS = (torch.distributions.Normal, pyro.distributions.Normal)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _fused_sum_log_prob(site: Message) -> torch.Tensor | None:
    r"""The summed, scaled log-density of a Normal site whose scale is one value, or ``None``.

    :math:`\sum_i \log N(y_i\mid\mu_i,\sigma) = -\sum_i (y_i-\mu_i)^2/2\sigma^2 - n\log\sigma\sqrt{2\pi}`:
    the sum of squares is one fused ``mse_loss`` kernel (forward and backward), where
    ``Normal.log_prob`` makes about six elementwise passes over the data and ``log`` of the
    broadcast scale; for large data that is most of the time of a step. The scale counts as
    one value when every element of the broadcast tensor is the same memory (all strides
    zero: a number, or one latent scale). Masked sites and any other family return ``None``
    and take the elementwise path.
    """
    fn, value = site["fn"], site["value"]
    if type(fn) not in _NORMALS or site["args"] or site["kwargs"] or not isinstance(value, torch.Tensor):
        return None
    weight = site["scale"]  # a plate's N/B, poutine.scale; per-element weights take the other path
    if not (site["mask"] is None or site["mask"] is True) or (isinstance(weight, torch.Tensor) and weight.numel() != 1):
        return None
    loc, scale = fn.loc, fn.scale
    if value.shape != loc.shape or value.dtype != loc.dtype or any(st != 0 for st in scale.stride()):
        return None
    s = scale[(0,) * scale.dim()]
    n = value.numel()
    squares = F.mse_loss(loc, value, reduction="sum")
    if not s.requires_grad and not (isinstance(weight, torch.Tensor) and weight.requires_grad):
        # a fixed scale: fold the constants in Python, two scalar operations on the sum instead
        # of eight (they count when steps take tens of microseconds)
        sigma, weight = float(s), float(weight)
        return squares * (-0.5 * weight / (sigma * sigma)) - weight * n * (math.log(sigma) + _LOG_SQRT_2PI)
    lp = -0.5 * squares / (s * s) - n * (torch.log(s) + _LOG_SQRT_2PI)
    return scale_and_mask(lp, weight, None)


class _Objective:
    """Negative ELBO of a point-mass guide: minus the log-density of the model replayed on it."""

    def __init__(self, model: Callable, guide: Callable | None, args: tuple, kwargs: dict):
        self.model, self.guide, self.args, self.kwargs = model, guide, args, kwargs
        self.indices = _PlateIndices()

    def trace(self) -> Trace:
        with self.indices:
            if self.guide is None:
                return poutine.trace(self.model).get_trace(*self.args, **self.kwargs)
            guide_trace = poutine.trace(self.guide).get_trace(*self.args, **self.kwargs)
            replayed = poutine.replay(self.model, trace=guide_trace)
            return poutine.trace(replayed).get_trace(*self.args, **self.kwargs)

    def __call__(self) -> tuple[torch.Tensor, Trace]:
        trace = self.trace()
        terms = list(_log_prob_terms(trace).values())
        total = terms[0] if terms else torch.zeros(())
        for term in terms[1:]:
            total = total + term
        return -total, trace


class _FixParams(Messenger):
    """Every ``pyro.param`` named in ``values`` returns that value (full param-store names,
    unlike ``poutine.substitute``, which strips the ``pyro.module`` prefix)."""

    def __init__(self, values: Mapping[str, torch.Tensor]):
        super().__init__()
        self.values = values

    def _pyro_param(self, msg: Message) -> None:
        if msg["name"] in self.values:
            msg["value"] = self.values[msg["name"]]


class _PlateIndices(Messenger):
    """The index tensors of the program's plates, cheaper than Pyro's defaults.

    * A plate named in ``fixed`` takes those indices (the full-data sweep of
      :func:`_full_data_nll`).
    * A plate that does not subsample gets the same ``arange(size)`` at every evaluation:
      Pyro builds it anew each time the plate is entered, a pass over the size of the data
      that nothing reads in most programs.
    * A plate that subsamples B ≤ N/100 of N rows draws its minibatch in O(B) time and memory,
      B indices uniformly at random with replacement, sorted (in order for memory-mapped
      data): Pyro's ``torch.randperm(N)`` costs O(N) per step, 80 MB and a tenth of a second
      at N = 10⁷. The likelihood's N/B scale is unchanged and the minibatch estimate stays
      unbiased; at most about B/2N of a minibatch repeats a row.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fixed: Mapping[str, torch.Tensor] = {}
        self.cache: dict[tuple[int, str], torch.Tensor] = {}

    def _pyro_sample(self, msg: Message) -> None:
        fn = msg["fn"]
        if msg["value"] is not None or not isinstance(fn, _Subsample) or fn.use_cuda is not None:
            return
        if msg["name"] in self.fixed:
            msg["value"] = self.fixed[msg["name"]]
        elif fn.subsample_size is None or fn.subsample_size >= fn.size:
            key = (int(fn.size), str(fn.device))
            if key not in self.cache:
                self.cache[key] = torch.arange(fn.size, device=fn.device)
            msg["value"] = self.cache[key]
        elif 100 * fn.subsample_size <= fn.size:
            msg["value"] = torch.randint(fn.size, (fn.subsample_size,), device=fn.device).sort().values


class _ScaleObserved(Messenger):
    """Multiplies the log-density of every observed site by ``factor`` (latent sites, their
    priors, are left alone): a process that holds a share ``w`` of the data scales its
    likelihood by ``1/w``, as a subsampling plate does for a minibatch."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def _pyro_sample(self, msg: Message) -> None:
        if msg["is_observed"] and not site_is_subsample(msg):
            msg["scale"] = self.factor * msg["scale"]


class _TraceMismatch(Exception):
    """The compiled objective no longer agrees with the program."""


def _close(expected: tuple[torch.Tensor, ...], got: tuple[torch.Tensor, ...]) -> bool:
    """Equal to rounding: relative 1e-9 in float64, 1e-4 in float32, scaled by the largest entry."""
    for a, b in zip(expected, got):
        if a.shape != b.shape:
            return False
        rtol = 1e-9 if a.dtype == torch.float64 else 1e-4
        atol = rtol * max(float(a.abs().max()) if a.numel() else 0.0, 1.0)
        if not torch.allclose(a, b.to(a.dtype), rtol=rtol, atol=atol, equal_nan=True):
            return False
    return True


class _Diverged(Exception):
    def __init__(
        self,
        message: str,
        step: int,
        sites: tuple[str, ...],
        good: torch.Tensor,
        cause: BaseException | None = None,
    ):
        super().__init__(message)
        self.message, self.step, self.sites, self.good, self.cause = message, step, sites, good, cause


class _Run:
    """The optimisation loop and its record: losses, gradient size, why it stopped."""

    def __init__(
        self,
        objective: _Objective,
        params: list[torch.Tensor],
        method: str,
        optimizer: str,
        num_steps: int,
        lr: float,
        rtol: float,
        gtol: float,
        num_data: float,
        stochastic: bool,
        jit: bool = False,
        weight: float = 1.0,
        collective: Collective | None = None,
    ):
        self.objective, self.params, self.stochastic = objective, params, stochastic
        self.method, self.optimizer = method, optimizer
        self.num_steps, self.lr, self.rtol, self.gtol, self.num_data = num_steps, lr, rtol, gtol, num_data
        self.jit, self.weight, self.collective = jit, weight, collective
        self.compiled: Callable[..., torch.Tensor] | None = None
        self.jit_error = ""  # why the objective runs interpreted although jit was asked for
        self.losses: list[float] = []
        self.steps = 0
        self.grad_norm = math.nan
        self.converged = False
        self.message = ""
        self.rejected = 0  # L-BFGS trial points whose loss was not finite
        # the parameters at which the loss was last finite (flat), kept for FitDivergedError
        self.good = self._snapshot()

    # -------------------------------------------------------------- helpers
    def _snapshot(self) -> torch.Tensor:
        return self._flat()  # torch.cat copies

    def restore(self, values: torch.Tensor) -> None:
        with torch.no_grad():
            offset = 0
            for p in self.params:
                p.copy_(values[offset : offset + p.numel()].view_as(p))
                offset += p.numel()

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def _flat_grad(self) -> torch.Tensor:
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params])

    def _record(self, loss: float, bar: tqdm) -> None:
        self.losses.append(loss)
        if not bar.disable:
            bar.set_postfix(loss=f"{loss:.6g}", refresh=False)

    def _forward(self) -> tuple[torch.Tensor, Trace | None]:
        if self.compiled is not None:
            return self.compiled(*self.params), None
        return self.objective()

    def _evaluate(self, step: int, probe: bool = False) -> torch.Tensor | None:
        """Loss at the current parameters, gradients left in ``.grad``.

        A non-finite loss, or an error raised at non-finite parameters, raises ``_Diverged``;
        for a ``probe`` (a line-search trial point) it returns ``None`` instead. In a
        data-parallel fit the loss and gradients are the weighted sums over all processes,
        and an error in any process counts in every process.
        """
        for p in self.params:
            p.grad = None
        loss, trace, error = None, None, None
        try:
            loss, trace = self._forward()
        except (ValueError, RuntimeError) as e:
            error = e
        # an error at finite parameters is a bug in the program, not a step too long
        fatal = error is not None and (step == 0 or all(bool(torch.isfinite(p).all()) for p in self.params))
        if fatal and self.collective is None:
            raise error
        value = math.nan if loss is None else float(loss.detach())
        if math.isfinite(value):
            loss.backward()
        failed = error is not None
        if self.collective is not None:
            value, failed = self._reduce(value, failed)
            if fatal:
                raise error
            if failed and error is None:
                error = RuntimeError("the program raised an error in another process (see its output)")
        if failed:
            if probe:
                return None
            raise self._diverged(step, None, math.nan, cause=error) from error
        if not math.isfinite(value):
            if probe:
                return None
            if trace is None:  # the compiled objective keeps no trace: run the program to name the sites
                with torch.no_grad():
                    try:
                        eager, trace = self.objective()
                    except (ValueError, RuntimeError):
                        eager, trace = None, None
                if self.collective is None and eager is not None and math.isfinite(float(eager)):
                    raise _TraceMismatch
            raise self._diverged(step, trace, value)
        if self.collective is not None:
            return torch.tensor(value, dtype=self.params[0].dtype)
        return loss.detach()

    def _reduce(self, value: float, failed: bool, grads: bool = True) -> tuple[float, bool]:
        """Weighted sums over the processes of the loss (and the gradients, written back to
        ``.grad``), in one all-reduce; whether any process failed."""
        head = torch.tensor(
            [math.nan if failed else value * self.weight, float(failed)],
            dtype=torch.float64,
            device=self.params[0].device,
        )
        flat = torch.cat([head, self._flat_grad().to(torch.float64) * self.weight]) if grads else head
        self.collective.sum_(flat)
        if grads:
            offset = 2
            for p in self.params:
                p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
                offset += p.numel()
        return float(flat[0]), bool(flat[1] > 0)

    def _current_loss(self) -> tuple[float, Trace | None]:
        """The objective at the current parameters, without gradients."""
        with torch.no_grad():
            loss, trace = self.objective()
        value = float(loss)
        if self.collective is not None:
            value = self._reduce(value, not math.isfinite(value), grads=False)[0]
        return value, trace

    def compile(self) -> None:
        """Trace the objective as a TorchScript function of the parameters, and keep the trace
        only if it gives the interpreted program's loss and gradient at the current parameters,
        under two random states (the same state for both, so a subsampling plate draws the same
        minibatch in each). ``jit_error`` says why a trace was not kept."""
        if not hasattr(torch.jit, "trace"):
            self.jit_error = "this torch has no torch.jit.trace"
            return
        params = tuple(self.params)
        cuda = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})

        def objective(*values: torch.Tensor) -> torch.Tensor:
            return self.objective()[0]  # reads the parameters (the traced inputs) from the param store

        def loss_and_grads(fn: Callable[..., tuple | torch.Tensor], state: Any) -> tuple[torch.Tensor, ...]:
            _set_rng_state(state, cuda)
            out = fn(*params)
            loss = out[0] if isinstance(out, tuple) else out
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            return (loss.detach(),) + tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, grads))

        try:
            with torch.random.fork_rng(devices=cuda), warnings.catch_warnings():
                # Tracer warnings flag every Python decision on a tensor, shape checks included;
                # what matters is whether the trace computes what the program computes, which
                # is checked here and again at the estimate (see optimise).
                warnings.simplefilter("ignore")
                state = _get_rng_state(cuda)
                traced = torch.jit.trace(objective, params, check_trace=False)
                expected = loss_and_grads(lambda *_: self.objective(), state)
                # A second random state: a program that draws (a subsampling plate) must draw
                # anew in the trace too, not replay the minibatch it was traced with (data
                # gathered through NumPy would be frozen into the trace as a constant).
                later = _get_rng_state(cuda)
                expected_later = loss_and_grads(lambda *_: self.objective(), later)
                # the first calls of a trace run the profiling executor, later ones the optimised graph
                got = [
                    (expected, loss_and_grads(traced, state)),
                    (expected_later, loss_and_grads(traced, later)),
                    (expected, loss_and_grads(traced, state)),
                ]
        except Exception as e:  # noqa: BLE001 - any failure to trace means: run interpreted
            self.jit_error = f"{type(e).__name__}: {_first_line(e)}"
            return
        if not all(_close(a, b) for a, b in got):
            self.jit_error = "the trace does not reproduce the program's loss and gradient"
            return
        self.compiled = traced

    def _diverged(self, step: int, trace: Trace | None, value: float, cause: BaseException | None = None) -> _Diverged:
        """Name the sites whose log-prob broke, and the parameters that are not finite."""
        sites: list[str] = []
        details: list[str] = []
        if trace is not None:
            with torch.no_grad():
                for name, lp in _log_prob_terms(trace, elementwise=True).items():
                    bad = ~torch.isfinite(lp)
                    if bool(bad.any()):
                        sites.append(name)
                        details.append(f"{name!r} ({_describe_non_finite(lp, bad)})")
        store = pyro.get_param_store()
        bad_params = [name for name, p in store.named_parameters() if not bool(torch.isfinite(p).all())]
        with pyro.validation_enabled(True), validation(True), torch.no_grad():
            try:  # with checks on, torch and the likelihood heads often say exactly what broke
                self.objective()
                checked = ""
            except (ValueError, RuntimeError) as e:
                checked = f" With validation on, the model raises: {_first_line(e)}"
        if cause is not None and not checked:
            checked = f" The model raised: {_first_line(cause)}"
        where = f"at step {step} of {self.optimizer}" if step else "at the initial parameters (step 0)"
        what = "could not be evaluated" if trace is None else f"became {value}"
        last = f" (last finite loss {self.losses[-1]:.6g} at step {len(self.losses) - 1})" if self.losses else ""
        msg = f"fit(model): the {self.method.upper()} loss {what} {where}{last}."
        if details:
            msg += f" Non-finite log-prob at site {', '.join(details)}."
        if bad_params:
            msg += f" Parameters with non-finite values: {bad_params}."
        msg += checked
        keep = "the last finite parameters" if step else "the initial parameters"
        msg += (
            f" The fit stopped; err.fit holds {keep}. Fix: lower lr (now {self.lr:g}), give scale "
            "parameters a positive constraint or a softplus link, rescale the inputs, check the data lie "
            "in the support of the likelihood, or start elsewhere (init_loc_fn, initial pyro.param values)."
        )
        return _Diverged(msg, step, tuple(sites), self.good, cause)

    # -------------------------------------------------------------- loops
    def _everywhere(self, flag: bool) -> bool:
        """Whether ``flag`` holds in every process (in this one, without a collective)."""
        return flag if self.collective is None else self.collective.sum(0.0 if flag else 1.0) == 0.0

    def _trace_agrees(self) -> bool:
        """Whether the compiled objective gives the program's loss at the current parameters,
        under the same random state."""
        cuda = sorted({p.device.index or 0 for p in self.params if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            state = _get_rng_state(cuda)
            expected = self.objective()[0]
            _set_rng_state(state, cuda)
            got = self.compiled(*self.params)
        return _close((expected,), (got,))

    def optimise(self, bar: tqdm) -> None:
        if not self.jit:
            self._optimise(bar)
            return
        cuda = sorted({p.device.index or 0 for p in self.params if p.device.type == "cuda"})
        start, state = self._snapshot(), _get_rng_state(cuda)
        self.compile()
        if not self._everywhere(self.compiled is not None):
            self.compiled = None  # processes of a data-parallel fit all use the trace, or none does
        try:
            self._optimise(bar)
            if self.compiled is not None and not self._everywhere(self._trace_agrees()):
                raise _TraceMismatch
        except _TraceMismatch:
            # A program whose Python decisions depend on parameter values traces to a graph
            # that is right only where it was traced. Start again, interpreted.
            self.compiled = None
            self.jit_error = "the trace stopped reproducing the program's loss during the fit"
            self.restore(start)
            _set_rng_state(state, cuda)
            self.losses, self.steps, self.grad_norm, self.converged, self.message = [], 0, math.nan, False, ""
            self.rejected, self.good = 0, self._snapshot()
            bar.reset()
            self._optimise(bar)

    def _optimise(self, bar: tqdm) -> None:
        if self.optimizer == "lbfgs":
            self._lbfgs(bar)
            if self.rejected:
                self.message += (
                    f" {self.rejected} line-search trial point(s) had a non-finite loss and were "
                    "treated as too long a step."
                )
        else:
            self._adam(bar)

    def _lbfgs(self, bar: tqdm) -> None:
        cache: dict[str, Any] = {}
        probing = False  # inside torch's line search, where every fresh evaluation is a trial point

        def closure() -> torch.Tensor:
            # torch's L-BFGS evaluates its closure at the start of every step, at the point its
            # previous line search has just evaluated; remembering that evaluation halves the
            # cost of a step. The cache is keyed on the parameter values themselves.
            x = self._flat()
            if "x" in cache and torch.equal(x, cache["x"]):
                for p, g in zip(self.params, cache["grads"]):
                    p.grad = g
                return cache["loss"]
            loss = self._evaluate(self.steps + 1 if self.losses else 0, probe=probing)
            if loss is None:
                # A non-finite loss at a trial point means the trial step went too far (past a
                # scale's zero, into exp overflow), not that the fit diverged. torch's
                # strong-Wolfe search cannot handle NaN or inf, so it gets a finite loss above
                # the current one (it fails the sufficient-decrease test, and the search
                # shortens the step) with a zero gradient, which keeps its cubic fits finite.
                self.rejected += 1
                for p in self.params:
                    p.grad = torch.zeros_like(p)
                current = self.losses[-1]
                return torch.tensor(current + 10.0 * (abs(current) + 1.0), dtype=self.params[0].dtype)
            cache.update(x=x, loss=loss, grads=[p.grad for p in self.params])
            return loss

        def new_optimizer() -> torch.optim.LBFGS:
            return torch.optim.LBFGS(
                self.params,
                lr=self.lr,
                max_iter=1,
                max_eval=1 + _MAX_LINE_SEARCH,
                history_size=_HISTORY_SIZE,
                line_search_fn="strong_wolfe",
                # our loop decides when to stop; torch would stop on absolute tolerances
                tolerance_grad=0.0,
                tolerance_change=0.0,
            )

        opt = new_optimizer()
        loss = float(closure())
        self._record(loss, bar)
        self.good = self._snapshot()
        fresh = True  # the optimizer's curvature memory was just reset
        rel = math.inf
        while self.steps < self.num_steps:
            before = cache["x"]
            probing = True
            try:
                opt.step(closure)
            finally:
                probing = False
            self.steps += 1
            new = float(closure())
            self._record(new, bar)
            bar.update(1)
            self.good = self._snapshot()
            rel = abs(new - loss) / max(abs(new), abs(loss), 1.0)
            self.grad_norm = float(self._flat_grad().abs().max()) / self.num_data
            loss = new
            if rel <= self.rtol and self.grad_norm <= self.gtol:
                self.converged = True
                self.message = (
                    f"converged after {self.steps} L-BFGS steps: relative loss change {rel:.2g} "
                    f"<= rtol {self.rtol:g}, gradient per data point {self.grad_norm:.2g} <= gtol "
                    f"{self.gtol:g}."
                )
                return
            if torch.equal(cache["x"], before):
                if self.grad_norm <= self.gtol:
                    self.converged = True
                    self.message = (
                        f"converged after {self.steps} L-BFGS steps: no lower loss along the "
                        f"search direction, gradient per data point {self.grad_norm:.2g} <= gtol "
                        f"{self.gtol:g}."
                    )
                    return
                # Near the optimum a quasi-Newton step promises a decrease of about |g·d|/2. When
                # that is below the rounding error of the summed loss (float32 sums of thousands
                # of terms), no line search can see it: the loss is as low as its precision allows.
                d = opt.state[self.params[0]].get("d")
                gtd = float(self._flat_grad() @ d) if d is not None else 0.0
                rounding = 16 * torch.finfo(self.params[0].dtype).eps * max(abs(loss), 1.0)
                if gtd < 0 and -0.5 * gtd <= rounding:
                    self.converged = True
                    self.message = (
                        f"converged after {self.steps} L-BFGS steps to the precision of the loss: "
                        f"the decrease a further step promises, {-0.5 * gtd:.2g}, is below its "
                        f"rounding error {rounding:.2g} (gradient per data point {self.grad_norm:.2g}; "
                        "fit in float64 to go further)."
                    )
                    return
                if fresh:
                    self.message = (
                        f"L-BFGS stopped at step {self.steps}: the line search finds no lower loss, but the "
                        f"gradient per data point is {self.grad_norm:.2g} > gtol {self.gtol:g}. The objective "
                        "may not be smooth at the optimum (absolute-error losses), or the loss is at the limit "
                        "of its floating-point precision: fit in float64, or loosen gtol."
                    )
                    return
                opt, fresh = new_optimizer(), True  # drop a curvature memory that went stale
            else:
                fresh = False
        self.message = (
            f"not converged after {self.steps} L-BFGS steps: relative loss change {rel:.2g} (rtol {self.rtol:g}), "
            f"gradient per data point {self.grad_norm:.2g} (gtol {self.gtol:g}). Fit.params holds the last "
            "iterate. Raise num_steps, loosen rtol/gtol, or rescale the inputs."
        )

    def _adam(self, bar: tqdm) -> None:
        opt = _Adam(self.params, lr=self.lr)
        decay = 0.1 ** (1.0 / self.num_steps)  # lr → lr/10 over num_steps, as ClippedAdam's lrd
        window = max(10, min(500, self.num_steps // 10))
        current, last = _WindowStats(), None
        while self.steps < self.num_steps:
            value = float(self._evaluate(self.steps))
            self._record(value, bar)
            self.good = self._snapshot()
            current.add(value, self._flat_grad(), self.good)
            opt.step()
            opt.lr *= decay
            self.steps += 1
            bar.update(1)
            if current.count < window:
                continue
            self.grad_norm = float(current.grad_mean().abs().max()) / self.num_data
            if last is not None and self._plateau(last, current):
                self.converged = True
                break
            current, last = _WindowStats(), current
        if self.stochastic and self.converged:
            # The last iterate of minibatch Adam jitters around the optimum by about the step
            # size; once the windows show a plateau, the average of the iterates over the last
            # two windows (Polyak-Ruppert averaging) removes most of that noise.
            windows = [w for w in (last, current) if w is not None and w.count]
            total = sum(w.count for w in windows)
            average = sum(w.params for w in windows) / total
            with torch.no_grad():
                offset = 0
                for p in self.params:
                    p.copy_(average[offset : offset + p.numel()].view_as(p))
                    offset += p.numel()
        value, trace = self._current_loss()  # the objective at the estimate, for losses[-1]
        if not math.isfinite(value):
            raise self._diverged(self.steps, trace, value)
        self._record(value, bar)
        self.good = self._snapshot()
        if not self.converged:
            self.message = (
                f"not converged after {self.steps} Adam steps: the windowed mean loss or the averaged gradient "
                f"(per data point {self.grad_norm:.2g}, gtol {self.gtol:g}) is still moving beyond its noise. "
                "Fit.params holds the last iterate. Raise num_steps or lr, or loosen rtol/gtol."
            )

    def _plateau(self, last: _WindowStats, current: _WindowStats) -> bool:
        """Whether two consecutive windows of Adam steps show neither loss nor gradient moving
        beyond their noise (minibatch losses and gradients are estimates)."""
        mean, se = current.loss_mean_se()
        prev_mean, prev_se = last.loss_mean_se()
        change = abs(mean - prev_mean)
        noise = math.hypot(se, prev_se)
        loss_ok = change <= max(self.rtol * max(abs(mean), abs(prev_mean), 1.0), noise)
        g_mean = current.grad_mean()
        grad_ok = self.grad_norm <= self.gtol or float(g_mean.norm()) <= float(current.grad_se().norm())
        if loss_ok and grad_ok:
            self.message = (
                f"converged after {self.steps} Adam steps: the mean loss of the last {current.count} steps moved "
                f"by {change:.3g} (relative {change / max(abs(mean), 1.0):.2g}; rtol {self.rtol:g}, one standard "
                f"error {noise:.3g}), and the averaged gradient is within gtol {self.gtol:g} per data point "
                "or one standard error of zero."
            )
        return loss_ok and grad_ok


def _get_rng_state(cuda: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda]


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor]], cuda: list[int]) -> None:
    torch.set_rng_state(state[0])
    for d, s in zip(cuda, state[1]):
        torch.cuda.set_rng_state(s, d)


def _describe_non_finite(lp: torch.Tensor, bad: torch.Tensor) -> str:
    """``"nan at rows [3, 17]"``, ``"-inf at all 300 elements"``: the kinds of bad values and where."""
    kinds = [
        k for k, m in (("nan", torch.isnan(lp)), ("inf", lp == math.inf), ("-inf", lp == -math.inf)) if bool(m.any())
    ]
    if lp.dim() == 0:
        return kinds[0]
    count, total = int(bad.sum()), bad.numel()
    if count == total:
        return f"{' and '.join(kinds)} at all {total} elements"
    where = describe_rows(bad, lp).split(" at ", 1)[1]  # "rows [3, 17]", "row 4"
    return f"{' and '.join(kinds)} at {where}"


def _first_line(error: BaseException) -> str:
    line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return line.rstrip(":") + ("" if line.endswith(".") else ".")


class _Adam:
    """:class:`torch.optim.Adam` (default hyper-parameters) through its functional form,
    :func:`torch.optim.adam.adam`, with the fused kernel where torch has one: the same update,
    without the ``Optimizer`` object's per-step bookkeeping (hooks, profiling scopes,
    param-group loops), about 20 µs a step instead of 90 for a small model, where a whole step
    of a traced objective takes a few hundred. Parameters without a gradient are skipped, as
    torch does."""

    _FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

    def __init__(self, params: list[torch.Tensor], lr: float):
        self.params, self.lr = params, lr
        self.fused = all(p.device.type in ("cpu", "cuda") and p.dtype in self._FUSED_DTYPES for p in params)
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
        # torch keeps the step count as a tensor: float32 on the parameter's device when fused
        self.step_count = [
            torch.zeros((), dtype=torch.float32, device=p.device) if self.fused else torch.tensor(0.0) for p in params
        ]

    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        with torch.no_grad():
            adam_update(
                [self.params[i] for i in live],
                [self.params[i].grad for i in live],
                [self.exp_avg[i] for i in live],
                [self.exp_avg_sq[i] for i in live],
                [],
                [self.step_count[i] for i in live],
                foreach=False,
                fused=self.fused or None,
                amsgrad=False,
                beta1=0.9,
                beta2=0.999,
                lr=self.lr,
                weight_decay=0.0,
                eps=1e-8,
                maximize=False,
            )


class _WindowStats:
    """Sums of losses, gradients and iterates over a window of Adam steps."""

    def __init__(self) -> None:
        self.count = 0
        self.loss = self.loss2 = 0.0
        self.grad: torch.Tensor | float = 0.0
        self.grad2: torch.Tensor | float = 0.0
        self.params: torch.Tensor | float = 0.0

    def add(self, loss: float, grad: torch.Tensor, params: torch.Tensor) -> None:
        """``grad`` becomes the window's own (a fresh tensor it may update in place); ``params``
        is copied."""
        self.count += 1
        self.loss += loss
        self.loss2 += loss * loss
        if self.count == 1:
            self.grad, self.grad2, self.params = grad, grad * grad, params.clone()
        else:
            self.grad.add_(grad)
            self.grad2.addcmul_(grad, grad)
            self.params.add_(params)

    def loss_mean_se(self) -> tuple[float, float]:
        n = self.count
        mean = self.loss / n
        var = max(self.loss2 / n - mean * mean, 0.0) * n / (n - 1)
        return mean, math.sqrt(var / n)

    def grad_mean(self) -> torch.Tensor:
        return self.grad / self.count

    def grad_se(self) -> torch.Tensor:
        n = self.count
        g_mean = self.grad / n
        return ((self.grad2 / n - g_mean * g_mean).clamp(min=0.0) * n / (n - 1) / n).sqrt()


class _Chunks:
    """Consecutive index chunks covering ``range(size)``, each exactly ``subsample_size`` long
    (a plate refuses other lengths), with a mask of the indices not covered before: the last
    chunk slides back to end at ``size`` and overlaps the one before it. Built one at a time,
    so sweeping 10⁷ rows holds one chunk, not all of them."""

    def __init__(self, size: int, subsample_size: int, device: Any):
        self.size, self.subsample_size, self.device = size, subsample_size, device

    def __len__(self) -> int:
        return -(-self.size // self.subsample_size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = i * self.subsample_size
        stop = min(start + self.subsample_size, self.size)
        idx = torch.arange(stop - self.subsample_size, stop, device=self.device)
        return idx, idx >= start


def _full_data_nll(model: Callable, guide: Callable | None, args: tuple, kwargs: dict, structure: _Structure) -> float:
    """−log p(y | θ̂) over every example of every observed site.

    Without subsampling this is one trace. A subsampling plate is swept in chunks of its
    subsample size; each observed element is counted once (a site outside a plate once in
    all, an element inside it once per index), without the plate's N/B scale.
    """
    objective = _Objective(model, guide, args, kwargs)
    plates = list(structure.subsample)
    chunks = [_Chunks(*structure.subsample[p]) for p in plates]
    seen: set[tuple[str, tuple[int, ...]]] = set()
    total = 0.0
    with torch.no_grad():
        for combo in itertools.product(*(range(len(c)) for c in chunks)):
            which = dict(zip(plates, combo))
            parts = {p: chunks[i][c] for i, (p, c) in enumerate(which.items())}
            fresh = {p: mask for p, (_, mask) in parts.items()}
            objective.indices.fixed = {p: idx for p, (idx, _) in parts.items()}
            trace = objective.trace()
            for name, site in trace.nodes.items():
                if (
                    site["type"] != "sample"
                    or not site["is_observed"]
                    or site_is_subsample(site)
                    or site["infer"].get("_deterministic")
                ):
                    continue
                frames = [f for f in site["cond_indep_stack"] if f.name in which and f.vectorized]
                key = (name, tuple(which[f.name] for f in frames))
                if key in seen:
                    continue
                seen.add(key)
                lp = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
                lp = scale_and_mask(lp, 1.0, site["mask"])
                scale = site["scale"]
                for f in site["cond_indep_stack"]:
                    if f.name in which:  # undo the plate's N/B: each element counts once
                        scale = scale * f.size / f.full_size
                for f in frames:
                    shape = [-1] + [1] * (-f.dim - 1)
                    keep = fresh[f.name].reshape(shape)
                    lp = torch.where(keep, lp, torch.zeros((), dtype=lp.dtype, device=lp.device))
                total += float(lp.sum()) * float(scale)
    return -total


def _estimate(structure: _Structure, guide: Any) -> dict[str, torch.Tensor]:
    """Constrained point estimates, latent sites and params in the order the model met them."""
    store = pyro.get_param_store()
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name in structure.order:
            if name in structure.latent:
                out[name] = operator.attrgetter(name)(guide).detach().clone()
            elif name in store:
                out[name] = store[name].detach().clone()
    return out


def _make_fit(
    run: _Run,
    structure: _Structure,
    model: Callable,
    guide: Any,
    args: tuple,
    kwargs: dict,
    seed: int | None,
    converged: bool,
    message: str,
) -> Fit:
    nll = _full_data_nll(model, guide, args, kwargs, structure)
    if run.collective is not None:  # each process swept its own rows
        nll = run.collective.sum(nll)
    return Fit(
        params=_estimate(structure, guide),
        losses=tuple(run.losses),
        converged=converged,
        nll=nll,
        method=run.method,
        optimizer=run.optimizer,
        num_steps=run.steps,
        grad_norm=run.grad_norm,
        message=message,
        latent=structure.latent,
        observed=structure.observed,
        seed=seed,
        model=model,
        args=tuple(args),
        kwargs=dict(kwargs),
    )


__all__ = ["Collective", "ConvergenceWarning", "Fit", "FitDivergedError", "Prediction", "fit", "load"]
