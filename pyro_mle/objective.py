r"""The objective of a point fit: a Pyro program read as a function of its parameters.

:func:`objective` is the building block under :func:`pyro_mle.fit`, for users who run their
own loop. It turns ``model(*args, **kwargs)`` into

* ``method="mle"``: :math:`-\log p(y \mid \theta)` (priors masked by
  :func:`~pyro_mle.handlers.likelihood_only`);
* ``method="map"``: :math:`-\log p(y \mid \theta) - \log p(\theta)`,

a function of the **unconstrained** parameters: the locations of an
:class:`~pyro.infer.autoguide.AutoDelta` guide for latent sites (a point mass: its entropy is
zero, so the negative ELBO is exactly the objective above) and every ``pyro.param``,
``pyro.module`` and :class:`~pyro.nn.PyroModule` parameter. The parameters live in the global
param store, as they do for :class:`~pyro.infer.SVI`; wrap the work in
``pyro.get_param_store().scope()`` to keep them out of it.

Usage::

    with pyro.get_param_store().scope():
        obj = pyro_mle.objective(model, x, y)

        def fun(v):
            value, grad = obj.value_and_grad(torch.as_tensor(v, dtype=torch.float64))
            return float(value), grad.numpy()

        result = scipy.optimize.minimize(fun, obj.flat().numpy(), jac=True, method="BFGS")
"""

from __future__ import annotations

import itertools
import math
import operator
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import pyro
import pyro.distributions
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.autoguide import AutoDelta
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_factor, site_is_subsample
from torch.distributions import biject_to

from . import existence
from ._validation import check_arguments, check_finite, validation
from .handlers import likelihood_only
from .optim.vectors import flat_grad, flatten

METHODS = ("mle", "map")


def init_to_centre(site: Message | None = None, **kwargs: Any) -> torch.Tensor | Callable:
    """The default start of a point fit: zero in the unconstrained space of every latent site.

    That is 0 for a real parameter, 1 for a positive one, the midpoint of an interval, the
    uniform point of a simplex, the identity of a correlation Cholesky factor. It never draws
    from the prior (Pyro's ``init_to_median`` does), so an MLE does not depend on the prior and
    an improper or very wide prior cannot put the start somewhere absurd. Use it like Pyro's
    init functions: ``init_loc_fn=init_to_centre``.
    """
    if site is None:
        return init_to_centre
    fn = site["fn"]
    if fn.support.is_discrete:  # not fittable; drawn only so that the check can name the site
        return fn.sample().detach()
    transform = biject_to(fn.support)
    shape = transform.inverse_shape(fn.shape())
    dtype, device = _floating_like(fn)
    return transform(torch.zeros(shape, dtype=dtype, device=device)).detach()


def _floating_like(fn: Any) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of a distribution's floating parameters (wrappers unwrapped)."""
    seen = set()
    while fn is not None and id(fn) not in seen:
        seen.add(id(fn))
        for value in vars(fn).values():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return value.dtype, value.device
        fn = getattr(fn, "base_dist", None)
    return torch.get_default_dtype(), torch.device("cpu")


def _unsampleable_named(init_loc_fn: Callable) -> Callable:
    """``init_loc_fn``, with the fix named where it draws from a distribution that cannot be
    sampled (an improper prior such as ``ImproperUniform``): Pyro's ``init_to_median``,
    ``init_to_sample`` and ``init_to_feasible`` all draw, :func:`init_to_centre` does not."""

    def init(site: Message) -> torch.Tensor:
        try:
            return init_loc_fn(site)
        except NotImplementedError as e:
            fn = site["fn"]
            while hasattr(fn, "base_dist"):
                fn = fn.base_dist
            raise ValueError(
                f"fit(model): latent site {site['name']!r} has prior {type(fn).__name__}, which cannot be sampled "
                f"({str(e).strip().splitlines()[0] if str(e).strip() else 'no sample method'}), and init_loc_fn="
                f"{getattr(init_loc_fn, '__name__', repr(init_loc_fn))} draws from it. Leave init_loc_fn unset (the "
                "default start is the centre of each site's support), or give the start: "
                "init_to_value(values={...}, fallback=pyro_mle.objective.init_to_centre)."
            ) from e

    return init


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


