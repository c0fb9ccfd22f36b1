r"""Exact point fits of objectives with absolute-error terms: median regression and the lasso.

A Laplace density puts an absolute value into the objective,

.. math:: -\log \mathrm{Laplace}(v \mid \mu, b) = \frac{|v - \mu|}{b} + \log 2b,

and the optimum of such an objective sits where some of the residuals :math:`r = v - \mu` are
**exactly zero**: at a vertex of the linear programme of least-absolute-deviation (median)
regression, at exact zeros of the coefficients of the lasso. The gradient jumps there, so L-BFGS
and Newton stall next to the optimum without reaching it (on statsmodels' Engel data the
median-regression intercept stopped at 0.0007 against 81.48). Two kinds of site count
(:func:`nonsmooth_sites`):

* **observed** Laplace sites (a :class:`~pyro_mle.likelihoods.Laplace` head): :math:`r = y -
  \mu(\theta)`; with a linear :math:`\mu` this is median regression; and observed asymmetric
  Laplace sites (:class:`~pyro_mle.likelihoods.AsymmetricLaplace`, the pinball loss), whose
  :math:`-\log p = c|r| + d\,r + \log Z` (:func:`_slopes`) keeps its kink in :math:`c|r|` and
  puts the linear :math:`d\,r` in the smooth part: quantile regression;
* under ``method="map"``, **latent** sites with a Laplace prior: :math:`r = w - \mu`; with a
  Normal likelihood of fixed scale :math:`\sigma` this is the lasso,
  :math:`\sum_i r_i^2 / 2\sigma^2 + \sum_j |w_j| / b` (scikit-learn's ``Lasso`` with
  :math:`\alpha = \sigma^2 / (n b)`).

:func:`solve` minimises such an objective in three stages.

1. **Majorise–minimise** (iteratively reweighted least squares). At the iterate
   :math:`\theta_k` each :math:`|r_i|` is replaced by the quadratic that touches it there,

   .. math:: |r| \le \frac{r^2}{2 w_i} + \frac{w_i}{2}, \qquad w_i = \max(|r_i(\theta_k)|, \delta)

   (AM–GM: :math:`(|r| - w)^2 \ge 0`), valid for every scale :math:`b > 0`, fixed or latent, and
   any :math:`\mu(\theta)`, linear or a network. The smooth surrogate is minimised by the damped
   Newton method of :func:`pyro_mle.optim.newton.newton` (by :func:`~pyro_mle.optim.lbfgs.lbfgs`
   above 2,000 parameters), so the true objective goes down at every outer iteration, up to the
   floor :math:`\delta`. The floor starts at the size of the residuals (their mean, at least the
   Laplace scale) and falls tenfold per iteration to a :math:`\sqrt\epsilon` fraction of it
   ("ε-continuation", Daubechies, DeVore, Fornasier & Güntürk, CPAM 2010): a lasso started at
   :math:`w = 0` would otherwise give every coefficient the weight :math:`1/\delta` and never
   move. This is the IRLS of statsmodels' ``QuantReg`` (Schlossmacher, JASA 1973; Hunter & Lange,
   *Quantile regression via an MM algorithm*, JCGS 2000) and the MM view of the lasso (Hunter &
   Li, *Variable selection using MM algorithms*, Ann. Stat. 2005). It is a Pyro handler,
   :class:`_Majorise`, that swaps each non-smooth site's distribution for the surrogate, so the
   objective's own code evaluates it, derivatives included. IRLS converges only linearly, never
   reaches an exact zero, and can creep for hundreds of iterations along a non-optimal vertex
   (on Engel, without continuation, it stalls 0.19 above the optimum with a relative change of
   1e-10 per iteration), hence:

2. **An active-set finish** that makes the kinks exact, for up to 2,000 parameters, tried as soon
   as majorise–minimise has roughly settled (relative change below :math:`\sqrt{\mathrm{rtol}}`)
   and again after twice as many iterations if it cannot certify its end point. A set :math:`Z`
   of terms is held at its kink, :math:`r_Z(\theta) = 0`; every other term keeps its sign, so
   its :math:`|r_i|` is smooth, and the objective on the manifold :math:`\{r_Z = 0\}` is smooth.
   Each iteration

   * restores :math:`r_Z = 0` by a minimum-norm Gauss–Newton step (exact for a linear
     :math:`\mu`; a held prior coordinate is set exactly to its location :math:`\mu_j`),
   * takes a Newton step in the null space of :math:`\partial r_Z/\partial\theta` with the
     Hessian of the Lagrangian (which carries the curvature of a nonlinear :math:`r`), modified
     as in :func:`~pyro_mle.optim.newton.newton` where it is not positive definite, with a
     second-order correction against the Maratos effect (Nocedal & Wright 2006, §15.6, §18.1),
     and cut at the first free term that would cross its kink, which then joins :math:`Z` (the
     ratio test of the simplex method),
   * once the reduced gradient vanishes, computes the multipliers :math:`u_Z` of the held terms,
     :math:`\nabla f_\mathrm{rest} + \sum_{i\in Z} c_i u_i \nabla r_i = 0` with
     :math:`c_i = \partial f / \partial |r_i|`, and releases the most violating term
     (:math:`|u_i| > 1`) with the sign of :math:`u_i`, which lowers the objective.

   It starts from the MM point with its near-zero terms held (as many as their Jacobian rows are
   independent). For least absolute deviations this is the "vertex polish" — the :math:`\rho`
   smallest residuals, :math:`\rho` the number of parameters that move :math:`\mu`, solved to
   zero — followed by a primal simplex method (Barrodale & Roberts, SIAM J. Numer. Anal. 1973):
   a release walks along an edge to the next vertex. For the lasso it is the active-set
   "feature-sign search" of Lee, Battle, Raina & Ng (*Efficient sparse coding algorithms*, NIPS
   2006) with Newton steps on the free set, as in the orthant-wise methods (Andrew & Gao, ICML
   2007): coordinates at :math:`\mu_j` are held there exactly, and the multiplier test is the KKT
   condition :math:`|\partial f_\mathrm{smooth} / \partial w_j| \le 1/b_j`. It also handles a
   latent scale, both kinds of site together, and a nonlinear :math:`\mu` (then it is a local
   method from the MM point). It never hands back a point worse than the MM point.

3. **A certificate.** ``converged`` only when the end point is first-order optimal: the
   *minimum-norm subgradient* — :math:`\nabla f_\mathrm{rest} + \sum_{i\in Z} c_i u_i \nabla
   r_i` over the terms at their kink, with :math:`u \in [-1, 1]^Z` chosen by bounded least
   squares — has relative size at most ``gtol``, measured as
   :func:`~pyro_mle.optim.stopping.relative_gradient` measures a gradient. For the lasso this is
   the KKT condition (OWL-QN's pseudo-gradient), for a vertex of LAD the linear programme's dual
   feasibility. For a convex objective (linear :math:`\mu`, fixed scale) it proves the global
   minimum to that tolerance.

Usage, on an objective built by :func:`pyro_mle.objective`::

    with pyro.get_param_store().scope():
        obj = pyro_mle.objective(model, x, y, method="map")
        if nonsmooth_sites(obj):
            result = solve(obj, rtol=1e-10, gtol=1e-7, num_data=obj.structure.num_data)
            obj.estimate(), result.converged, result.message
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pyro.distributions as dist
import scipy.linalg
import scipy.optimize
import torch
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution, TorchDistribution
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message
from pyro.poutine.util import site_is_subsample
from torch.distributions import constraints

from .objective import PointObjective
from .optim.lbfgs import lbfgs
from .optim.newton import newton
from .optim.stopping import relative_change
from .optim.vectors import flatten

__all__ = ["NonsmoothResult", "nonsmooth_sites", "solve"]

OBSERVED, PRIOR = "observed", "prior"
#: Dense Newton (a Hessian from autograd, one backward pass per parameter) minimises the
#: surrogate up to this many parameters, and the active-set finish runs; L-BFGS above.
NEWTON_MAX = 2000
#: Newton steps on the surrogate per outer iteration: one minimises a quadratic surrogate (a
#: linear mean); otherwise MM needs only a decrease of the surrogate, and a few cheap outer
#: iterations beat fully converged inner ones (a tiny network: 2 s against 5 s with 20).
_INNER_NEWTON = 3
_INNER_LBFGS = 200
#: The certificate takes one backward pass per term at its kink; beyond this many it is skipped.
_MAX_KINKS = 2000
#: Near-zero terms of the MM point that start the active set: |r| below this fraction of the
#: site's residual size (:meth:`_Problem.unit`). A wrong guess costs iterations, not the answer.
_START_FRACTION = 1e-3
_ARMIJO = 1e-4
_MAX_HALVINGS = 30


@dataclass(frozen=True)
class NonsmoothResult:
    """The outcome of :func:`solve`; the parameters themselves are left in the objective.

    Fields:
      * ``converged``: whether the end point passed the first-order optimality certificate
        (see :mod:`pyro_mle.nonsmooth`).
      * ``num_steps``: outer majorise–minimise iterations plus active-set steps.
      * ``message``: what was done and why it stopped, in words.
      * ``loss``: the true objective at the end point.
      * ``stationarity``: the relative size of the minimum-norm subgradient there (``nan`` when
        it was not computed).
    """

    converged: bool
    num_steps: int
    message: str
    loss: float = math.nan
    stationarity: float = math.nan


# ----------------------------------------------------------------------------- sites
def _laplace_base(fn: object) -> TorchDistribution | None:
    """The Laplace (or Pyro's asymmetric Laplace: the pinball loss of quantile regression) under
    ``.to_event``, ``.expand`` and ``.mask`` wrappers, or ``None``."""
    while isinstance(fn, (torch.distributions.Independent, ExpandedDistribution, MaskedDistribution)):
        fn = fn.base_dist
    return fn if isinstance(fn, (torch.distributions.Laplace, dist.AsymmetricLaplace)) else None


def _slopes(base: TorchDistribution) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""A Laplace term as :math:`c|r| + d\,r + \log Z`: for the asymmetric Laplace with left and
    right scales :math:`L, R`, :math:`-\log p = |r|(1/L + 1/R)/2 + r(1/R - 1/L)/2 + \log(L + R)`,
    so only the :math:`|r|` part has a kink and the linear part is smooth; for the Laplace
    :math:`c = 1/b`, :math:`d = 0`, :math:`Z = 2b`."""
    if isinstance(base, dist.AsymmetricLaplace):
        left, right = base.left_scale, base.right_scale
        return 0.5 * (1 / left + 1 / right), 0.5 * (1 / right - 1 / left), torch.log(left + right)
    return 1 / base.scale, torch.zeros_like(base.scale), torch.log(2 * base.scale)


def _one_scale(scale: torch.Tensor) -> bool:
    r"""A fixed scale, or one fitted value for every element (a latent scale, broadcast).

    A fitted scale per element makes the density unbounded (:math:`b_i \to 0` at a zero
    residual); such sites are left to the smooth path and its existence checks.
    """
    return not scale.requires_grad or scale.numel() == 1 or all(s == 0 for s in scale.stride())


def nonsmooth_sites(obj: PointObjective) -> dict[str, str]:
    """The sites that make ``obj`` non-smooth, by name: ``"observed"`` for an observed Laplace
    site, ``"prior"`` for a latent site with a Laplace prior under ``method="map"`` (MLE masks
    priors). A Laplace under ``.to_event``, ``.expand`` and ``.mask`` counts; its scale must be
    fixed or a single fitted value (a latent scale). Read from one trace of the objective."""
    with torch.enable_grad():  # whether a scale or location is fitted shows in requires_grad
        trace = obj.trace()
    found: dict[str, str] = {}
    for name, site in trace.nodes.items():
        if (
            site["type"] != "sample"
            or site_is_subsample(site)
            or site["infer"].get("_deterministic")
            or site["mask"] is False
        ):
            continue
        base = _laplace_base(site["fn"])
        if base is None or not _one_scale(base.scale):
            continue
        if isinstance(base, dist.AsymmetricLaplace) and not _one_scale(base.asymmetry):
            continue
        if site["is_observed"]:
            found[name] = OBSERVED
        elif obj.method == "map":
            found[name] = PRIOR
    return found


# ----------------------------------------------------------------------------- handlers
class _Surrogate(TorchDistribution):
    r"""A Laplace whose :math:`|r|` is replaced by ``penalty(r)``:
    :math:`\log q(v) = -c\,\mathrm{penalty}(r) - d\,r - \log Z` with :math:`r = v - \mu` and
    :math:`c, d, Z` from :func:`_slopes` (:math:`1/b, 0, 2b` for a Laplace). The normaliser is
    kept, so a latent scale sees the same objective; batch and event shape are the Laplace's."""

    arg_constraints: dict = {}
    support = constraints.real

    def __init__(self, laplace: TorchDistribution, penalty: Callable[[torch.Tensor], torch.Tensor]):
        self.loc, self.penalty = laplace.loc, penalty
        self.slope, self.tilt, self.log_normaliser = _slopes(laplace)
        super().__init__(laplace.batch_shape, laplace.event_shape, validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        r = value - self.loc
        return -self.penalty(r) * self.slope - self.tilt * r - self.log_normaliser


def _rewrap(fn: object, base: TorchDistribution) -> TorchDistribution:
    """``fn`` with its Laplace replaced by ``base``, the wrappers rebuilt around it."""
    if isinstance(fn, torch.distributions.Independent):
        return dist.Independent(_rewrap(fn.base_dist, base), fn.reinterpreted_batch_ndims)
    if isinstance(fn, ExpandedDistribution):
        return ExpandedDistribution(_rewrap(fn.base_dist, base), fn.batch_shape)
    if isinstance(fn, MaskedDistribution):
        return MaskedDistribution(_rewrap(fn.base_dist, base), fn._mask)
    return base


class _Penalise(Messenger):
    r"""Replaces :math:`|r|` in the Laplace sites named in ``sites`` by :meth:`penalty`, and keeps
    each site's residuals :math:`r = v - \mu` (in the autograd graph) in ``residuals``.

    Used as a context manager around evaluations of a :class:`~pyro_mle.objective.PointObjective`,
    it sits at the bottom of Pyro's handler stack, below the objective's own ``trace``,
    ``replay`` and ``likelihood_only``. That is early enough: Pyro hands a message to every
    handler's ``_process_message`` from the top of the stack down before the site is sampled,
    and ``trace`` records the site only afterwards, in ``_postprocess_message`` (bottom up), so
    the trace, and every log-prob computed from it, holds the replacement. The guide's point
    masses, which carry the same names, are not Laplace and are left alone. The penalty runs
    when the log-prob is computed, after the trace.
    """

    def __init__(self, sites: Mapping[str, str]):
        super().__init__()
        self.sites = sites
        self.residuals: dict[str, torch.Tensor] = {}
        self.scales: dict[str, float] = {}  # each Laplace's mean scale b, a unit for its residuals

    def _pyro_sample(self, msg: Message) -> None:
        kind = self.sites.get(msg["name"])
        if kind is None or bool(msg["is_observed"]) != (kind == OBSERVED):
            return
        base = _laplace_base(msg["fn"])
        if base is not None:
            name = msg["name"]
            self.scales[name] = float((1 / _slopes(base)[0]).detach().mean())  # b for a Laplace
            msg["fn"] = _rewrap(msg["fn"], _Surrogate(base, lambda r: self._penalty(name, r)))

    def _penalty(self, name: str, r: torch.Tensor) -> torch.Tensor:
        self.residuals[name] = r
        return self.penalty(name, r)

    def penalty(self, name: str, r: torch.Tensor) -> torch.Tensor:
        return r.abs()


class _Majorise(_Penalise):
    r"""The majoriser at the current iterate, :math:`|r| \to r^2/2w + w/2`; ``weights[name]`` is
    the :math:`w` of each site (the shape of its residuals)."""

    def __init__(self, sites: Mapping[str, str], weights: Mapping[str, torch.Tensor]):
        super().__init__(sites)
        self.weights = weights

    def penalty(self, name: str, r: torch.Tensor) -> torch.Tensor:
        w = self.weights[name]
        return 0.5 * (r * r / w + w)


class _Kinks(_Penalise):
    r"""The true objective, with the terms in ``leaf[name]`` (a boolean of the residuals' shape)
    read through leaf tensors ``leaves[name]`` that hold their :math:`|r|`. The objective's
    gradient with respect to the parameters is then that of everything else (the smooth part,
    and the other terms with their signs), and its gradient with respect to a leaf is the weight
    :math:`c_i = \partial f / \partial |r_i|` of that term, scale, mask and plate factors
    included."""

    def __init__(self, sites: Mapping[str, str], leaf: Mapping[str, torch.Tensor]):
        super().__init__(sites)
        self.leaf = leaf
        self.leaves: dict[str, torch.Tensor] = {}

    def penalty(self, name: str, r: torch.Tensor) -> torch.Tensor:
        mask = self.leaf.get(name)
        if mask is None or not bool(mask.any()):
            return r.abs()
        leaf = r.detach().abs().requires_grad_(True)
        self.leaves[name] = leaf
        return torch.where(mask, leaf, r.abs())


class _Lagrangian(_Penalise):
    r"""The terms with a finite ``coef[name]`` enter linearly, :math:`|r_i| \to u_i r_i`: with the
    multipliers :math:`u` of the held terms (and the new sign of a released one) this is the
    Lagrangian of the problem on the manifold :math:`r_Z = 0`, whose Hessian carries the
    curvature of a nonlinear :math:`r` (Nocedal & Wright 2006, §18.1); without it the steps of a
    nonlinear mean converge only linearly."""

    def __init__(self, sites: Mapping[str, str], coef: Mapping[str, torch.Tensor]):
        super().__init__(sites)
        self.coef = coef

    def penalty(self, name: str, r: torch.Tensor) -> torch.Tensor:
        coef = self.coef[name]
        linear = torch.isfinite(coef)
        return torch.where(linear, torch.where(linear, coef, 0.0) * r, r.abs())


# ----------------------------------------------------------------------------- evaluations
def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()


@dataclass
class _Point:
    """One evaluation at ``x`` with the terms of ``leaf`` read through leaves: the loss, the
    gradient of the rest, the weight of every leaf term (zero elsewhere), the residuals of all
    terms, flat, in the autograd graph. The graph holds until the parameters are next written
    (``set_flat`` bumps their version counters): take :meth:`rows` before evaluating again."""

    x: torch.Tensor
    loss: float
    grad: torch.Tensor
    weight: torch.Tensor
    r: torch.Tensor
    params: list[torch.Tensor]

    def rows(self, which: list[int]) -> torch.Tensor:
        r"""The rows :math:`\partial r_i / \partial\theta` of the terms ``which``, ``(len, P)``."""
        if not which or not self.r.requires_grad:
            return torch.zeros(len(which), self.x.numel(), dtype=self.x.dtype, device=self.x.device)
        rows = [
            flatten(torch.autograd.grad(self.r[i], self.params, retain_graph=True, allow_unused=True), self.params)
            for i in which
        ]
        return torch.stack(rows).detach()


class _Problem:
    """The objective seen by the solver: true values, surrogate values, kink information."""

    def __init__(self, obj: PointObjective, sites: Mapping[str, str], num_data: float):
        self.obj, self.sites, self.num_data = obj, dict(sites), num_data
        self.size = sum(p.numel() for p in obj.params)
        x = obj.flat()
        self.eps = float(torch.finfo(x.dtype).eps)
        f, handler = self._true(x)
        if not math.isfinite(f):
            obj.set_flat(x)
            raise ValueError(
                "nonsmooth.solve: the objective is not finite at the start; start where it is (init_loc_fn, the "
                "initial pyro.param values)."
            )
        residuals = handler.residuals
        self.start_loss, self.start_residuals = f, residuals
        self.shapes = {n: r.shape for n, r in residuals.items()}
        #: each site's Laplace scale b at the start: the unit of its residuals (|r|/b enters the
        #: objective), used where the residuals themselves are all zero (a lasso at w = 0)
        self.units = dict(handler.scales)
        #: where the majoriser's floor starts (see _Solver._mm_step)
        self.start = {n: self.unit(n, r) for n, r in residuals.items()}
        self.coordinate, self.location = self._coordinates(residuals)

    def _coordinates(self, residuals: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """For each term, the flat parameter index it is a coordinate of (−1 if none) and the
        prior location it is held at: a Laplace prior with a fixed location on a latent site
        whose AutoDelta parameter has the residuals' shape (its value is the parameter: the
        support is real)."""
        obj = self.obj
        offsets, offset = {}, 0
        for name, q in zip(obj.names, obj.params):
            offsets[name] = (offset, q)
            offset += q.numel()
        with torch.enable_grad():  # whether the location is fitted shows in requires_grad
            trace = obj.trace()
        index, loc = [], []
        for name, r in residuals.items():
            entry = offsets.get(f"AutoDelta.{name}")
            base = _laplace_base(trace.nodes[name]["fn"])
            coordinate = entry is not None and entry[1].shape == r.shape and not base.loc.requires_grad
            if self.sites[name] == PRIOR and coordinate:
                index.append(torch.arange(entry[0], entry[0] + r.numel(), device=r.device))
                loc.append(torch.broadcast_to(base.loc, r.shape).reshape(-1).to(r.dtype))
            else:
                index.append(torch.full((r.numel(),), -1, dtype=torch.long, device=r.device))
                loc.append(torch.zeros(r.numel(), dtype=r.dtype, device=r.device))
        return torch.cat(index), torch.cat(loc)

    def snap(self, x: torch.Tensor, held: torch.Tensor) -> torch.Tensor:
        """``x`` with every held coordinate term set exactly to its prior location."""
        which = held & (self.coordinate >= 0)
        if not bool(which.any()):
            return x
        x = x.clone()
        x[self.coordinate[which]] = self.location[which].to(x.dtype)
        return x

    def true(self, x: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
        """The objective at ``x`` and each site's residuals (``nan`` when it cannot be evaluated)."""
        value, handler = self._true(x)
        return value, handler.residuals

    def _true(self, x: torch.Tensor) -> tuple[float, _Penalise]:
        self.obj.set_flat(x)
        handler = _Penalise(self.sites)
        try:
            with torch.no_grad(), handler:
                loss, _ = self.obj()
        except (ValueError, RuntimeError):
            return math.nan, handler
        value = float(loss)
        return (value if math.isfinite(value) else math.nan), handler

    def value_and_grad(self, x: torch.Tensor, handler: Messenger) -> tuple[float, torch.Tensor]:
        try:
            with torch.enable_grad(), handler:
                loss, grad = self.obj.value_and_grad(x)
        except (ValueError, RuntimeError):  # an invalid trial point: too long a step
            return math.inf, torch.zeros_like(x)
        return float(loss), grad

    def hessian(self, x: torch.Tensor, handler: Messenger) -> torch.Tensor:
        with torch.enable_grad(), handler:
            return self.obj.hessian(x)

    def unit(self, name: str, r: torch.Tensor) -> float:
        """The size of a site's residuals: their mean |r|, at least the Laplace scale."""
        return max(float(r.abs().mean()) if r.numel() else 0.0, self.units[name])

    def floor(self, name: str, r: torch.Tensor) -> float:
        r"""The majoriser's final floor :math:`\delta`: a :math:`\sqrt\epsilon` fraction of the
        residuals' size."""
        return math.sqrt(self.eps) * self.unit(name, r)

    def flat(self, per_site: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([per_site[n].reshape(-1) for n in self.shapes])

    def per_site(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            out[name] = flat[offset : offset + size].reshape(shape)
            offset += size
        return out

    def point(self, x: torch.Tensor, leaf: torch.Tensor) -> _Point:
        """Evaluate at ``x`` with the terms ``leaf`` (flat boolean) read through leaves."""
        obj = self.obj
        handler = _Kinks(self.sites, self.per_site(leaf))
        obj.set_flat(x)
        with torch.enable_grad(), handler:
            loss, _ = obj()
        names = list(handler.leaves)
        grads = torch.autograd.grad(
            loss, list(obj.params) + [handler.leaves[n] for n in names], retain_graph=True, allow_unused=True
        )
        g = flatten(grads[: len(obj.params)], obj.params).detach()
        weight = {n: torch.zeros(s, dtype=x.dtype, device=x.device) for n, s in self.shapes.items()}
        for name, lg in zip(names, grads[len(obj.params) :]):
            if lg is not None:
                weight[name] = lg.detach()
        r = torch.cat([handler.residuals[n].reshape(-1) for n in self.shapes])
        return _Point(x, float(loss.detach()), g, self.flat(weight), r, list(obj.params))

    def jvp(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        r"""The directional derivatives :math:`(\partial r / \partial\theta)\, d` of every term at
        ``x``: the graph of a vector–Jacobian product differentiated with respect to its cotangent
        (a fresh evaluation: writing the parameters in place invalidates older graphs)."""
        handler = _Penalise(self.sites)
        self.obj.set_flat(x)
        with torch.enable_grad(), handler:
            self.obj()
            r = torch.cat([handler.residuals[n].reshape(-1) for n in self.shapes])
            u = torch.zeros_like(r, requires_grad=True)
            params = list(self.obj.params)
            vjp = flatten(torch.autograd.grad(r, params, grad_outputs=u, create_graph=True, allow_unused=True), params)
            if not vjp.requires_grad:
                return torch.zeros_like(r).detach()
            (out,) = torch.autograd.grad(vjp @ d, u, allow_unused=True)
        return (torch.zeros_like(r) if out is None else out).detach()

    def scale(self, x: torch.Tensor, loss: float) -> torch.Tensor:
        """Per-coordinate factor of :func:`~pyro_mle.optim.stopping.relative_gradient`."""
        return x.abs().clamp(min=1.0) / max(abs(loss), self.num_data, 1.0)

    def stationarity(self, x: torch.Tensor, at_kink: torch.Tensor) -> tuple[float, float, int]:
        r"""(loss, relative size of the minimum-norm subgradient, number of kinks) at ``x``.

        The subgradients of :math:`f = f_\mathrm{rest} + \sum_{i\in Z} c_i |r_i|` at a point with
        :math:`r_Z = 0` are :math:`\nabla f_\mathrm{rest} + \sum_{i \in Z} c_i u_i \nabla r_i`,
        :math:`u \in [-1, 1]^Z`; the :math:`u` that makes it smallest in the metric of
        :func:`~pyro_mle.optim.stopping.relative_gradient` is found by bounded least squares.
        """
        pt = self.point(x, at_kink)
        scale = self.scale(x, pt.loss)
        which = [i for i in torch.nonzero(at_kink & (pt.weight != 0)).flatten().tolist()]
        if len(which) > _MAX_KINKS:
            return pt.loss, math.nan, len(which)
        g = _numpy(pt.grad * scale)
        if not which:
            return pt.loss, float(np.abs(g).max(initial=0.0)), 0
        a = _numpy((pt.rows(which) * pt.weight[which, None]).T * scale[:, None])
        # bounded-variable least squares is exact and fast for a few hundred kinks; the
        # trust-region reflective method scales to more
        method = "bvls" if a.shape[1] <= 200 else "trf"
        u = scipy.optimize.lsq_linear(a, -g, bounds=(-1.0, 1.0), method=method).x
        return pt.loss, float(np.abs(g + a @ u).max(initial=0.0)), len(which)


# ----------------------------------------------------------------------------- the solver
def solve(
    obj: PointObjective,
    *,
    rtol: float,
    gtol: float,
    num_data: float,
    record: Callable[[float], None] = lambda loss: None,
    max_outer: int = 500,
) -> NonsmoothResult:
    r"""Minimise an objective with absolute-error (Laplace) terms exactly: majorise–minimise, an
    active-set finish, and a first-order optimality certificate (see :mod:`pyro_mle.nonsmooth`).

    :param obj: the objective; its parameters start where they are and end at the estimate.
    :param rtol: the majorise–minimise loop ends when the true objective's relative change over
        an outer iteration is at most ``rtol`` and the relative step at most ``sqrt(rtol)``.
    :param gtol: the tolerance on the relative size of the minimum-norm subgradient.
    :param num_data: the loss's typical size for the relative measures (data points).
    :param record: called with the true objective at the start, after every outer iteration and
        after the finish, the parameters holding that point.
    :param max_outer: the most majorise–minimise iterations; the active set takes at most as many
        steps again.
    :raises ValueError: when ``obj`` has no non-smooth site, or its objective is not finite at
        the start.
    """
    sites = nonsmooth_sites(obj)
    if not sites:
        raise ValueError(
            "nonsmooth.solve: the objective has no non-smooth site (an observed Laplace site, or a latent site "
            "with a Laplace prior under method='map'); minimise it with pyro_mle.optim instead."
        )
    problem = _Problem(obj, sites, num_data)
    return _Solver(problem, rtol=rtol, gtol=gtol, record=record, max_outer=max_outer).run()


class _Solver:
    def __init__(self, problem: _Problem, *, rtol: float, gtol: float, record: Callable, max_outer: int):
        self.p, self.rtol, self.gtol, self.record, self.max_outer = problem, rtol, gtol, record, max_outer
        self.notes: list[str] = []

    def _record(self, x: torch.Tensor, loss: float) -> None:
        self.p.obj.set_flat(x)
        self.record(loss)

    def run(self) -> NonsmoothResult:
        p = self.p
        x, f, residuals = p.obj.flat(), p.start_loss, p.start_residuals
        self._record(x, f)
        finish = _ActiveSet(p, self.gtol, self.max_outer) if p.size <= NEWTON_MAX else None
        outer, rel, step, next_try, attempts, steps = 0, math.inf, math.inf, 0, 0, 0
        done = certified = False
        note = f"no active-set finish above {NEWTON_MAX} parameters"
        while True:
            out_of_steps = outer >= self.max_outer
            at_floor = False
            if not out_of_steps:
                x_new, f_new, res_new, at_floor = self._mm_step(x, residuals, outer)
                outer += 1
                if not math.isfinite(f_new):
                    p.obj.set_flat(x)
                    self.notes.append(f"the objective was not finite after MM iteration {outer}; kept the one before")
                    out_of_steps = True
                else:
                    rel = relative_change(f_new, f)
                    step = float(((x_new - x).abs() / x.abs().clamp(min=1.0)).max()) if x.numel() else 0.0
                    x, f, residuals = x_new, f_new, res_new
                    self._record(x, f)
            done = at_floor and rel <= self.rtol and step <= math.sqrt(self.rtol)
            last = done or out_of_steps
            # The finish is exact and certified, so it is tried as soon as majorise–minimise has
            # settled roughly, and again after twice as many iterations if it fails: IRLS itself
            # takes hundreds of iterations to creep to the last digits or along a non-optimal
            # vertex (on Engel it stalls there, 0.19 above the optimum).
            ready = at_floor and rel <= math.sqrt(self.rtol) and outer >= next_try
            if finish is not None and (ready or last):
                attempts += 1
                x_fin, f_fin, taken, certified, note = finish.run(x, f, residuals)
                steps += taken
                if certified or last:
                    if not torch.equal(x_fin, x):
                        x, f = x_fin, f_fin
                        self._record(x, f)
                    break
                next_try = 2 * outer
                p.obj.set_flat(x)
            elif last:
                break
        what = ", ".join(f"{kind} site {name!r}" for name, kind in p.sites.items())
        how = "relative change" if done or certified else "stopped: relative change"
        mm = (
            f"majorise–minimise (IRLS) for the absolute-error terms of {what}: {outer} iterations ({how} "
            f"{rel:.2g}, relative step {step:.2g})"
        )
        if attempts > 1:
            note += f" (attempt {attempts})"
        # the certificate, from the true objective at the end point
        _, residuals = p.true(x)
        at_kink = p.flat({n: r.abs() <= 10 * p.floor(n, r) for n, r in residuals.items()})
        f, measure, count = p.stationarity(x, at_kink)
        p.obj.set_flat(x)
        if math.isnan(measure):
            converged = False
            cert = f"no optimality certificate ({count} terms at their kink, more than {_MAX_KINKS})"
        else:
            converged = measure <= self.gtol
            cert = (
                f"first-order optimality: relative minimum-norm subgradient {measure:.2g} "
                f"{'<=' if converged else '>'} gtol {self.gtol:g} with {count} terms at their kink"
            )
        message = "; ".join([mm, *self.notes, note, cert]) + "."
        if not converged:
            message += (
                " Not a certified optimum: raise num_steps, or check the model (a nonlinear mean from a poor start, "
                "an objective without a minimum)."
            )
        return NonsmoothResult(converged, outer + steps, message, f, measure)

    # -------------------------------------------------------------- stage 1
    def _mm_step(self, x, residuals, outer):
        """One majorise–minimise iteration: (x, loss, residuals, whether the floor is final)."""
        p = self.p
        # The floor δ starts at the residuals' own size and falls tenfold per iteration to its
        # final √ε fraction ("ε-continuation", Daubechies, DeVore, Fornasier & Güntürk, CPAM
        # 2010): with the final floor from the start, terms at zero (a lasso started at w = 0)
        # get weights 1/δ ≈ 1e8 and hardly move again.
        fall = 0.1**outer
        at_floor = fall <= math.sqrt(p.eps)
        floors = {n: max(p.floor(n, r), 0.0 if at_floor else p.start[n] * fall) for n, r in residuals.items()}
        weights = {n: r.abs().clamp(min=floors[n]) for n, r in residuals.items()}
        x_new = self._inner(x, _Majorise(p.sites, weights))
        f_new, res_new = p.true(x_new)
        return x_new, f_new, res_new, at_floor

    def _inner(self, x: torch.Tensor, handler: _Majorise) -> torch.Tensor:
        """Minimise the surrogate from ``x``: Newton steps, or L-BFGS for many parameters."""
        p = self.p
        if p.size <= NEWTON_MAX:

            def converged(z: torch.Tensor, loss: float, grad: torch.Tensor) -> bool:
                # At least one step: near the optimum the gradient of the smooth pieces is small
                # relative to the loss long before the kinks are reached, and a surrogate that
                # starts "converged" would freeze the outer loop.
                return not torch.equal(z, x) and _max(grad * p.scale(z, loss)) <= self.gtol

            try:
                return newton(
                    lambda z: p.value_and_grad(z, handler),
                    x,
                    hessian=lambda z: p.hessian(z, handler),
                    max_steps=_INNER_NEWTON,
                    converged=converged,
                    max_params=NEWTON_MAX,
                ).x
            except (ValueError, RuntimeError, NotImplementedError):
                pass  # no second derivative: L-BFGS steps instead
        obj = p.obj
        obj.set_flat(x)

        def evaluate(probe: bool) -> torch.Tensor | None:
            for q in obj.params:
                q.grad = None
            try:
                with torch.enable_grad(), handler:
                    loss, _ = obj()
            except (ValueError, RuntimeError):
                if probe:
                    return None
                raise
            if not bool(torch.isfinite(loss)):
                return None if probe else loss.detach()
            loss.backward()
            return loss.detach()

        lbfgs(evaluate, obj.params, num_steps=_INNER_LBFGS, lr=1.0, rtol=self.rtol, gtol=self.gtol, num_data=p.num_data)
        return obj.flat()


def _max(t: torch.Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


class _ActiveSet:
    """Stage 2 of :mod:`pyro_mle.nonsmooth`: the terms ``held`` are kept at their kink, the
    others keep their sign; Newton steps on that smooth manifold, the ratio test, releases by
    the multipliers."""

    def __init__(self, problem: _Problem, gtol: float, max_steps: int):
        self.p, self.gtol, self.max_steps = problem, gtol, max_steps

    def _start(self, x: torch.Tensor, residuals: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(held, live): the near-zero terms of the MM point, the smallest first, as long as their
        rows of the Jacobian are independent; the terms that count at all (weight not zero)."""
        p = self.p
        everything = torch.ones(sum(r.numel() for r in residuals.values()), dtype=torch.bool, device=x.device)
        pt = p.point(x, everything)
        live = pt.weight != 0
        r = pt.r.detach()
        near = p.flat({n: res.abs() <= _START_FRACTION * p.unit(n, res) for n, res in residuals.items()}) & live
        held = torch.zeros_like(live)
        candidates = sorted(torch.nonzero(near).flatten().tolist(), key=lambda i: float(r[i].abs()))
        if candidates:
            # Gram–Schmidt on the candidates' rows: keep a term when its row adds a dimension
            rows = _numpy(pt.rows(candidates[: 2 * x.numel()]))
            basis = np.zeros((0, x.numel()))
            for i, row in zip(candidates, rows):
                rest = row - basis.T @ (basis @ row)
                norm = float(np.linalg.norm(rest))
                if norm > math.sqrt(p.eps) * float(np.linalg.norm(row)):
                    basis = np.vstack([basis, rest / norm])
                    held[i] = True
                if len(basis) == x.numel():
                    break
        return held, live

    def run(self, x: torch.Tensor, f: float, residuals: Mapping[str, torch.Tensor]):
        """(x, loss, steps taken, whether the optimality conditions hold, what was done)."""
        p = self.p
        x0, f0 = x, f
        held, live = self._start(x, residuals)
        snapped = p.snap(x, held)
        steps = releases = hits = 0
        if not torch.equal(snapped, x):  # held coordinates set exactly to their location: a step
            x, steps = snapped, 1
        fresh: tuple[int, float] | None = None  # a term just released, and its new sign
        # whether a Newton step has been taken on the current active set: a quadratic is then
        # solved exactly, where the gradient test alone would accept the MM point's accuracy
        polished = False
        ok, why = False, ""
        for _ in range(self.max_steps):
            leaf = held.clone()
            if fresh is not None:
                leaf[fresh[0]] = True
            pt = p.point(x, leaf)
            f = pt.loss
            hz = torch.nonzero(held).flatten().tolist()
            jz = pt.rows(hz)
            rz = pt.r.detach()[hz]
            if fresh is None and hz and _max(rz) > 64 * p.eps * max(_max(pt.r.detach()[live]), 1.0):
                # bring the held terms to their kink: a minimum-norm Gauss–Newton step, exact for a
                # linear mean, and coordinates set exactly (not a descent step: it may cost a little)
                x_new = p.snap(x + _restoration(jz, rz, p.eps), held)
                f_new, _ = p.true(x_new)
                if not math.isfinite(f_new):
                    why = "the objective is not finite where the held terms are at their kink"
                    break
                x, f, polished = x_new, f_new, False
                steps += 1
                continue
            model = pt.grad.clone()  # the gradient of the sign-fixed model
            row = None
            if fresh is not None:
                (row,) = pt.rows([fresh[0]])
                model += fresh[1] * pt.weight[fresh[0]] * row
            scale = p.scale(x, f)
            # multipliers of the held terms, least squares: rest + Σ c_i u_i ∇r_i = reduced
            a = (jz * pt.weight[hz, None]).T  # (P, |Z|)
            u, reduced = _multipliers(model, a, scale)
            vertex = bool(hz) and np.linalg.matrix_rank(_numpy(jz)) == x.numel()
            small = reduced <= self.gtol
            if fresh is None and small and (polished or vertex):
                if not hz:
                    ok = True
                    break
                violation = (u.abs() - 1.0) * (a * scale[:, None]).abs().max(dim=0).values
                k = int(torch.argmax(violation))
                if float(violation[k]) <= self.gtol:
                    ok = True
                    break
                held[hz[k]] = False
                fresh = (hz[k], float(torch.sign(u[k])))
                releases += 1
                polished = False
                continue
            coef = torch.full_like(pt.r.detach(), math.nan)
            coef[hz] = u
            if fresh is not None:
                coef[fresh[0]] = fresh[1]
            lagrangian = _Lagrangian(p.sites, p.per_site(coef))
            d = self._direction(pt, model, hz, jz, fresh, row, lagrangian)
            moved = None
            if d is not None:
                moved = self._step(pt, model, d, held, live, fresh, lagrangian, jz, (leaf, a, reduced))
            if moved is None:
                if fresh is None and small:  # at the optimum of this active set to rounding
                    polished = True
                    continue
                why = "no step along the active-set direction lowers the objective"
                break
            x, f, hit = moved
            polished = hit is None
            if hit is not None:
                held[hit] = True
                x = p.snap(x, held)
                hits += 1
            steps += 1
            fresh = None
        else:
            why = f"{self.max_steps} active-set iterations"
        if f > f0 + 64 * p.eps * abs(f0):  # never hand back a worse point than the MM one
            p.obj.set_flat(x0)
            return x0, f0, 0, False, f"active-set finish rejected (objective {f:.10g} above the MM point's {f0:.10g})"
        counts = {n: int(h.sum()) for n, h in p.per_site(held).items()}
        kept = ", ".join(
            f"{k} residuals of {n!r} held at zero"
            if p.sites[n] == OBSERVED
            else f"{k} of {n!r} exactly at its prior location"
            for n, k in counts.items()
        )
        note = (
            f"active-set finish: {kept}; {steps} steps, {hits} terms reaching their kink, {releases} released by "
            f"their multipliers, objective {f0 - f:.2g} below the MM point" + ("" if ok else f" (stopped: {why})")
        )
        p.obj.set_flat(x)
        return x, f, steps + releases, ok, note

    def _direction(self, pt: _Point, model, hz, jz, fresh, row, lagrangian) -> torch.Tensor | None:
        """Newton on the manifold r_Z = 0: in the null space of ∂r_Z/∂θ, with the Hessian of the
        Lagrangian (an edge direction instead where it would send a released term back)."""
        p = self.p
        x = pt.x
        n = x.numel()
        j = _numpy(jz)
        rz = np.zeros(len(hz))  # the held terms are at their kink (restored)
        if hz:
            _, s, vt = scipy.linalg.svd(j, full_matrices=True)
            rank = int((s > s.max(initial=0.0) * max(j.shape) * p.eps).sum())
            null = vt[rank:].T
        else:
            null = np.eye(n)
        d = np.zeros(n)
        if null.shape[1]:
            h = _numpy(p.hessian(x, lagrangian))
            if not np.isfinite(h).all():
                return None
            d = null @ _newton_direction(null.T @ h @ null, null.T @ _numpy(model), p.eps)
        d = torch.as_tensor(d, dtype=x.dtype, device=x.device)
        if fresh is not None:
            if fresh[1] * float(row @ d) <= 0:
                # Newton would send the released term back across its kink: move along the edge
                # where the other held terms stay at zero and this one takes its new sign.
                system = np.vstack([j, _numpy(row)[None, :]]) if hz else _numpy(row)[None, :]
                rhs = np.concatenate([-rz, [fresh[1]]])
                d = torch.as_tensor(scipy.linalg.lstsq(system, rhs)[0], dtype=x.dtype, device=x.device)
                if float(model @ d) >= 0:
                    return d * 0
        return d

    def _step(self, pt: _Point, model, d, held, live, fresh, lagrangian, jz, current):
        """Backtracking from the full step, cut at the first free term that reaches its kink.

        A step is taken when it lowers the objective by Armijo's rule, or when it is the full
        step, leaves the objective unchanged to rounding and halves the reduced gradient, as in
        :func:`~pyro_mle.optim.newton.newton`: in float32 a scale can be a Newton step from its
        optimum where the loss no longer shows the difference but the gradient does."""
        p = self.p
        x, f = pt.x, pt.loss
        r = pt.r.detach()
        rate = p.jvp(x, d)
        free = live & ~held
        if fresh is not None:
            free[fresh[0]] = False
        crossing = free & (r * rate < 0)
        t_max, hit = math.inf, None
        if bool(crossing.any()):
            ts = torch.where(crossing, -r / torch.where(crossing, rate, torch.ones_like(rate)), math.inf)
            hit = int(torch.argmin(ts))
            t_max = float(ts[hit])
        slope = float(model @ d)
        if not slope < 0:
            return None
        curvature = None
        t = 1.0
        if fresh is not None:
            # the edge direction has no natural length: the minimum of the model along it, if curved
            h = _numpy(p.hessian(x, lagrangian))
            dn = _numpy(d)
            curvature = float(dn @ h @ dn)
            t = -slope / curvature if curvature > 0 else math.inf
        t = min(t, t_max)
        if not math.isfinite(t):
            t = 1.0
        hz = torch.nonzero(held).flatten()
        for _ in range(_MAX_HALVINGS + 1):
            x_new = x + t * d
            f_new, res = p.true(x_new)
            if hz.numel() and math.isfinite(f_new):
                # second-order correction: a step along the tangent of a curved manifold leaves
                # the held terms O(t²) off their kink, which the objective (an exact penalty)
                # charges at first order and would reject a good Newton step for (the Maratos
                # effect); restore them with the Jacobian at x before judging the step
                # (Nocedal & Wright 2006, §15.6)
                rz = p.flat(res)[hz]
                if bool((rz != 0).any()):
                    x_new = p.snap(x_new + _restoration(jz, rz, p.eps), held)
                    f_new, _ = p.true(x_new)
            if math.isfinite(f_new) and f_new < f and f_new <= f + _ARMIJO * t * slope:
                return x_new, f_new, (hit if t == t_max else None)
            if t == 1.0 and fresh is None and math.isfinite(f_new) and abs(f_new - f) <= 64 * p.eps * abs(f):
                leaf, a, reduced = current
                new = p.point(x_new, leaf)
                if _multipliers(new.grad, a, p.scale(x_new, new.loss))[1] <= 0.5 * reduced:
                    return x_new, f_new, (hit if t == t_max else None)
            t *= 0.5
        return None


def _newton_direction(h: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    r"""The Newton direction :math:`-H^{-1} g` with :math:`H` Jacobi-scaled, by Cholesky where it
    is numerically positive definite; otherwise eigendecomposed with :math:`|\lambda|` floored at
    :math:`\sqrt\epsilon` of the largest (the saddle-free modification, as in
    :func:`~pyro_mle.optim.newton.newton`; Nocedal & Wright 2006, §3.4). A direction of zero
    curvature, an edge of a linear programme, gets a long step that the ratio test then cuts at
    the next kink."""
    if g.size == 0:
        return g
    diag = np.abs(np.diag(h))
    s = np.where(diag > 0, 1.0 / np.sqrt(np.where(diag > 0, diag, 1.0)), 1.0)
    scaled = 0.5 * (h + h.T) * s[:, None] * s[None, :]
    try:
        factor = scipy.linalg.cho_factor(scaled, lower=True)
        if np.all(np.diag(factor[0]) ** 2 > g.size * eps):
            return -s * scipy.linalg.cho_solve(factor, s * g)
    except np.linalg.LinAlgError:
        pass
    values, vectors = scipy.linalg.eigh(scaled)
    floor = math.sqrt(eps) * max(float(np.abs(values).max()), 1.0)
    return -s * (vectors @ ((vectors.T @ (s * g)) / np.maximum(np.abs(values), floor)))


def _multipliers(model: torch.Tensor, a: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, float]:
    r"""The multipliers :math:`u` of the held terms, the least-squares solution of
    :math:`g + A u = 0` (``a``: the columns :math:`c_i \nabla r_i`) in the metric of the relative
    gradient, and the relative size of what remains (the reduced gradient)."""
    if a.shape[1] == 0:
        return torch.zeros(0, dtype=model.dtype, device=model.device), _max(model * scale)
    u = scipy.linalg.lstsq(_numpy(a * scale[:, None]), _numpy(-model * scale))[0]
    u = torch.as_tensor(u, dtype=model.dtype, device=model.device)
    return u, _max((model + a @ u) * scale)


def _restoration(jz: torch.Tensor, rz: torch.Tensor, eps: float) -> torch.Tensor:
    """The minimum-norm step d with (∂r_Z/∂θ) d = −r_Z (truncated SVD for dependent rows)."""
    j = _numpy(jz)
    u, s, vt = scipy.linalg.svd(j, full_matrices=False)
    rank = int((s > s.max(initial=0.0) * max(j.shape) * eps).sum())
    d = -vt[:rank].T @ ((u[:, :rank].T @ _numpy(rz)) / s[:rank])
    return torch.as_tensor(d, dtype=jz.dtype, device=jz.device)
