"""L-BFGS over a list of tensors: :class:`torch.optim.LBFGS` (strong-Wolfe line search) driven one
step at a time, so that the stopping rule, the record and the treatment of non-finite trial
points are ours. Free of Pyro: the loss is any closure."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .result import OptimResult
from .stopping import relative_change, relative_gradient
from .vectors import flat, flat_grad

#: L-BFGS memory: scipy keeps 10 pairs, torch 100; 20 is plenty for the problems here and
#: keeps the memory at 40 copies of the parameters for large networks.
HISTORY_SIZE = 20
MAX_LINE_SEARCH = 25


def lbfgs(
    evaluate: Callable[[bool], torch.Tensor | None],
    params: list[torch.Tensor],
    *,
    num_steps: int,
    lr: float,
    rtol: float,
    gtol: float,
    num_data: float = 1.0,
    on_step: Callable[[float], None] = lambda loss: None,
) -> OptimResult:
    """Minimise with L-BFGS until the stopping rule holds, the line search stalls, or
    ``num_steps`` updates.

    Converged when the relative loss change of a step is at most ``rtol`` **and** the relative
    gradient (:func:`~pyro_mle.optim.stopping.relative_gradient`) at most ``gtol``. When the
    line search finds no lower loss, the curvature memory is dropped once and the search tried
    again along the steepest descent; if that fails too the run ends ``stalled``, converged only
    if the gradient test holds.

    :param evaluate: ``evaluate(probe)`` computes the loss at the tensors' current values and
        leaves gradients in ``.grad``; for a line-search trial point (``probe=True``) it returns
        ``None`` when the loss is not finite (the step went too far), otherwise it may raise.
    :param params: the tensors optimised, in place.
    :param lr: the first trial step of each line search.
    :param num_data: the loss's typical size for the gradient test (data points).
    :param on_step: called with the loss at the start and after every update.
    """
    cache: dict[str, Any] = {}
    rejected = 0
    probing = False  # inside torch's line search, where every fresh evaluation is a trial point

    def closure() -> torch.Tensor:
        # torch's L-BFGS evaluates its closure at the start of every step, at the point its
        # previous line search has just evaluated; remembering that evaluation halves the
        # cost of a step. The cache is keyed on the parameter values themselves.
        nonlocal rejected
        x = flat(params)
        if "x" in cache and torch.equal(x, cache["x"]):
            for p, g in zip(params, cache["grads"]):
                p.grad = g
            return cache["loss"]
        loss = evaluate(probing)
        if loss is None:
            # A non-finite loss at a trial point means the trial step went too far (past a
            # scale's zero, into exp overflow), not that the fit diverged. torch's strong-Wolfe
            # search cannot handle NaN or inf, so it gets a finite loss above the current one
            # (it fails the sufficient-decrease test and the search shortens the step) with a
            # zero gradient, which keeps its cubic fits finite.
            rejected += 1
            for p in params:
                p.grad = torch.zeros_like(p)
            current = float(cache["loss"])
            return torch.tensor(current + 10.0 * (abs(current) + 1.0), dtype=params[0].dtype)
        cache.update(x=x, loss=loss, grads=[p.grad for p in params])
        return loss

    def new_optimizer() -> torch.optim.LBFGS:
        return torch.optim.LBFGS(
            params,
            lr=lr,
            max_iter=1,
            max_eval=1 + MAX_LINE_SEARCH,
            history_size=HISTORY_SIZE,
            line_search_fn="strong_wolfe",
            # our loop decides when to stop; torch would stop on absolute tolerances
            tolerance_grad=0.0,
            tolerance_change=0.0,
        )

    opt = new_optimizer()
    loss = float(closure())
    on_step(loss)
    grad_norm = relative_gradient(flat_grad(params), cache["x"], loss, num_data)
    steps, fresh, rel = 0, True, math.inf

    def result(converged: bool, stalled: bool, message: str) -> OptimResult:
        return OptimResult(converged, steps, grad_norm, stalled, rejected, message)

    while steps < num_steps:
        before = cache["x"]
        probing = True
        try:
            opt.step(closure)
        finally:
            probing = False
        steps += 1
        new = float(closure())
        on_step(new)
        rel = relative_change(new, loss)
        grad_norm = relative_gradient(flat_grad(params), cache["x"], new, num_data)
        loss = new
        if rel <= rtol and grad_norm <= gtol:
            return result(
                True,
                False,
                f"converged after {steps} L-BFGS steps: relative loss change {rel:.2g} <= rtol {rtol:g}, "
                f"relative gradient {grad_norm:.2g} <= gtol {gtol:g}.",
            )
        if torch.equal(cache["x"], before):  # the line search found no lower loss
            if grad_norm <= gtol:
                return result(
                    True,
                    True,
                    f"converged after {steps} L-BFGS steps: no lower loss along the search direction, "
                    f"relative gradient {grad_norm:.2g} <= gtol {gtol:g}.",
                )
            if fresh:
                return result(
                    False,
                    True,
                    f"L-BFGS stalled at step {steps}: the line search finds no lower loss, but the relative "
                    f"gradient is {grad_norm:.2g} > gtol {gtol:g}.",
                )
            opt, fresh = new_optimizer(), True  # drop a curvature memory that went stale
        else:
            fresh = False
    return result(
        False,
        False,
        f"not converged after {steps} L-BFGS steps: relative loss change {rel:.2g} (rtol {rtol:g}), "
        f"relative gradient {grad_norm:.2g} (gtol {gtol:g}).",
    )
