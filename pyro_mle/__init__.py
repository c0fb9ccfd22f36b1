"""pyro_mle: a loss function is the negative log-likelihood of a distribution over the targets.

Write an ordinary Pyro program whose observed sites use a likelihood head; its NLL is the
classical loss (least squares, cross-entropy, ...).
"""

from . import data, distributed, handlers, likelihoods
from ._validation import validation, validation_enabled
from .compare import Comparison, LikelihoodComparison, compare, compare_likelihoods
from .data import MemoryMappedRows
from .datatree import loo_pit, to_datatree
from .diagnostics import DiagnosticWarning
from .distributed import fit_distributed
from .fit import ConvergenceWarning, Fit, FitDivergedError, Prediction, fit, load
from .likelihoods import empirical_kl
from .posterior import Posterior, posterior

__version__ = "0.1.0"

__all__ = [
    "Comparison",
    "ConvergenceWarning",
    "Fit",
    "FitDivergedError",
    "Prediction",
    "DiagnosticWarning",
    "LikelihoodComparison",
    "MemoryMappedRows",
    "Posterior",
    "__version__",
    "compare",
    "compare_likelihoods",
    "data",
    "distributed",
    "empirical_kl",
    "fit",
    "fit_distributed",
    "handlers",
    "likelihoods",
    "load",
    "loo_pit",
    "posterior",
    "to_datatree",
    "validation",
    "validation_enabled",
]
