"""L-BFGS over a list of float64 CPU tensors driven by scipy's L-BFGS-B on one flat array, with
the stopping rule, the record and the treatment of non-finite trial points of
:func:`pyro_mle.optim.lbfgs.lbfgs` (the same contract, the same :class:`OptimResult`).

Why a second driver: the iterations of :class:`torch.optim.LBFGS` (two-loop recursion, the
strong-Wolfe search, bookkeeping over lists of tensors) run in Python and cost ~1 ms per step,
as much as the evaluations of a small traced objective; scipy's compiled L-BFGS-B costs a few
µs per step. Its own stopping tests are switched off (``ftol = gtol = 0``): a step ends it only
through the callback, when our relative-change and relative-gradient tests hold, or when its
line search finds no lower loss (reported as a stall, retried once with a fresh memory, as
:func:`~pyro_mle.optim.lbfgs.lbfgs` does). Free of Pyro: the loss is any closure."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .lbfgs import HISTORY_SIZE, MAX_LINE_SEARCH
from .result import OptimResult
from .stopping import relative_change, relative_gradient
from .vectors import flat, flat_grad


def applies(params: list[torch.Tensor]) -> bool:
    """Whether :func:`lbfgsb` takes these tensors: float64 on the CPU (scipy works on float64
    NumPy arrays; a float32 loss would hand its line search rounding noise of 1e-7)."""
    return bool(params) and all(p.dtype == torch.float64 and p.device.type == "cpu" for p in params)


class _Converged(Exception):
    pass


class _Stalled(Exception):
    """An accepted step that lowered neither the loss nor the gradient (a step rounded to
    nothing): with its own tests off, L-BFGS-B would go on taking such steps."""


_BLAS: list[Any] = []


def _one_blas_thread() -> Any:
    """A context with scipy's BLAS on one thread. L-BFGS-B's products are of the parameter
    count times the memory (20): OpenBLAS's threads only synchronise on them, and on a busy
    machine their spin-waits made one 30-step run 100x slower (220 ms of CPU against 2 ms,
    measured with two other processes running). The controller is built once (5 ms);
    entering its limit costs ~20 µs."""
    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


def lbfgsb(
    evaluate: Callable[[bool], torch.Tensor | None],
    params: list[torch.Tensor],
    *,
    num_steps: int,
    rtol: float,
    gtol: float,
    num_data: float = 1.0,
    on_step: Callable[[float], None] = lambda loss: None,
) -> OptimResult:
    """Minimise with scipy's L-BFGS-B until the stopping rule holds, the line search stalls,
    or ``num_steps`` updates; arguments and result as :func:`~pyro_mle.optim.lbfgs.lbfgs`
    (whose ``lr`` has no counterpart: L-BFGS-B scales its first step itself)."""
    from scipy.optimize import minimize

    views = [p.view(-1) for p in params]  # float64 CPU leaves: x is written through these
    sizes = [p.numel() for p in params]
    last: dict[str, Any] = {}  # the last finite evaluation (a trial point or an iterate)
    rejected = 0
    rejected_at: list[np.ndarray] = []  # the last trial point whose loss was not finite
    anchor = [math.inf]  # the loss at the last accepted iterate, where the line search starts

    def write(x: np.ndarray) -> None:
        with torch.no_grad():
            for v, part in zip(views, np.split(x, np.cumsum(sizes)[:-1])):
                v.copy_(torch.from_numpy(part))

    def fun(x: np.ndarray, probe: bool = True) -> tuple[float, np.ndarray]:
        nonlocal rejected
        if "x" in last and np.array_equal(x, last["x"]):
            _restore_grads(params, last["grads"])
            return last["loss"], last["g"]
        write(x)
        loss = evaluate(probe)
        if loss is None:
            # A non-finite loss at a trial point is a step too long: a finite loss above the
            # current one (the search shortens the step) and a zero gradient keep the search's
            # interpolation finite, as in :func:`~pyro_mle.optim.lbfgs.lbfgs`.
            # The stand-in is set above the loss where this line search started (not the last
            # finite trial point's, which an extrapolating search may have left far below it):
            # scipy's search, unlike torch's, would otherwise accept a lower stand-in as a point.
            rejected += 1
            rejected_at[:] = [x.copy()]
            current = max(anchor[0] if math.isfinite(anchor[0]) else -math.inf, last.get("loss", 0.0))
            return current + 10.0 * (abs(current) + 1.0), np.zeros_like(x)
        grads = [p.grad for p in params]
        g = flat_grad(params).numpy().copy()
        last.update(x=x.copy(), loss=float(loss), g=g, grads=grads)
        return last["loss"], g

    x = flat(params).numpy().copy()
    loss, _ = fun(x, probe=False)
    at = dict(last)  # the last accepted iterate: x, loss, g, grads
    anchor[0] = loss
    on_step(loss)
    grad_norm = relative_gradient(torch.from_numpy(at["g"]), torch.from_numpy(x), loss, num_data)
    steps, rel = 0, math.inf

    def callback(intermediate_result: Any) -> None:
        nonlocal steps, loss, grad_norm, rel, at
        new_x = intermediate_result.x
        if rejected_at and np.array_equal(new_x, rejected_at[0]):
            raise _Stalled  # never an iterate whose loss was not finite
        new, g = fun(new_x, probe=False)  # the search's last evaluation, remembered
        new_norm = relative_gradient(torch.from_numpy(g), torch.from_numpy(new_x), new, num_data)
        # Near an optimum the loss is flat to rounding and a step may leave it equal while
        # moving closer (a smaller gradient); a step that lowers neither is no progress.
        if new > loss or (new == loss and new_norm >= grad_norm):
            raise _Stalled
        at = dict(last)
        anchor[0] = new
        steps += 1
        on_step(new)
        rel = relative_change(new, loss)
        grad_norm = new_norm
        loss = new
        if rel <= rtol and grad_norm <= gtol:
            raise _Converged

    def result(converged: bool, stalled: bool, message: str) -> OptimResult:
        write(at["x"])  # the parameters and their gradients at the last accepted iterate
        _restore_grads(params, at["grads"])
        return OptimResult(converged, steps, grad_norm, stalled, rejected, message)

    options = dict(maxcor=HISTORY_SIZE, maxls=MAX_LINE_SEARCH, ftol=0.0, gtol=0.0, maxfun=1 << 30)
    while steps < num_steps:
        start_steps = steps
        try:
            with _one_blas_thread():
                res = minimize(
                    fun, at["x"], jac=True, method="L-BFGS-B", callback=callback,
                    options=dict(options, maxiter=num_steps - steps),
                )  # fmt: skip
        except _Converged:
            return result(
                True,
                False,
                f"converged after {steps} L-BFGS steps: relative loss change {rel:.2g} <= rtol {rtol:g}, "
                f"relative gradient {grad_norm:.2g} <= gtol {gtol:g}.",
            )
        except _Stalled:
            res = None
        if res is not None and (res.status == 1 or steps >= num_steps):  # the budget is spent
            break
        # Any other end is a line search that found no lower loss (or a gradient of exactly 0).
        if grad_norm <= gtol or not np.any(at["g"]):
            return result(
                True,
                True,
                f"converged after {steps} L-BFGS steps: no lower loss along the search direction, "
                f"relative gradient {grad_norm:.2g} <= gtol {gtol:g}.",
            )
        if steps == start_steps:  # even a fresh curvature memory (steepest descent) found none
            return result(
                False,
                True,
                f"L-BFGS stalled at step {steps}: the line search finds no lower loss, but the relative "
                f"gradient is {grad_norm:.2g} > gtol {gtol:g}.",
            )
        # drop a curvature memory that went stale: the next run starts afresh from here
    return result(
        False,
        False,
        f"not converged after {steps} L-BFGS steps: relative loss change {rel:.2g} (rtol {rtol:g}), "
        f"relative gradient {grad_norm:.2g} (gtol {gtol:g}).",
    )


def _restore_grads(params: list[torch.Tensor], grads: list[torch.Tensor | None]) -> None:
    for p, g in zip(params, grads):
        p.grad = g
