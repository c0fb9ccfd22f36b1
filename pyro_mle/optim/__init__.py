"""Optimisers over flat parameter vectors or lists of tensors, free of Pyro: what
:func:`pyro_mle.fit` runs, usable on any differentiable loss.

* :func:`~pyro_mle.optim.lbfgs.lbfgs`: L-BFGS with a strong-Wolfe line search, stepped by us;
* :func:`~pyro_mle.optim.lbfgsb.lbfgsb`: the same contract on scipy's compiled L-BFGS-B
  (float64 CPU tensors: what :func:`pyro_mle.fit` runs there);
* :func:`~pyro_mle.optim.adam.adam`: Adam with a plateau test for noisy losses and
  Polyak–Ruppert averaging;
* :func:`~pyro_mle.optim.newton.newton`: damped Newton on a dense Hessian, the finish;
* :mod:`~pyro_mle.optim.stopping`: the relative-gradient stopping rule and default tolerances.
"""

# the modules, not their functions, are the names here: ``pyro_mle.optim.lbfgs.lbfgs``
from . import adam, lbfgs, lbfgsb, newton, stopping
from .newton import NewtonResult
from .result import OptimResult

__all__ = ["NewtonResult", "OptimResult", "adam", "lbfgs", "lbfgsb", "newton", "stopping"]