def _raised_in_pyro(error: BaseException) -> bool:
    """Whether ``error`` was raised inside Pyro's own code (its innermost frame)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}pyro{os.sep}" in tb.tb_frame.f_code.co_filename


def _inspect(model: Callable, args: tuple, kwargs: dict, init_loc_fn: Callable | None = None) -> _Structure:
    """Trace the model once, with validation on, and refuse what cannot be fitted.

    Latent sites take their initial values (``init_loc_fn``), never a draw from the prior:
    an MLE must not depend on the prior, and a wide prior's draw (a rate of the wrong sign)
    would fail validation where the fit itself would start fine.
    """
    check_arguments("fit(model)", model, args, kwargs)
    init = InitMessenger(_unsampleable_named(init_loc_fn or init_to_centre))
    with pyro.validation_enabled(True), validation(True), _PlateIndices(), init, _CopyInitialValues():
        try:
            trace = poutine.trace(model).get_trace(*args, **kwargs)
        except ZeroDivisionError as e:
            # Pyro divides by a plate's size for its scale: a plate of size 0 has no rows. A
            # division by zero in the program itself is the program's own error.
            if not _raised_in_pyro(e):
                raise
            raise ValueError(
                "fit(model): no data rows: a pyro.plate of the model has size 0 (an empty data set). "
                "Pass at least one row of x and y."
            ) from e
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
    if isinstance(n, torch.Tensor):
        # under torch.jit.trace the element count is a traced int64 tensor, and an int64
        # tensor times a Python float is computed in the *default* dtype (float32): the
        # constant n·log σ√2π would lose float64's precision and the trace check would reject
        # the trace of every float64 model
        n = n.to(squares.dtype)
    if not s.requires_grad and not (isinstance(weight, torch.Tensor) and weight.requires_grad):
        # a fixed scale: fold the constants in Python, two scalar operations on the sum instead
        # of eight (they count when steps take tens of microseconds)
        sigma, weight = float(s), float(weight)
        if not sigma * sigma > 0 or not math.isfinite(sigma * sigma):
            return None  # let Normal.log_prob say what a zero or infinite scale gives
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


class _CopyInitialValues(Messenger):
    """A ``pyro.param`` created here stores a copy of its initial tensor: Pyro keeps the tensor
    itself (for a real parameter), and the fit would then overwrite the caller's array in place.
    Module weights (``pyro.module``, ``nn.Parameter``) are left alone: they are trained in place
    by design."""

    def _pyro_param(self, msg: Message) -> None:
        args = msg["args"]
        if len(args) < 2 or "$$$" in str(args[0]) or str(args[0]) in pyro.get_param_store():
            return
        value = args[1]
        if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
            msg["args"] = (args[0], value.detach().clone()) + tuple(args[2:])


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


def _sweep(  # noqa: C901 - one loop over chunks and sites, kept together for the counting rule
    objective: _Objective,
    structure: _Structure,
    *,
    observed_only: bool,
    grad: bool = False,
    params: list[torch.Tensor] | None = None,
    information: list[torch.Tensor] | None = None,
    hessian: list[torch.Tensor] | None = None,
) -> float:
    r"""The objective's terms over every example of the data: summed log-densities, negated.

    Without subsampling this is one trace. A subsampling plate is swept in chunks of its
    subsample size; each element of a site is counted once (a site outside the subsampled
    plates once in all, an element inside one once per index), without the plate's N/B
    scale. ``observed_only``: the likelihood, −log p(y | θ) (the NLL); otherwise every term
    the objective counts, priors included unless masked (the full-data MLE/MAP objective).
    With ``grad`` its gradient is accumulated into the parameters' ``.grad``, one chunk at a
    time, so the memory is that of one minibatch. With ``information`` (a list, and ``params``)
    the diagonal of the empirical Fisher information is appended to it, estimated from the
    spread of the K chunk gradients :math:`c_k = \sum_{i \in k} g_i`: near an optimum
    :math:`\mathrm{Var}(c_k) \approx B\,\mathrm{Var}(g_i)`, so
    :math:`\sum_i g_i^2 \approx K\,\mathrm{Var}_k(c_k)`. With ``hessian`` (a list, and
    ``params``) the dense Hessian of the objective is appended, summed chunk by chunk from
    Hessian-vector products (one double-backward pass per parameter and chunk).
    """
    plates = list(structure.subsample)
    chunks = [_Chunks(*structure.subsample[p]) for p in plates]
    seen: set[tuple[str, tuple[int, ...]]] = set()
    total = 0.0
    moments = None  # running sums of the chunk gradients and of their squares
    total_h = None
    with torch.set_grad_enabled(grad or hessian is not None):
        for combo in itertools.product(*(range(len(c)) for c in chunks)):
            which = dict(zip(plates, combo))
            parts = {p: chunks[i][c] for i, (p, c) in enumerate(which.items())}
            fresh = {p: mask for p, (_, mask) in parts.items()}
            objective.indices.fixed = {p: idx for p, (idx, _) in parts.items()}
            try:
                trace = objective.trace()
            finally:
                objective.indices.fixed = {}
            chunk_total = None
            for name, site in trace.nodes.items():
                if (
                    site["type"] != "sample"
                    or site_is_subsample(site)
                    or site["infer"].get("_deterministic")
                    or (observed_only and not site["is_observed"])
                    or site["mask"] is False
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
                term = lp.sum() * scale
                chunk_total = term if chunk_total is None else chunk_total + term
            if chunk_total is not None:
                if hessian is not None and chunk_total.requires_grad:
                    h = _dense_hessian(-chunk_total, params)
                    total_h = h if total_h is None else total_h + h
                if grad and chunk_total.requires_grad:
                    before = flat_grad(params) if information is not None else None
                    (-chunk_total).backward()
                    if before is not None:
                        c = flat_grad(params) - before
                        moments = (
                            [1, c, c * c] if moments is None else [moments[0] + 1, moments[1] + c, moments[2] + c * c]
                        )
                total += float(chunk_total.detach())
    if hessian is not None:
        n = sum(p.numel() for p in params)
        hessian.append(total_h if total_h is not None else torch.zeros(n, n, dtype=params[0].dtype))
    if information is not None:
        if moments is None or moments[0] < 2:
            information.append(None)
        else:
            k, s1, s2 = moments
            variance = (s2 - s1 * s1 / k).clamp(min=0.0) / (k - 1)
            information.append(k * variance)
    return -total


def _full_data_nll(model: Callable, guide: Callable | None, args: tuple, kwargs: dict, structure: _Structure) -> float:
    """−log p(y | θ̂) over every example of every observed site (see :func:`_sweep`)."""
    return _sweep(_Objective(model, guide, args, kwargs), structure, observed_only=True)


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


class PointObjective:
    """The objective of a point fit over the program's unconstrained parameters.

    Built by :func:`objective`. Fields:
      * ``params``: the leaf tensors optimised (unconstrained; from the param store).
      * ``names``: their param-store names (latent sites appear as ``"AutoDelta.loc.<site>"``
        style guide parameters; see ``structure.latent`` for the site names).
      * ``structure``: what the model declared: latent sites, params, observed sites, plates
        that subsample, and ``num_data``, the number of observed data points at full scale.
      * ``method``: ``"mle"`` or ``"map"``; ``guide``: the AutoDelta guide (``None`` without
        latent sites).

    Calling it (``obj()``) evaluates the objective at the parameters' current values and
    returns ``(loss, trace)``; :meth:`value_and_grad` and :meth:`hessian` work on a flat
    vector, as scipy's optimisers do.
    """

    def __init__(
        self,
        model: Callable,
        args: tuple,
        kwargs: dict,
        *,
        method: str,
        structure: _Structure,
        guide: Any,
        fitted: Callable | None = None,
    ):
        self.model, self.args, self.kwargs, self.method = model, args, kwargs, method
        self.structure, self.guide = structure, guide
        target = fitted if fitted is not None else model
        self._objective = _Objective(likelihood_only(target) if method == "mle" else target, guide, args, kwargs)
        store = pyro.get_param_store()
        _, trace = self._objective()  # creates every parameter, the guide's point masses included
        #: whether every term is an observed Bernoulli or Categorical site (classes can then be
        #: separated, see :mod:`pyro_mle.existence`); read here, not from a trace kept alive
        self.classification_only = existence.only_classification(trace)
        # the program's own params and the guide's point masses, not whatever else the global
        # store holds (a param left there by other code is not a parameter of this objective)
        used = {name for name, site in trace.nodes.items() if site["type"] == "param"}
        if guide is not None:
            used |= {
                name
                for name, site in poutine.trace(guide).get_trace(*args, **kwargs).nodes.items()
                if site["type"] == "param"
            }
        named = [(n, p) for n, p in store.named_parameters() if n in used]
        self.names = tuple(n for n, _ in named)
        self.params = [p for _, p in named]
        constraints = getattr(store, "_constraints", {})
        self.constraints = tuple(constraints.get(n) for n in self.names)
        #: a verified trace of the objective (:mod:`pyro_mle.compile`), used by :meth:`loss`
        #: and :meth:`value_and_grad` when set; ``None``: the program runs interpreted
        self.compiled: Callable[..., torch.Tensor] | None = None

    def loss(self) -> torch.Tensor:
        """The objective at the parameters' current values (through the trace when one is in use)."""
        if self.compiled is not None:
            return self.compiled(*self.params)
        return self._objective()[0]

    @property
    def indices(self) -> _PlateIndices:
        return self._objective.indices

    def __call__(self) -> tuple[torch.Tensor, Trace]:
        return self._objective()

    def trace(self) -> Trace:
        return self._objective.trace()

    def flat(self) -> torch.Tensor:
        """The parameters as one flat vector (a copy)."""
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def set_flat(self, x: torch.Tensor) -> None:
        """Write a flat vector into the parameters, in place."""
        with torch.no_grad():
            offset = 0
            for p in self.params:
                p.copy_(x[offset : offset + p.numel()].view_as(p))
                offset += p.numel()

    def flat_grad(self) -> torch.Tensor:
        """The parameters' ``.grad`` as one flat vector (zeros where there is none)."""
        return flat_grad(self.params)

    def value_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The objective and its gradient at the flat vector ``x`` (the parameters keep ``x``)."""
        self.set_flat(x)
        for p in self.params:
            p.grad = None
        loss = self.loss()
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return loss.detach(), flatten(grads, self.params)

    def hessian(self, x: torch.Tensor) -> torch.Tensor:
        """The dense Hessian at ``x`` from autograd (Hessian-vector products, see
        :func:`_dense_hessian`), always interpreted: torch's double backward through a trace was
        measured 2-4x slower than through the program's own graph."""
        self.set_flat(x)
        loss, _ = self._objective()
        return _dense_hessian(loss, self.params)

    def estimate(self) -> dict[str, torch.Tensor]:
        """Constrained point estimates by name, latent sites and params in model order."""
        return _estimate(self.structure, self.guide)

    def full_data_nll(self) -> float:
        """−log p(y | θ) over every example of every observed site, at the current values."""
        return _full_data_nll(self.model, self.guide, self.args, self.kwargs, self.structure)

    def full_data_hessian(self, x: torch.Tensor) -> torch.Tensor:
        """The Hessian of the objective over the whole data at ``x``, summed over the chunks of
        one sweep (see :meth:`full_data_value_and_grad`)."""
        self.set_flat(x)
        hessian: list[torch.Tensor] = []
        _sweep(self._objective, self.structure, observed_only=False, params=self.params, hessian=hessian)
        return hessian[0]

    def full_data_value_and_grad(self) -> tuple[float, torch.Tensor | None]:
        """The objective over the whole data at the current values, its gradient left in the
        parameters' ``.grad``: for a model that subsamples, one sweep over its plates in chunks
        of the minibatch size (each row once, priors once), what a minibatch run is judged by.
        Also returns the diagonal of the empirical Fisher information (flat; ``None`` with fewer
        than two chunks), the scale on which the gradient is read in standard errors."""
        for p in self.params:
            p.grad = None
        information: list[torch.Tensor | None] = []
        value = _sweep(
            self._objective, self.structure, observed_only=False, grad=True, params=self.params, information=information
        )
        return value, information[0]


