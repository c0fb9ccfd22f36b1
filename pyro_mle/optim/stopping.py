r"""Stopping rules shared by the optimisers.

A point fit is **converged** only when its gradient is small on a scale that does not depend on
the units of the problem. The measure is the *relative gradient* of Dennis and Schnabel
(*Numerical Methods for Unconstrained Optimization*, 1983, §7.2):

.. math::  \max_i \frac{|g_i|\,\max(|x_i|, 1)}{\max(|f|, N)}

the relative change of the loss per relative change of a parameter, with :math:`N` the number
of observed data points as the loss's typical size (a loss near zero is still "per data
point"). A loss that merely stops decreasing proves nothing: a line search stalls on
ill-conditioned, non-smooth and unbounded objectives as well as at an optimum. Those ends are
reported as such, with ``converged=False``.
"""

from __future__ import annotations

import math

import torch

#: Default ``(rtol, gtol)`` by floating type. ``rtol`` bounds the relative change of the loss
#: over one step (scipy L-BFGS-B's denominator max(|f|, |f'|, 1)), ``gtol`` the relative
#: gradient. A float32 sum of thousands of terms carries about 1e-7 relative error, so its
#: tolerances sit above that floor.
TOLERANCES = {torch.float64: (1e-10, 1e-7), torch.float32: (1e-6, 1e-4)}


def default_tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, gtol)`` for parameters of ``dtype`` (float32's for anything below float64)."""
    return TOLERANCES[torch.float64 if dtype == torch.float64 else torch.float32]


def relative_gradient(grad: torch.Tensor, x: torch.Tensor, loss: float, num_data: float) -> float:
    """The stopping measure: :math:`\\max_i |g_i|\\max(|x_i|,1)/\\max(|f|,N)` (see the module)."""
    if grad.numel() == 0:
        return 0.0
    scaled = grad.abs() * x.abs().clamp(min=1.0)
    denominator = max(abs(loss) if math.isfinite(loss) else 1.0, float(num_data), 1.0)
    return float(scaled.max()) / denominator


def relative_change(new: float, old: float) -> float:
    """|f' − f| / max(|f|, |f'|, 1), as scipy's L-BFGS-B measures progress."""
    return abs(new - old) / max(abs(new), abs(old), 1.0)
