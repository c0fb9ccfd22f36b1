"""The results of a point fit: :class:`Fit`, :class:`Prediction`, reading a saved fit
(:func:`load`), and the errors and warnings a fit raises."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import pyro
import torch
from pyro.poutine.util import site_is_factor

from . import _fit_file
from ._fit_file import FitFileError, SiteMismatchError
from ._rng import rng_scope


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


class NoOptimumWarning(ConvergenceWarning):
    """The estimate does not exist: the objective keeps decreasing towards the edge of the
    parameter space (separable classes, a scale collapsing to 0 where the density is
    unbounded, a centred hierarchy with its scale at 0). ``Fit.converged`` is ``False`` and
    ``Fit.message`` names the parameters that run off and the remedy (a prior and MAP, a
    bound, a reparameterisation)."""


class ZeroGradientWarning(UserWarning):
    """A fitted parameter's gradient was exactly zero at the start and at the estimate: the loss
    does not depend on it there, so its reported value is its starting value."""


class UnusedParameterError(ValueError):
    """A fitted parameter or latent site has no path to the loss: its gradient does not exist.

    Typical causes: a ``torch.nn`` module built *inside* the model and registered with
    ``pyro.module`` (the store holds the first module's weights, the forward uses the new
    module's), or, for ``method="mle"``, a latent site that appears only in the priors of other
    latent sites, which MLE masks. Attribute ``names``: the parameters concerned.
    """

    def __init__(self, message: str, names: tuple[str, ...]):
        super().__init__(message)
        self.names = names


class FitInterrupted(KeyboardInterrupt):
    """Ctrl-C (``KeyboardInterrupt``) during a fit. ``fit`` holds a :class:`Fit` at the last
    parameters whose loss was finite, with ``converged=False``; ``step`` the step reached.
    It is a ``KeyboardInterrupt``, so a loop around ``fit`` still stops."""

    def __init__(self, message: str, fit: Fit, step: int):
        super().__init__(message)
        self.fit = fit
        self.step = step


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

    def site(self, site: str | None = None) -> str:
        """The observed site meant by ``site`` (``None``: the only one), checked."""
        if site is None:
            if len(self.draws) != 1:
                raise ValueError(
                    f"Prediction: the model has several observed sites {sorted(self.draws)}; name one with site=."
                )
            return next(iter(self.draws))
        if site not in self.draws:
            raise KeyError(f"Prediction: no observed site {site!r}; the sites are {sorted(self.draws)}.")
        return site

    def interval(self, prob: float = 0.9, site: str | None = None) -> Interval:
        r"""The central predictive interval holding probability ``prob`` for each example:
        quantiles (1 − prob)/2 and (1 + prob)/2 from the distribution's inverse cdf where it
        has one (Normal, Laplace, LogNormal, …), from the draws otherwise (counts, mixtures,
        censored heads), which then carry Monte Carlo error of order
        :math:`\sqrt{p(1-p)/S}/f(q)` for S draws."""
        if not isinstance(prob, (int, float)) or not 0.0 < prob < 1.0:
            raise ValueError(f"Prediction.interval: prob must be a number in (0, 1), e.g. 0.9; got {prob!r}.")
        name = self.site(site)
        d = self.distributions[name]
        lo_q, hi_q = (1 - prob) / 2, (1 + prob) / 2
        draws = self.draws[name]
        try:
            ref = torch.ones(d.batch_shape + d.event_shape, dtype=draws.dtype if draws.is_floating_point() else None)
            lower, upper = d.icdf(lo_q * ref), d.icdf(hi_q * ref)
            method = "icdf"
        except (NotImplementedError, AttributeError):
            x = draws.to(torch.get_default_dtype()) if not draws.is_floating_point() else draws
            q = torch.tensor([lo_q, hi_q], dtype=x.dtype)
            lower, upper = torch.quantile(x, q, dim=0)
            method = "draws"
        return Interval(lower=lower, upper=upper, prob=float(prob), method=method)


class Interval(NamedTuple):
    """A central predictive interval per example.

    Fields:
      * ``lower``, ``upper``: the (1 − prob)/2 and (1 + prob)/2 quantiles, shape of one draw.
      * ``prob``: the probability the interval holds.
      * ``method``: ``"icdf"`` (exact, the distribution's inverse cdf) or ``"draws"``
        (empirical quantiles of the predictive draws).
    """

    lower: torch.Tensor
    upper: torch.Tensor
    prob: float
    method: str


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
      * ``grad_norm``: the stopping rule's relative gradient at the end,
        :math:`\max_i |g_i|\max(|x_i|,1)/\max(|f|,N)` over the unconstrained parameters (for a
        subsampled Adam fit, of the full-data objective).
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
        datatree: bool = False,
        **kwargs: Any,
    ) -> Prediction | Any:
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
        :param int seed: seed for the draws (default: the global random state); the caller's
            generators are left as they were.
        :param bool datatree: return an ArviZ DataTree with ``predictions`` (``num_samples``
            draws, marked ``point_estimate``) and ``predictions_constant_data`` groups, dims from
            plates, as ``to_datatree(fit, predictions=args)`` builds it.
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
        if datatree:
            from .datatree import to_datatree  # datatree imports this module

            fit = self if self.model is model else dataclasses.replace(self, model=model)
            return to_datatree(
                fit, num_draws=int(num_samples), predictions=tuple(args), pred_kwargs=kwargs, predictive=False,
                log_likelihood=False, seed=seed,
            )  # fmt: skip
        with rng_scope(seed) if seed is not None else contextlib.nullcontext():
            return self._predict(model, args, kwargs, num_samples)

    def _predict(self, model: Callable[..., Any], args: tuple, kwargs: dict, num_samples: int) -> Prediction:
        with pyro.get_param_store().scope(), torch.no_grad():
            trace = _fit_file.trace_at(model, self.params, self.latent, args, kwargs)
            differences = _fit_file.model_differences(self.params, self.latent, self.observed, trace)
            if differences:
                raise _fit_file.mismatch("Fit.predict", differences)
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
        history, flags and names, a format header and the site table (each site's name, kind
        and shape; see :mod:`pyro_mle._fit_file`); never the model. Read it back with
        :func:`load`.

        The file is written whole or not at all (an earlier file at ``path`` survives a failed
        save). A folder as ``path``, a missing folder, a file where a folder should be and a
        place that cannot be written raise :class:`OSError` subclasses naming the path and the
        reason.
        """
        params = {k: v.detach().cpu() for k, v in self.params.items()}
        _fit_file.write(
            path,
            {
                "format": _fit_file.FORMAT,
                "version": _fit_file.VERSION,
                "params": params,
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
                "sites": _fit_file.site_table(params, tuple(self.latent), tuple(self.observed)),
            },
        )


def load(path: str | os.PathLike, model: Callable[..., Any] | None = None, *args: Any, **kwargs: Any) -> Fit:
    """Read a :class:`Fit` written by :meth:`Fit.save`.

    The file holds only tensors and plain values (read with ``weights_only=True``, so no code
    runs). :meth:`Fit.predict` needs the program: pass it here or to ``predict(model=...)``.

    With a ``model``, its sites are checked against the file's site table: a site renamed, a
    latent sample site turned into a ``pyro.param`` (or back) or a shape changed raises
    :class:`~pyro_mle._fit_file.SiteMismatchError` listing every difference, instead of
    predictions drawn from the prior or from a param's initial value. The check runs the model
    once, so it needs the model's arguments: pass them after ``model`` (``load(path, model, x)``);
    a model that takes none is checked at once, any other at its first :meth:`Fit.predict`.

    A file that is missing, a folder, empty, truncated, corrupt or not written by
    :meth:`Fit.save` raises :class:`~pyro_mle._fit_file.FitFileError` (a ``ValueError``):
    ``not a pyro_mle fit file (<path>: <reason>)``. Files of format version 1 (before the site
    table) are read, their site table rebuilt from the parameters.
    """
    payload = _fit_file.read(path)
    result = Fit(
        params=payload["params"],
        losses=tuple(payload["losses"]),
        converged=payload["converged"],
        nll=float(payload["nll"]),
        method=payload["method"],
        optimizer=payload["optimizer"],
        num_steps=payload["num_steps"],
        grad_norm=float(payload["grad_norm"]),
        message=payload["message"],
        latent=tuple(payload["latent"]),
        observed=tuple(payload["observed"]),
        seed=payload["seed"],
        model=model,
    )
    if model is not None and _fit_file.can_run(model, args, kwargs):
        _check_model_now(result, model, args, kwargs, given=bool(args or kwargs), where=f"load({os.fspath(path)!r})")
    return result


def _check_model_now(
    result: Fit, model: Callable[..., Any], args: tuple, kwargs: dict, given: bool, where: str
) -> None:
    """Run the model once at the estimate and refuse it if its sites differ from the fit's.
    The run leaves the param store and the random state as they were. A model called without
    arguments that fails is left to its first prediction (it may need data after all)."""
    with rng_scope(0), pyro.get_param_store().scope(), torch.no_grad():
        try:
            trace = _fit_file.trace_at(model, result.params, result.latent, args, kwargs)
        except Exception:
            if given:
                raise
            return
    differences = _fit_file.model_differences(result.params, result.latent, result.observed, trace)
    if differences:
        raise _fit_file.mismatch(where, differences)


__all__ = [
    "ConvergenceWarning",
    "Fit",
    "FitDivergedError",
    "FitFileError",
    "FitInterrupted",
    "NoOptimumWarning",
    "Prediction",
    "SiteMismatchError",
    "UnusedParameterError",
    "ZeroGradientWarning",
    "load",
]
