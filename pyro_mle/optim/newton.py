r"""Damped Newton on a flat parameter vector: the second-order finish of a point fit.

A first-order optimiser (L-BFGS, Adam) brings an MLE or MAP fit close to the optimum; on a badly
scaled problem it then stalls far from it. :func:`newton` finishes the job the way IRLS solves a
GLM in statsmodels: full Newton steps :math:`H d = -g` with a dense Hessian, each step recomputing
the gradient at the new point (so successive steps are iterative refinement of the solve), and a
backtracking line search for the non-quadratic parts. It is meant for up to a few thousand
parameters: the Hessian is dense and every step factors it in float64 on the CPU.

The linear solve. The Hessian is first equilibrated, :math:`\tilde H = D^{-1/2} H D^{-1/2}`
with :math:`D = |\mathrm{diag}\, H|` (Jacobi scaling), then

* factored by Cholesky when :math:`\tilde H` is numerically positive definite: the step is
  :math:`d = -D^{-1/2} \tilde H^{-1} D^{-1/2} g`. Scaling removes the ill-conditioning that
  comes from parameters of very different magnitudes, which is most of it in practice: the NIST
  Longley regression, unscaled, has :math:`\kappa(X^\top X) \approx 2.4 \cdot 10^{19}` but
  :math:`\kappa(\tilde H) \approx 1.9 \cdot 10^{9}`. One step from zero reaches ``lstsq``'s
  coefficients to :math:`10^{-7}` relative, the next to :math:`10^{-11}`. Solved through an
  eigendecomposition of the unscaled :math:`H`, or by pivoted QR (``gelsy``) with its default
  ``rcond``, the coefficients are 710 % off however many steps refine them: both lose the
  smallest eigenvalue, 1.2e-7 against a largest of 2.8e12, in rounding.
* otherwise (indefinite, or singular to working precision) eigendecomposed,
  :math:`\tilde H = V \Lambda V^\top`, and solved with :math:`|\lambda_i|` floored at
  :math:`\delta = \sqrt{\epsilon}\,\max(\max_i |\lambda_i|, 1)`. Flipping the sign of negative
  eigenvalues is the "saddle-free" modification (Nocedal & Wright 2006, §3.4; Dauphin et al.
  2014): the direction is always a descent direction, it moves downhill along negative curvature
  instead of towards the saddle, and the floor is a Levenberg–Marquardt damping of the
  (near-)singular directions. At a point that passes the gradient test but has a clearly
  negative eigenvalue (a saddle), the step follows that eigenvector instead.

Convergence is the caller's test ``converged(x, loss, grad)``. The default is the relative
gradient of Dennis & Schnabel (1983, §7.2),

.. math:: \max_i \frac{|g_i| \max(|x_i|, 1)}{\max(|f|, 1)} \le \tau,

with :math:`\tau = 10^{-9}` in float64 and :math:`10^{-5}` in float32: each component is the
relative change of the loss per relative change of that parameter, so the test does not depend
on the units of the parameters. Rounding sets a floor under it that can lie above
:math:`\tau` on an ill-conditioned problem (on Longley it is about :math:`10^{-8}` at
``lstsq``'s answer); then :func:`newton` stops when no step lowers the loss any more and
reports ``converged=False``, and a caller that knows its problem passes its own test.

Usage, with the helpers that build the callables from a differentiable loss::

    loss = lambda w: 0.5 * ((y - X @ w) ** 2).sum()
    result = newton(value_and_grad_from(loss), torch.zeros(X.shape[1], dtype=torch.float64),
                    hessian=hessian_from(loss))
    result.x, result.converged, result.condition
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

__all__ = ["NewtonResult", "hessian_from", "hvp_from", "newton", "value_and_grad_from"]

ValueAndGrad = Callable[[torch.Tensor], tuple[float | torch.Tensor, torch.Tensor]]
Converged = Callable[[torch.Tensor, float, torch.Tensor], bool]

# Default relative-gradient tolerances (see the module docstring), by dtype of x.
_GRADIENT_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5}
_ARMIJO = 1e-4  # sufficient-decrease constant c1 (Nocedal & Wright 2006, §3.1)
_MAX_HALVINGS = 30


@dataclass(frozen=True)
class NewtonResult:
    """The outcome of :func:`newton`.

    Fields:

    * ``x``: the final iterate, a flat tensor of the dtype and device of ``x0`` (a new tensor).
    * ``loss``: the loss at ``x``.
    * ``grad``: the gradient at ``x``, flat.
    * ``num_steps``: accepted steps (Newton or negative-curvature steps).
    * ``converged``: whether the convergence test held at ``x`` and the Hessian there has no
      clearly negative eigenvalue (``x`` is a minimum, not a saddle).
    * ``message``: why the iteration stopped, in words.
    * ``condition``: estimated 2-norm condition number of the Hessian at ``x``,
      :math:`\\max|\\lambda| / \\min|\\lambda|`; ``inf`` when it is singular, ``nan`` when the
      Hessian was not finite. For a positive-definite Hessian both extreme eigenvalues are
      computed accurately (the smallest as the inverse of the largest eigenvalue of
      :math:`H^{-1}`, from the equilibrated Cholesky factor); otherwise they come from the
      eigenvalues of :math:`H`, whose small ones are accurate only to
      :math:`\\epsilon \\max|\\lambda|`.
    * ``min_eigenvalue``: the smallest eigenvalue of the Hessian at ``x`` (negative at a saddle).
    * ``score``: :math:`\\max_i |g_i|/\\sqrt{|H_{ii}|}` at ``x``, the gradient in units of the
      loss's curvature; for a negative log-likelihood, how many standard errors each coordinate
      lies from the optimum to first order (the score statistic).
    """

    x: torch.Tensor
    loss: float
    grad: torch.Tensor
    num_steps: int
    converged: bool
    message: str
    condition: float
    min_eigenvalue: float
    score: float = math.nan


# ----------------------------------------------------------------------------- helpers
def _scalar_loss(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, caller: str) -> torch.Tensor:
    loss = fn(x)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            f"{caller}: fn(x) must return a 0-d loss tensor built from x with autograd; got {shape}. "
            "Reduce the loss with .sum() or .mean()."
        )
    return loss


def value_and_grad_from(fn: Callable[[torch.Tensor], torch.Tensor]) -> ValueAndGrad:
    """``value_and_grad(x) -> (loss, grad)`` for :func:`newton`, by reverse-mode autograd.

    ``fn(x)`` takes the flat parameter tensor and returns the 0-d loss, differentiably.
    """

    def value_and_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = _scalar_loss(fn, x, "value_and_grad_from")
            (grad,) = torch.autograd.grad(loss, x, allow_unused=True, materialize_grads=True)
        return loss.detach(), grad

    return value_and_grad


def hessian_from(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``hessian(x) -> (n, n)`` tensor for :func:`newton`: the exact dense Hessian of ``fn``.

    ``fn(x)`` takes the flat parameter tensor and returns the 0-d loss, differentiably (twice).
    The result is symmetrised, :math:`(H + H^\\top)/2`, and has the dtype and device of ``x``.
    """

    def hessian(x: torch.Tensor) -> torch.Tensor:
        n = x.numel()
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = _scalar_loss(fn, x, "hessian_from")
            (grad,) = torch.autograd.grad(loss, x, create_graph=True, allow_unused=True, materialize_grads=True)
        if n == 0 or not grad.requires_grad:  # no parameters, or a loss at most linear in x
            return torch.zeros(n, n, dtype=x.dtype, device=x.device)
        # One row per Hessian-vector product through the gradient's graph, built once above: n
        # reverse passes, each a few times the cost of the gradient. This is what
        # torch.autograd.functional.hessian does with vectorize=False (it rebuilds nothing less);
        # vectorize=True or is_grads_batched=True would batch the rows with vmap, faster but only
        # for ops that have batching rules for their double backward, and the fallback for the
        # others raises a performance warning (an error under our test settings).
        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        rows = [
            torch.autograd.grad(
                grad, x, grad_outputs=eye[i], retain_graph=i < n - 1, allow_unused=True, materialize_grads=True
            )[0]
            for i in range(n)
        ]
        h = torch.stack(rows)
        return 0.5 * (h + h.T)

    return hessian


