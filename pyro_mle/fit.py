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
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.autoguide import AutoDelta
from pyro.infer.autoguide.initialization import init_to_median
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_factor, site_is_subsample
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
    :param kwargs: keyword arguments of the model.
    :returns: a :class:`Fit`.
    :raises FitDivergedError: when the loss becomes NaN or infinite.
    """
    method = _choice("method", method, METHODS)
    if optimizer is not None:
        optimizer = _choice("optimizer", optimizer, OPTIMIZERS)
    if num_steps is not None and (int(num_steps) != num_steps or num_steps < 1):
        raise ValueError(f"fit(model): num_steps must be a positive integer; got {num_steps!r}.")
    for name, value in (("lr", lr), ("rtol", rtol), ("gtol", gtol)):
        if value is not None and not (isinstance(value, (int, float)) and 0 < value < math.inf):
            raise ValueError(f"fit(model): {name} must be a positive number; got {value!r}.")
    if progress is None:
        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())

    if seed is not None:
        pyro.set_rng_seed(seed)
    with pyro.get_param_store().scope():
        structure = _inspect(model, args, kwargs)
        if optimizer is None:
            optimizer = "adam" if structure.subsample else "lbfgs"
        elif optimizer == "lbfgs" and structure.subsample:
            plates = ", ".join(f"{p!r} ({s} of {n})" for p, (n, s, _) in structure.subsample.items())
            raise ValueError(
                f"fit(model): optimizer='lbfgs' needs the full-batch loss, but plate {plates} subsamples. "
                "Use optimizer='adam' (the default here), or drop subsample_size to fit the full batch."
            )
        num_steps = int(num_steps) if num_steps is not None else _NUM_STEPS[optimizer]
        lr = float(lr) if lr is not None else _LR[optimizer]

        guide = AutoDelta(model, init_loc_fn=init_loc_fn) if structure.latent else None
        objective = _Objective(likelihood_only(model) if method == "mle" else model, guide, args, kwargs)
        store = pyro.get_param_store()
        objective()  # creates every parameter, the guide's point masses included
        params = [p for _, p in store.named_parameters()]
        if not params:
            raise ValueError(
                "fit(model): nothing to fit: the model has no latent sample site and no pyro.param or "
                "module parameter, so its likelihood has no free parameter."
            )
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
            num_data=structure.num_data,
            stochastic=bool(structure.subsample),
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
        warnings.warn(f"fit(model): {result.message}", ConvergenceWarning, stacklevel=2)
    return result


# ---------------------------------------------------------------------------- internals
def _choice(what: str, value: object, valid: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in valid:
        raise ValueError(f"fit(model): {what} must be one of {list(valid)}; got {value!r}.")
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
    with pyro.validation_enabled(True), validation(True):
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
        lp = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
        lp = scale_and_mask(lp, site["scale"], site["mask"])
        terms[name] = lp if elementwise else lp.sum()
    return terms


class _Objective:
    """Negative ELBO of a point-mass guide: minus the log-density of the model replayed on it."""

    def __init__(self, model: Callable, guide: Callable | None, args: tuple, kwargs: dict):
        self.model, self.guide, self.args, self.kwargs = model, guide, args, kwargs

    def trace(self) -> Trace:
        if self.guide is None:
            return poutine.trace(self.model).get_trace(*self.args, **self.kwargs)
        guide_trace = poutine.trace(self.guide).get_trace(*self.args, **self.kwargs)
        replayed = poutine.replay(self.model, trace=guide_trace)
        return poutine.trace(replayed).get_trace(*self.args, **self.kwargs)

    def __call__(self) -> tuple[torch.Tensor, Trace]:
        trace = self.trace()
        return -sum(_log_prob_terms(trace).values()), trace


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
    """Subsampling plates named in ``indices`` take these indices instead of random ones."""

    def __init__(self, indices: Mapping[str, torch.Tensor]):
        super().__init__()
        self.indices = indices

    def _pyro_sample(self, msg: Message) -> None:
        if site_is_subsample(msg) and msg["name"] in self.indices:
            msg["value"] = self.indices[msg["name"]]


class _Diverged(Exception):
    def __init__(
        self,
        message: str,
        step: int,
        sites: tuple[str, ...],
        good: list[torch.Tensor],
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
    ):
        self.objective, self.params, self.stochastic = objective, params, stochastic
        self.method, self.optimizer = method, optimizer
        self.num_steps, self.lr, self.rtol, self.gtol, self.num_data = num_steps, lr, rtol, gtol, num_data
        self.losses: list[float] = []
        self.steps = 0
        self.grad_norm = math.nan
        self.converged = False
        self.message = ""
        self.rejected = 0  # L-BFGS trial points whose loss was not finite
        # the parameters at which the loss was last finite, kept for FitDivergedError
        self.good = self._snapshot()

    # -------------------------------------------------------------- helpers
    def _snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.params]

    def restore(self, values: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, v in zip(self.params, values):
                p.copy_(v)

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def _flat_grad(self) -> torch.Tensor:
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params])

    def _record(self, loss: float, bar: tqdm) -> None:
        self.losses.append(loss)
        bar.set_postfix(loss=f"{loss:.6g}", refresh=False)

    def _evaluate(self, step: int, probe: bool = False) -> torch.Tensor | None:
        """Loss at the current parameters, gradients left in ``.grad``.

        A non-finite loss, or an error raised at non-finite parameters, raises ``_Diverged``;
        for a ``probe`` (a line-search trial point) it returns ``None`` instead.
        """
        for p in self.params:
            p.grad = None
        try:
            loss, trace = self.objective()
        except (ValueError, RuntimeError) as e:
            if step == 0 or all(bool(torch.isfinite(p).all()) for p in self.params):
                raise
            if probe:
                return None
            raise self._diverged(step, None, math.nan, cause=e) from e
        value = float(loss.detach())
        if not math.isfinite(value):
            if probe:
                return None
            raise self._diverged(step, trace, value)
        loss.backward()
        return loss.detach()

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
    def optimise(self, bar: tqdm) -> None:
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
        opt = torch.optim.Adam(self.params, lr=self.lr)
        decay = 0.1 ** (1.0 / self.num_steps)  # lr → lr/10 over num_steps, as ClippedAdam's lrd
        window = max(10, min(500, self.num_steps // 10))
        current, last = _WindowStats(), None
        while self.steps < self.num_steps:
            value = float(self._evaluate(self.steps))
            self._record(value, bar)
            self.good = self._snapshot()
            current.add(value, self._flat_grad(), self._flat())
            opt.step()
            for group in opt.param_groups:
                group["lr"] *= decay
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
        with torch.no_grad():  # the objective at the estimate, for losses[-1]
            loss, trace = self.objective()
        value = float(loss)
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


class _WindowStats:
    """Sums of losses, gradients and iterates over a window of Adam steps."""

    def __init__(self) -> None:
        self.count = 0
        self.loss = self.loss2 = 0.0
        self.grad: torch.Tensor | float = 0.0
        self.grad2: torch.Tensor | float = 0.0
        self.params: torch.Tensor | float = 0.0

    def add(self, loss: float, grad: torch.Tensor, params: torch.Tensor) -> None:
        self.count += 1
        self.loss += loss
        self.loss2 += loss * loss
        self.grad = self.grad + grad
        self.grad2 = self.grad2 + grad * grad
        self.params = self.params + params

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


def _chunks(size: int, subsample_size: int, device: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive index chunks covering ``range(size)``, each exactly ``subsample_size`` long
    (a plate refuses other lengths), with a mask of the indices not covered before: the last
    chunk slides back to end at ``size`` and overlaps the one before it."""
    out = []
    for start in range(0, size, subsample_size):
        stop = min(start + subsample_size, size)
        idx = torch.arange(stop - subsample_size, stop, device=device)
        out.append((idx, idx >= start))
    return out