def _dense_hessian(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """The Hessian of ``loss`` in ``params``: the rows are Hessian-vector products. With more
    than one thread (or on a GPU) they run in one backward pass vectorised with
    :func:`torch.vmap` over the rows of an identity, each pass over the data a matrix product
    instead of n matrix-vector products: 1.6x faster than a loop at 10^5 rows and 21
    parameters on 2 threads. On one thread the loop of products was as fast or faster (43 ms
    against 51 for logistic regression at 10^5 rows), and it is used there. Torch's older
    ``is_grads_batched`` route batches through its legacy vmap prototype, which copies the data
    per row and is slower than the loop. An operation without a batching rule falls back to
    the loop."""
    g = flatten(torch.autograd.grad(loss, params, create_graph=True, allow_unused=True), params)
    n = g.numel()
    if not g.requires_grad:  # the objective is linear in every parameter
        return torch.zeros(n, n, dtype=g.dtype, device=g.device)

    def row(v: torch.Tensor) -> torch.Tensor:
        return flatten(torch.autograd.grad(g, params, v, retain_graph=True, allow_unused=True), params)

    eye = torch.eye(n, dtype=g.dtype, device=g.device)
    h = None
    if torch.get_num_threads() > 1 or g.device.type != "cpu":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", UserWarning)  # a slow fallback loop inside vmap: use ours
                h = torch.vmap(row)(eye)
        except (RuntimeError, NotImplementedError, UserWarning):
            h = None
    if h is None:
        h = torch.stack([row(e) if g[i].requires_grad else torch.zeros_like(e) for i, e in enumerate(eye)])
    h = h.detach()
    return 0.5 * (h + h.T)


def objective(
    model: Callable[..., Any],
    *args: Any,
    method: str = "mle",
    init_loc_fn: Callable[[Message], torch.Tensor] | None = None,
    **kwargs: Any,
) -> PointObjective:
    r"""The MLE or MAP objective of a Pyro program, as a function of its parameters.

    Checks the program once at the initial point (observed sites, their shapes and finiteness;
    continuous latent sites), builds an :class:`~pyro.infer.autoguide.AutoDelta` guide for its
    latent sites, creates every parameter in the current param store, and returns a
    :class:`PointObjective`. This is what :func:`pyro_mle.fit` minimises.

    :param callable model: the Pyro program.
    :param str method: ``"mle"`` or ``"map"``.
    :param callable init_loc_fn: initial values of latent sites (default
        :func:`init_to_centre`: zero in the unconstrained space, independent of the prior).
    """
    if not isinstance(method, str) or method.lower() not in METHODS:
        raise ValueError(f"objective(model): method must be one of {list(METHODS)}; got {method!r}.")
    init_loc_fn = init_loc_fn or init_to_centre
    structure = _inspect(model, args, kwargs, init_loc_fn)
    guide = AutoDelta(model, init_loc_fn=init_loc_fn) if structure.latent else None
    return PointObjective(model, args, kwargs, method=method.lower(), structure=structure, guide=guide)