def hvp_from(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``hvp(x, v) -> H(x) v``, the Hessian-vector product of ``fn`` without forming ``H``.

    Differentiates :math:`g(x)^\\top v` once more (Pearlmutter 1994): two reverse passes, the
    memory of one gradient. ``v`` is flat like ``x``.
    """

    def hvp(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if v.shape != x.shape:
            raise ValueError(f"hvp: v must have the shape of x, {tuple(x.shape)}; got {tuple(v.shape)}.")
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = _scalar_loss(fn, x, "hvp_from")
            (grad,) = torch.autograd.grad(loss, x, create_graph=True, allow_unused=True, materialize_grads=True)
        if not grad.requires_grad:
            return torch.zeros_like(x)
        (hv,) = torch.autograd.grad(grad, x, grad_outputs=v.detach(), allow_unused=True, materialize_grads=True)
        return hv

    return hvp


def _relative_gradient(x: torch.Tensor, loss: float, grad: torch.Tensor) -> float:
    """Dennis & Schnabel's relative gradient, max_i |g_i| max(|x_i|, 1) / max(|f|, 1)."""
    if x.numel() == 0:
        return 0.0
    scaled = grad.detach().abs().double() * x.detach().abs().double().clamp(min=1.0)
    return float(scaled.max()) / max(abs(loss), 1.0)


def _default_converged(dtype: torch.dtype) -> Converged:
    tolerance = _GRADIENT_TOLERANCE[dtype]

    def converged(x: torch.Tensor, loss: float, grad: torch.Tensor) -> bool:
        return _relative_gradient(x, loss, grad) <= tolerance

    return converged


class _Factor:
    """One Hessian, equilibrated and factored: Cholesky when positive definite, else eigh."""

    def __init__(self, h: np.ndarray, eps: float) -> None:
        self.h = 0.5 * (h + h.T)
        n = h.shape[0]
        diag = np.abs(np.diag(self.h))
        # Jacobi scaling D^{-1/2} H D^{-1/2}: any positive scaling is a congruence, so it keeps
        # the inertia (Sylvester), and it makes the diagonal ±1 or 0.
        self.scale = np.where(diag > 0, 1.0 / np.sqrt(np.where(diag > 0, diag, 1.0)), 1.0)
        self.scaled = self.h * self.scale[:, None] * self.scale[None, :]
        self.eps = eps
        self.cholesky: tuple[np.ndarray, bool] | None = None
        self.eigvals: np.ndarray | None = None
        self.eigvecs: np.ndarray | None = None
        try:
            factor = scipy.linalg.cho_factor(self.scaled, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            factor = None
        # A pivot below n·eps (of a matrix with unit diagonal) means singular to working
        # precision: the solve would be noise, so such a matrix goes to the damped eigen-solve.
        if factor is not None and np.all(np.diag(factor[0]) ** 2 > n * eps):
            self.cholesky = factor
        else:
            self.eigvals, self.eigvecs = scipy.linalg.eigh(self.scaled, check_finite=False)

    def _floor(self) -> float:
        assert self.eigvals is not None
        return math.sqrt(self.eps) * max(float(np.abs(self.eigvals).max(initial=0.0)), 1.0)

    def newton_direction(self, g: np.ndarray) -> np.ndarray:
        s = self.scale
        if self.cholesky is not None:
            return -s * scipy.linalg.cho_solve(self.cholesky, s * g, check_finite=False)
        assert self.eigvals is not None and self.eigvecs is not None
        modified = np.maximum(np.abs(self.eigvals), self._floor())
        return -s * (self.eigvecs @ ((self.eigvecs.T @ (s * g)) / modified))

    def negative_curvature(self, g: np.ndarray) -> tuple[np.ndarray, float] | None:
        """(u, uᵀHu) along the most negative eigenvector, pointing downhill; None when none."""
        if self.eigvals is None or self.eigvals[0] >= -self._floor():
            return None
        assert self.eigvecs is not None
        u = self.scale * self.eigvecs[:, 0]
        if g @ u > 0:
            u = -u
        return u, float(self.eigvals[0])  # uᵀHu = vᵀ H̃ v = λ for the unit eigenvector v of H̃

    def diagnostics(self) -> tuple[float, float]:
        """(condition number, smallest eigenvalue) of the unscaled Hessian."""
        n = self.h.shape[0]
        if n == 0:
            return 1.0, math.nan
        if self.cholesky is not None:
            # Both extremes as largest eigenvalues, which eigh gets to relative accuracy: of H, and
            # of H⁻¹ = D^{-1/2} H̃⁻¹ D^{-1/2} formed through the well-conditioned scaled factor. The
            # smallest eigenvalue of H taken directly is accurate only to eps·λmax (2e-4 relative on
            # Longley). Dense O(n³) like the factorisation itself: Lanczos would be O(n²) per
            # product but needed thousands of products on a Hessian with clustered small eigenvalues.
            s = self.scale
            inverse = s[:, None] * scipy.linalg.cho_solve(self.cholesky, np.diag(s), check_finite=False)
            top = [n - 1, n - 1]
            largest = scipy.linalg.eigh(self.h, eigvals_only=True, subset_by_index=top, check_finite=False)[0]
            largest_inverse = scipy.linalg.eigh(
                0.5 * (inverse + inverse.T), eigvals_only=True, subset_by_index=top, check_finite=False
            )[0]
            return float(largest * largest_inverse), float(1.0 / largest_inverse)
        eigvals = scipy.linalg.eigh(self.h, eigvals_only=True, check_finite=False)
        smallest = float(np.abs(eigvals).min())
        largest = float(np.abs(eigvals).max())
        condition = math.inf if smallest == 0.0 else largest / smallest
        return condition, float(eigvals[0])


# ----------------------------------------------------------------------------- the optimiser
def newton(
    value_and_grad: ValueAndGrad,
    x0: torch.Tensor,
    *,
    hessian: Callable[[torch.Tensor], torch.Tensor] | None = None,
    max_steps: int = 50,
    converged: Converged | None = None,
    max_params: int = 5000,
    max_decrement: float | None = None,
    min_steps: int = 0,
) -> NewtonResult:
    r"""Minimise a smooth loss by damped Newton steps from ``x0``, with a dense Hessian.

    See the module docstring for the solve, the treatment of indefinite Hessians and the default
    convergence test.

    :param value_and_grad: ``value_and_grad(x) -> (loss, grad)``, for a flat ``x`` of the dtype
        and device of ``x0``: the loss (a float or 0-d tensor) and its flat gradient. A non-finite
        loss or gradient at a trial point counts as a step too long.
        :func:`value_and_grad_from` builds it from a differentiable loss.
    :param x0: the start, a flat float32 or float64 tensor on any device; not modified.
    :param hessian: ``hessian(x) -> (n, n)`` tensor. Required: :func:`hessian_from` builds it.
    :param max_steps: at most this many accepted steps.
    :param converged: ``converged(x, loss, grad) -> bool``, the caller's (scale-aware) test.
        Default: relative gradient :math:`\le 10^{-9}` (float64) or :math:`10^{-5}` (float32).
    :param max_decrement: also require the Newton decrement :math:`g^\top H^{-1} g` (the
        decrease the quadratic model promises) to be at most this times ``max(|loss|, 1)``.
    :param min_steps: take at least this many full Newton steps even where the convergence
        test already holds (a finish after a first-order method), each kept only if it raises
        neither the loss (beyond rounding) nor the relative gradient.
    :param max_params: refuse (``ValueError``) a larger ``x0``: the Hessian is dense, and the
        caller skips the Newton finish instead.

    Each step solves :math:`H d = -g` and backtracks from the full step :math:`t = 1`, halving
    ``t`` up to 30 times, until the Armijo condition :math:`f(x + t d) \le f(x) + 10^{-4}\, t\,
    g^\top d` holds. Near the optimum the decrease can fall below the rounding of the loss; a
    full step that leaves the loss unchanged to rounding is then accepted when it halves the
    relative gradient (the role of the "approximate Wolfe" test of Hager & Zhang 2005), which lets
    successive steps refine the solve. When no step is accepted the iteration stops.
    """
    if not isinstance(x0, torch.Tensor) or x0.dim() != 1:
        shape = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise ValueError(f"newton: x0 must be a flat (1-D) tensor; got {shape}. Pass x0.flatten().")
    if x0.dtype not in _GRADIENT_TOLERANCE:
        raise ValueError(f"newton: x0 must be float32 or float64; got {x0.dtype}. Convert it with x0.double().")
    n = x0.numel()
    if n > max_params:
        gib = n * n * 8 / 2**30
        raise ValueError(
            f"newton: x0 has {n} parameters, more than max_params={max_params}; the dense Hessian would "
            f"take {gib:.1f} GiB in float64 and a factorisation O(n³). Skip the Newton finish, or raise "
            "max_params if that is affordable."
        )
    if hessian is None:
        raise ValueError(
            "newton: pass hessian=, a function x -> (n, n) Hessian; hessian_from(fn) builds it from a "
            "differentiable loss fn(x)."
        )
    if max_steps < 0:
        raise ValueError(f"newton: max_steps must be >= 0; got {max_steps}.")
    if converged is None:
        converged = _default_converged(x0.dtype)
    eps = float(torch.finfo(x0.dtype).eps)

    def evaluate(x: torch.Tensor) -> tuple[float, torch.Tensor | None]:
        loss, grad = value_and_grad(x.clone())
        loss = float(loss)
        grad = torch.as_tensor(grad).detach()
        if grad.shape != x.shape:
            raise ValueError(
                f"newton: value_and_grad returned a gradient of shape {tuple(grad.shape)} for x of shape "
                f"{tuple(x.shape)}; return the flat gradient."
            )
        if not math.isfinite(loss) or not bool(torch.isfinite(grad).all()):
            return math.nan, None
        return loss, grad.to(dtype=x.dtype, device=x.device)

    def factor(x: torch.Tensor) -> _Factor | None:
        h = torch.as_tensor(hessian(x.clone())).detach()
        if h.shape != (n, n):
            raise ValueError(f"newton: hessian returned shape {tuple(h.shape)}; expected ({n}, {n}).")
        h = h.to(device="cpu", dtype=torch.float64).numpy()
        return _Factor(h, eps) if np.isfinite(h).all() else None

    def to_numpy(t: torch.Tensor) -> np.ndarray:
        return t.detach().to(device="cpu", dtype=torch.float64).numpy()

    def search(x, f, g, d: np.ndarray, slope: float, curvature: float, full_only: bool = False):
        """Backtrack x + t d; the model decrease is t·slope + t²·curvature/2 (both ≤ 0)."""
        step = torch.as_tensor(d, dtype=x.dtype, device=x.device)
        # The loss of a sum with cancellation (an unscaled design: terms of 1e8 summing to 1e4)
        # carries rounding far above eps·|f|: on Longley 1e-13 relative, 500 eps. A full step
        # that halves the relative gradient is taken when the loss moves by less than
        # 0.01·sqrt(eps) relative (1.5e-10 in float64), well below any decrease that matters.
        flat_band = max(64 * eps, 0.01 * math.sqrt(eps)) * max(abs(f), 1.0)
        t = 1.0
        for _ in range(_MAX_HALVINGS + 1):
            x_new = x + t * step
            f_new, g_new = evaluate(x_new)
            if g_new is not None:
                model = t * slope + 0.5 * t * t * curvature
                if f_new < f and f_new <= f + _ARMIJO * min(model, 0.0):
                    return x_new, f_new, g_new
                if (
                    t == 1.0
                    and abs(f_new - f) <= flat_band
                    and _relative_gradient(x_new, f_new, g_new) <= 0.5 * _relative_gradient(x, f, g)
                ):
                    return x_new, f_new, g_new
                if full_only and t == 1.0 and f_new <= f + flat_band:
                    if _relative_gradient(x_new, f_new, g_new) <= _relative_gradient(x, f, g):
                        return x_new, f_new, g_new
            if full_only:
                return None
            t *= 0.5
        return None

    x = x0.detach().clone()
    f, g = evaluate(x)
    if g is None:
        raise ValueError(f"newton: the loss or gradient at x0 is not finite (loss {f}); start where both are finite.")

    def decrement(fac: _Factor, g: torch.Tensor) -> float:
        g64 = to_numpy(g)
        d = fac.newton_direction(g64)
        return abs(float(g64 @ d)) if np.isfinite(d).all() else math.inf

    def score(fac: _Factor | None, g: torch.Tensor) -> float:
        if fac is None or g.numel() == 0:
            return math.nan
        curvature = np.sqrt(np.maximum(np.abs(np.diag(fac.h)), np.finfo(np.float64).tiny))
        return float(np.max(np.abs(to_numpy(g)) / curvature))

    def result(ok: bool, message: str, fac: _Factor | None) -> NewtonResult:
        condition, smallest = fac.diagnostics() if fac is not None else (math.nan, math.nan)
        return NewtonResult(x, f, g, steps, ok, message, condition, smallest, score(fac, g))

    steps = 0
    previous: _Factor | None = None
    while True:
        caller_passed = bool(converged(x, f, g))
        if previous is not None and caller_passed and max_decrement is not None and steps >= min_steps:
            # After a step, first judge the new point with the Hessian of the point before:
            # near the optimum it has hardly changed, and a Hessian costs one backward pass per
            # parameter. A new one is built only if that judgement fails.
            if decrement(previous, g) <= max_decrement * max(abs(f), 1.0):
                return result(True, f"converged after {steps} steps: the convergence test holds", previous)
        fac = factor(x)
        if fac is None:
            return result(False, f"the Hessian is not finite at step {steps}", None)
        previous = fac
        # The caller's test is about sizes (loss, parameters). The Newton decrement g'H^-1 g,
        # the decrease the quadratic model still promises, is affine invariant: far from the
        # optimum it is a large part of the loss whatever the units (responses of 1e9 with a
        # unit scale: 100 % with a relative gradient of 1e-9), at it only rounding (1e-23 of
        # the loss on Longley).
        passed = caller_passed
        if passed and max_decrement is not None:
            passed = decrement(fac, g) <= max_decrement * max(abs(f), 1.0)
        g64 = to_numpy(g)
        downhill = fac.negative_curvature(g64)
        if passed and downhill is None and steps >= min_steps:
            return result(True, f"converged after {steps} steps: the convergence test holds", fac)
        if passed and downhill is None:
            # a finish's first step even where the test already holds: from a point within the
            # tolerances of a first-order method, one full Newton step removes what remains
            # (all of it for a quadratic); kept only if it does not make things worse
            d = fac.newton_direction(g64)
            refined = search(x, f, g, d, float(g64 @ d), 0.0, full_only=True) if np.isfinite(d).all() else None
            if refined is not None:
                x, f, g = refined
                steps += 1
                continue
            return result(True, f"converged after {steps} steps: the convergence test holds", fac)
        if steps >= max_steps:
            why = "the point is a saddle" if passed else "the convergence test does not hold"
            return result(False, f"max_steps={max_steps} reached; {why}", fac)
        moved = None
        if not passed:
            d = fac.newton_direction(g64)
            if np.isfinite(d).all():
                moved = search(x, f, g, d, float(g64 @ d), 0.0)
        if moved is None and downhill is not None:
            u, curvature = downhill
            moved = search(x, f, g, u, float(g64 @ u), curvature)
        if moved is None:
            if passed:
                message = (
                    f"stopped at a saddle after {steps} steps: the convergence test holds but the Hessian has "
                    "a negative eigenvalue and no step along it lowers the loss"
                )
            else:
                message = (
                    f"stopped after {steps} steps: no step lowers the loss (after {_MAX_HALVINGS} halvings) and "
                    f"the convergence test does not hold (relative gradient {_relative_gradient(x, f, g):.3g})"
                )
            return result(False, message, fac)
        x, f, g = moved
        steps += 1