def _full_data_nll(model: Callable, guide: Callable | None, args: tuple, kwargs: dict, structure: _Structure) -> float:
    """−log p(y | θ̂) over every example of every observed site.

    Without subsampling this is one trace. A subsampling plate is swept in chunks of its
    subsample size; each observed element is counted once (a site outside a plate once in
    all, an element inside it once per index), without the plate's N/B scale.
    """
    objective = _Objective(model, guide, args, kwargs)
    plates = list(structure.subsample)
    chunks = [_chunks(*structure.subsample[p]) for p in plates]
    seen: set[tuple[str, tuple[int, ...]]] = set()
    total = 0.0
    with torch.no_grad():
        for combo in itertools.product(*(range(len(c)) for c in chunks)):
            which = dict(zip(plates, combo))
            indices = {p: chunks[i][c][0] for i, (p, c) in enumerate(which.items())}
            fresh = {p: chunks[i][c][1] for i, (p, c) in enumerate(which.items())}
            with _PlateIndices(indices):
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
    return Fit(
        params=_estimate(structure, guide),
        losses=tuple(run.losses),
        converged=converged,
        nll=_full_data_nll(model, guide, args, kwargs, structure),
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


__all__ = ["ConvergenceWarning", "Fit", "FitDivergedError", "Prediction", "fit", "load"]
