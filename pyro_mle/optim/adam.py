"""Adam over a list of tensors, with a convergence test for noisy (minibatch) losses and
Polyak–Ruppert averaging of the iterates. Free of Pyro: the loss is any closure."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.adam import adam as adam_update

from .result import OptimResult
from .stopping import relative_gradient
from .vectors import flat, flat_grad


def adam(
    evaluate: Callable[[int], torch.Tensor],
    params: list[torch.Tensor],
    *,
    num_steps: int,
    lr: float,
    rtol: float,
    gtol: float,
    num_data: float = 1.0,
    stochastic: bool = False,
    on_step: Callable[[float], None] = lambda loss: None,
) -> OptimResult:
    """Minimise with Adam, learning rate ``lr`` decayed geometrically to ``lr/10`` over ``num_steps``.

    Losses and gradients of a minibatch are estimates, so the run is judged on windows of
    ``num_steps // 10`` steps (10 to 500): it has reached a **plateau** when the mean loss of a
    window differs from the previous window's by at most ``rtol`` (relative) or one standard
    error, and the window-averaged gradient is within ``gtol`` (relative gradient) or two
    standard errors of zero. For a ``stochastic`` objective the parameters are then set to the
    average of the iterates over those two windows (Polyak–Ruppert averaging), which removes
    the minibatch jitter of the last iterate. A plateau is evidence, not proof: the caller
    checks the gradient of the full objective at the result (see :func:`pyro_mle.fit`).

    :param evaluate: ``evaluate(step)`` computes the loss at the current values and leaves the
        gradients in ``.grad``; it raises when the loss is not finite.
    :param on_step: called with the loss at every step.
    """
    opt = _Adam(params, lr=lr)
    decay = 0.1 ** (1.0 / num_steps)  # lr → lr/10 over num_steps, as ClippedAdam's lrd
    window = max(10, min(500, num_steps // 10))
    current, last = _WindowStats(), None
    steps, grad_norm, converged, message = 0, math.nan, False, ""
    while steps < num_steps:
        value = float(evaluate(steps))
        on_step(value)
        current.add(value, flat_grad(params), flat(params))
        opt.step()
        opt.lr *= decay
        steps += 1
        if current.count < window:
            continue
        mean_params = current.params / current.count
        grad_norm = relative_gradient(current.grad_mean(), mean_params, current.loss_mean_se()[0], num_data)
        if last is not None:
            converged, message = _plateau(last, current, grad_norm, rtol, gtol, steps)
            if converged:
                break
        current, last = _WindowStats(), current
    if stochastic and converged:
        windows = [w for w in (last, current) if w is not None and w.count]
        average = sum(w.params for w in windows) / sum(w.count for w in windows)
        with torch.no_grad():
            offset = 0
            for p in params:
                p.copy_(average[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
    if not converged:
        message = (
            f"not converged after {steps} Adam steps: the windowed mean loss or the averaged gradient "
            f"(relative {grad_norm:.2g}, gtol {gtol:g}) is still moving beyond its noise."
        )
    return OptimResult(converged, steps, grad_norm, False, 0, message)


def _plateau(
    last: _WindowStats, current: _WindowStats, grad_norm: float, rtol: float, gtol: float, steps: int
) -> tuple[bool, str]:
    """Whether two consecutive windows show neither loss nor gradient moving beyond their noise."""
    mean, se = current.loss_mean_se()
    prev_mean, prev_se = last.loss_mean_se()
    change = abs(mean - prev_mean)
    noise = math.hypot(se, prev_se)
    loss_ok = change <= max(rtol * max(abs(mean), abs(prev_mean), 1.0), noise)
    # Two standard errors: with pure minibatch noise the norm of the mean gradient is about one
    # standard error's norm, so a one-error test fails half the time at the optimum itself.
    grad_ok = grad_norm <= gtol or float(current.grad_mean().norm()) <= 2.0 * float(current.grad_se().norm())
    message = (
        f"Adam reached a plateau after {steps} steps: the mean loss of the last {current.count} steps moved "
        f"by {change:.3g} (relative {change / max(abs(mean), 1.0):.2g}; rtol {rtol:g}, one standard error "
        f"{noise:.3g}), and the averaged gradient is within gtol {gtol:g} or two standard errors of zero."
    )
    return loss_ok and grad_ok, message


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
