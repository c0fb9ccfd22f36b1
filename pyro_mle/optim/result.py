"""What an optimiser reports when it stops."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OptimResult:
    """The outcome of one optimiser run; the parameters themselves are left in place.

    Fields:
      * ``converged``: whether the stopping rule held (see :mod:`pyro_mle.optim.stopping`).
      * ``num_steps``: updates taken.
      * ``grad_norm``: the stopping rule's gradient measure at the end
        (:func:`~pyro_mle.optim.stopping.relative_gradient`).
      * ``stalled``: the run ended because no step lowered the loss any more (a line search
        that fails, Newton steps that stop decreasing): by itself never a proof of an optimum.
      * ``rejected``: trial points whose loss was not finite (treated as too long a step).
      * ``message``: why it stopped, in words.
    """

    converged: bool
    num_steps: int
    grad_norm: float
    stalled: bool
    rejected: int
    message: str
