"""Does the point estimate exist, and does every fitted quantity reach the loss?

Two ways a fit can report a number that is not an optimum of its objective, whatever its
gradient says:

* **A parameter the loss does not depend on** keeps its starting value; its gradient is
  ``None`` (no path) or zero. Typical: a ``torch.nn`` module built *inside* the model and
  registered with ``pyro.module`` (the store keeps the first module's weights while the
  forward pass uses a new module's), or under MLE a latent site that appears only in the
  priors of other latent sites, which MLE masks.
* **An estimate that does not exist**: the objective decreases without end towards the edge of
  the parameter space, so any finite stopping point is arbitrary. Separable classes (logistic
  weights → ±∞, the loss → 0), a scale collapsing onto a data point or a centred hierarchy's
  scale τ → 0 where the density is unbounded. statsmodels raises ``PerfectSeparationError``
  for the first; we detect all of them from the objective alone: the loss keeps falling along
  the direction the iterates were moving in, or a constrained parameter sits at the edge of its
  support (its unconstrained value beyond ±23, i.e. a scale below 1e-10 or above 1e10).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pyro
import scipy.optimize
import torch
from torch.distributions import constraints

from .optim.vectors import flatten

#: An unconstrained coordinate beyond this has run to the edge of its support: exp(±23) is
#: 1e±10, far outside any scale a float fit resolves next to values of order one.
EDGE = 23.0
_GUIDE_PREFIX = "AutoDelta."
#: A separating direction must raise the row-normalised margins by more than this per row.
_LP_THRESHOLD = 1e-6


def display_name(store_name: str) -> str:
    """``"AutoDelta.tau"`` → ``"tau"`` (a latent site); ``"net$$$0.weight"`` → ``"net.0.weight"``."""
    if store_name.startswith(_GUIDE_PREFIX):
        return store_name[len(_GUIDE_PREFIX) :]
    return store_name.replace("$$$", ".")


def unused_message(names: list[str], method: str, latent: tuple[str, ...]) -> str:
    """Why parameters without a path to the loss cannot be fitted, and what to do."""
    modules = sorted({n.split("$$$")[0] for n in names if "$$$" in n})
    sites = [display_name(n) for n in names if n.startswith(_GUIDE_PREFIX)]
    params = [n for n in names if "$$$" not in n and not n.startswith(_GUIDE_PREFIX)]
    parts = []
    if modules:
        parts.append(
            f"module {', '.join(repr(m) for m in modules)}: its registered weights never reach the loss. "
            "A torch.nn module built inside the model is a new module at every call, and pyro.module keeps the "
            "first one's weights in the param store while the forward pass uses the new one's. Build the module "
            "once, outside the model (net = torch.nn.Linear(...); in the model: pyro.module('net', net)), or "
            "make it a pyro.nn.PyroModule"
        )
    if sites:
        why = (
            "appears only in the prior of other latent sites, which MLE masks, so the likelihood does not identify it"
            if method == "mle"
            else "does not enter the objective"
        )
        fix = (
            "use method='map' (the priors count), fix it to a value (poutine.condition), or remove it"
            if method == "mle"
            else "remove it or use it in the model"
        )
        parts.append(f"latent site {', '.join(repr(s) for s in sites)} {why}: {fix}")
    if params:
        parts.append(
            f"param {', '.join(repr(p) for p in params)} does not enter the loss (is it used, and used with "
            "gradients enabled?): remove it or use it"
        )
    return (
        f"fit(model): {len(names)} fitted parameter(s) have no gradient path to the {method.upper()} loss, so "
        f"the fit cannot move them and would return their starting values: " + "; ".join(parts) + "."
    )


def zero_gradient(params: list[torch.Tensor]) -> list[bool]:
    """Per parameter tensor: whether its ``.grad`` is missing or exactly zero everywhere."""
    return [p.grad is None or not bool(p.grad.any()) for p in params]


#: Constraints whose bijection squashes the real line onto a bounded side (exp, sigmoid):
#: an unconstrained value beyond ±EDGE is a value pressed against that boundary. Others
#: (a Cholesky factor's off-diagonal, an ordered vector) have no such edge.
_BOUNDED = (
    constraints.positive,
    constraints.greater_than,
    constraints.greater_than_eq,
    constraints.less_than,
    constraints.interval,
    constraints.half_open_interval,
    constraints.unit_interval,
)
_BOUNDED_TYPES = tuple(c if isinstance(c, type) else type(c) for c in _BOUNDED)


def at_edge(
    names: tuple[str, ...],
    params: list[torch.Tensor],
    value: Callable[[torch.Tensor], float] | None = None,
    loss: float = math.nan,
) -> list[str]:
    """Constrained parameters whose unconstrained value lies beyond ±:data:`EDGE` (``"tau =
    4.1e-17"``: a positive scale run to 0) and, when ``value`` (the loss at a flat vector) is
    given, where one more unit outwards does not raise the loss: a large variance that is the
    optimum (house prices in dollars: 4e10) is not an edge."""
    store = pyro.get_param_store()
    found = []
    offset = 0
    flat = torch.cat([p.detach().reshape(-1) for p in params]) if params else torch.zeros(0)
    for name, p in zip(names, params):
        start, offset = offset, offset + p.numel()
        constraint = getattr(store, "_constraints", {}).get(name, constraints.real)
        while isinstance(constraint, constraints.independent):
            constraint = constraint.base_constraint
        bounded = isinstance(constraint, _BOUNDED_TYPES)
        if not bounded or p.numel() == 0:
            continue
        far = p.detach().reshape(-1).abs() > EDGE
        if not bool(far.any()):
            continue
        if value is not None and math.isfinite(loss):
            outward = flat.clone()
            outward[start:offset] += torch.where(
                far, torch.sign(flat[start:offset]), torch.zeros_like(far, dtype=flat.dtype)
            )
            slack = 16 * torch.finfo(flat.dtype).eps * max(abs(loss), 1.0)
            if value(outward) > loss + slack:
                continue  # the loss rises beyond it: a minimum, however far out
        constrained = store[name].detach().reshape(-1)
        shown_values = constrained[far] if constrained.numel() == far.numel() else constrained
        shown = ", ".join(f"{float(v):.3g}" for v in shown_values[:3])
        found.append(f"{display_name(name)!r} = {shown}")
    return found


def runs_off(value: Callable[[torch.Tensor], float], x_hat: torch.Tensor, direction: torch.Tensor, loss: float) -> bool:
    """Whether the loss keeps falling (or stays flat) beyond the estimate along ``direction``:
    the test for an estimate at infinity.

    The direction is scaled so that its largest coordinate moves by ``max(1, |x_hat|_∞)``; the
    estimate runs off when the loss at ``x_hat + u`` and at ``x_hat + 2u`` is no higher than at
    ``x_hat`` (to rounding) or is −∞. At a strict optimum a step that long raises the loss; only
    a ray of non-increase (separation, a density without bound, a parameter the loss does not
    identify) passes.
    """
    size = float(direction.abs().max()) if direction.numel() else 0.0
    if not size > 0 or not math.isfinite(loss) or not math.isfinite(size):
        return False
    u = direction * (max(1.0, float(x_hat.abs().max())) / size)
    slack = 16 * torch.finfo(x_hat.dtype).eps * max(abs(loss), 1.0)
    for t in (1.0, 2.0):
        v = value(x_hat + t * u)
        if math.isnan(v) or v > loss + slack:
            return False
    return True


def separation(trace_fn: Callable[[], Any], params: list[torch.Tensor], max_size: int = 10_000_000) -> list[str]:
    """Observed Bernoulli and Categorical sites whose classes are (quasi-)separated at the
    estimate: the linear-programming test of Konis (2007, the one R's ``detectseparation``
    runs), applied to the margins' Jacobian.

    With margins :math:`m_i` (the logit of the observed class minus each other class's; for a
    Bernoulli, :math:`\\pm` the logit) and :math:`J = \\partial m/\\partial\theta`, the classes are
    separated when some direction :math:`d` raises a margin without lowering any:
    :math:`\\max \\sum_i J_i d` subject to :math:`J d \\ge 0`, :math:`|d|_\\infty \\le 1`, is
    positive. Then the cross-entropy keeps falling along :math:`d` (its gradient along it is
    :math:`-\\sum_i \\sigma(-m_i) J_i d < 0` at any finite point), so no finite minimum exists. For
    a model linear in its parameters (logistic and multinomial regression) this is exact; for a
    network it is the same statement about the network linearised at the estimate.
    Problems whose Jacobian would exceed ``max_size`` entries are not tested.
    """
    with torch.enable_grad():
        trace = trace_fn()
        found = []
        if not only_classification(trace):
            return found  # a prior or a penalty (a factor) can bound the loss despite separation
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or not site["is_observed"]:
                continue
            margins = _margins(site)
            if margins is None:
                continue
            margins, weights = margins
            size = margins.numel() * sum(p.numel() for p in params)
            if not margins.requires_grad or size > max_size or margins.numel() == 0:
                continue
            jac = _jacobian(margins, params)
            if not _certified_apart(jac, weights) and _separating_direction(jac):
                found.append(name)
    return found


def _margins(site: Any) -> tuple[torch.Tensor, np.ndarray] | None:
    """The margins of an observed Bernoulli or Categorical site (rows its mask keeps), and the
    weight of each in the gradient of the cross-entropy: σ(−m) for a Bernoulli, the class's
    probability for a Categorical (−∂CE/∂m)."""
    fn = site["fn"]
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    mask = site["mask"]
    if isinstance(fn, torch.distributions.Bernoulli):
        y = site["value"].detach()
        margins = (2.0 * y - 1.0) * torch.broadcast_to(fn.logits, y.shape)
        keep = torch.ones_like(margins, dtype=torch.bool) if mask is None else torch.broadcast_to(mask, y.shape)
        margins = margins[keep]
        weights = scipy.special.expit(-margins.detach().to(torch.float64).cpu().numpy())
    elif isinstance(fn, torch.distributions.Categorical):
        logits = fn.logits
        y = torch.broadcast_to(site["value"].detach().long(), logits.shape[:-1])
        keep = torch.ones_like(y, dtype=torch.bool) if mask is None else torch.broadcast_to(mask, y.shape)
        logits, y = logits[keep], y[keep]
        own = logits.gather(-1, y[:, None])
        others = torch.ones_like(logits, dtype=torch.bool).scatter(-1, y[:, None], False)
        margins = (own - logits)[others]
        weights = torch.softmax(logits.detach().to(torch.float64), -1)[others].cpu().numpy()
    else:
        return None
    return margins.reshape(-1), weights.reshape(-1)


def _certified_apart(jac: np.ndarray, weights: np.ndarray) -> bool:
    """A cheap proof that no separating direction exists (so the LP need not run).

    Stiemke's alternative: either some d has J d ≥ 0 with J d ≠ 0, or some λ > 0 has Jᵀλ = 0. At
    a stationary point of the cross-entropy the gradient is −Jᵀλ with λ the weights of
    :func:`_margins`, all positive, so for any feasible d of the (row-normalised) LP,
    Σ_i (J'd)_i ≤ ‖Jᵀλ‖₁ / min_i λ'_i. When that bound is below the LP's threshold the
    answer is known. It fails where some rows are predicted with near certainty, which
    separation forces; there the LP decides."""
    scale = np.abs(jac).max(axis=1)
    keep = scale > 0
    if not keep.any():
        return True
    lam = weights[keep] * scale[keep]
    residual = np.abs(jac[keep].T @ weights[keep]).sum()
    smallest = lam.min()
    return bool(smallest > 0 and residual / smallest <= _LP_THRESHOLD * keep.sum())


def only_classification(trace: Any) -> bool:
    """Whether every term of the objective is an observed Bernoulli or Categorical site."""
    for site in trace.nodes.values():
        if site["type"] != "sample" or site["mask"] is False or site["infer"].get("_deterministic"):
            continue
        if type(site["fn"]).__name__ == "_Subsample":
            continue
        fn = site["fn"]
        while hasattr(fn, "base_dist"):
            fn = fn.base_dist
        if not site["is_observed"] or not isinstance(
            fn, (torch.distributions.Bernoulli, torch.distributions.Categorical)
        ):
            return False
    return True


def _jacobian(outputs: torch.Tensor, params: list[torch.Tensor]) -> np.ndarray:
    """∂outputs/∂params as an (M, n) float64 array: by rows (one backward pass per output) when
    there are fewer outputs than parameters, else by columns, each a Jacobian-vector product
    through the double-backward trick (J v = ∂(uᵀJ v)/∂u, with uᵀJ from one backward pass that
    keeps its graph): n passes for M rows, the cheap way for many data and few parameters."""

    m = outputs.numel()
    n = sum(p.numel() for p in params)
    if m <= n:
        rows = [
            flatten(torch.autograd.grad(outputs[i], params, retain_graph=True, allow_unused=True), params)
            for i in range(m)
        ]
        return torch.stack(rows).detach().to(device="cpu", dtype=torch.float64).numpy()
    u = torch.zeros(m, dtype=outputs.dtype, device=outputs.device, requires_grad=True)
    vjp = flatten(torch.autograd.grad(outputs, params, grad_outputs=u, create_graph=True, allow_unused=True), params)
    columns = []
    for j in range(n):
        if vjp[j].requires_grad:
            (column,) = torch.autograd.grad(vjp[j], u, retain_graph=True, allow_unused=True)
        else:
            column = None
        columns.append(torch.zeros(m, dtype=outputs.dtype, device=outputs.device) if column is None else column)
    return torch.stack(columns, dim=1).detach().to(device="cpu", dtype=torch.float64).numpy()


def _separating_direction(jac: np.ndarray) -> bool:
    """Konis's LP: is there d with J d ≥ 0, |d|∞ ≤ 1 and Σ J d > 0 (beyond rounding)?"""
    scale = np.abs(jac).max(axis=1, keepdims=True)
    keep = scale[:, 0] > 0
    if not keep.any():
        return False
    jac = jac[keep] / scale[keep]  # each margin's row on a unit scale: the test is about signs
    result = scipy.optimize.linprog(
        -jac.sum(axis=0),
        A_ub=-jac,
        b_ub=np.zeros(len(jac)),
        bounds=[(-1.0, 1.0)] * jac.shape[1],
        method="highs",
    )
    return bool(result.status == 0 and -result.fun > _LP_THRESHOLD * len(jac))


def no_optimum_message(method: str, edge: list[str], ray: bool, observed_discrete: bool) -> str:
    """Why the MLE/MAP does not exist, and the remedies."""
    what = method.upper()
    causes = []
    if edge:
        causes.append(
            f"{', '.join(edge)} ran to the edge of its support, where the {what} objective has no lower bound "
            "(a scale collapsing to 0: the density is unbounded there, as for τ in a centred hierarchy)"
        )
    if ray:
        if observed_discrete:
            causes.append(
                "the loss keeps falling as the weights grow along one direction: the classes are (quasi-)perfectly "
                "separated by it, so those weights run to infinity (statsmodels raises PerfectSeparationError for "
                "complete separation)"
            )
        else:
            causes.append(
                "the loss keeps falling (or stays flat) along a direction in which the parameters can grow without "
                "end, so no finite point is a minimum (or, if flat, none is unique)"
            )
    fixes = (
        "use method='map' with a proper prior on the parameters that run off (a Normal prior on the weights is "
        "ridge regularisation), bound them, reparameterise (non-centred hierarchy), or use the full posterior"
        if method == "mle"
        else "use a prior that keeps the parameter away from the edge (e.g. Gamma or LogNormal instead of a "
        "half-Cauchy on a scale), a non-centred parameterisation, or the full posterior (pyro_mle.posterior)"
    )
    return (
        f"the {what} estimate does not exist: "
        + "; ".join(causes)
        + f". The values reported are arbitrary. Fix: {fixes}."
    )
