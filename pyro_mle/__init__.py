"""pyro_mle: a loss function is the negative log-likelihood of a distribution over the targets.

Write an ordinary Pyro program whose observed sites use a likelihood head; its NLL is the
classical loss (least squares, cross-entropy, ...).
"""

from . import data, distributed, handlers, likelihoods, optim
from ._pyro_nuts import SamplerFallbackWarning
from ._validation import validation, validation_enabled
from .compare import Comparison, LikelihoodComparison, compare, compare_likelihoods
from .compile import TRACE_CACHE, clear_trace_cache
from .data import MemoryMappedRows
from .datatree import loo_pit, to_datatree
from .diagnostics import DiagnosticWarning
from .distributed import fit_distributed
from .fit import fit
from .likelihoods import empirical_kl
from .objective import PointObjective, init_to_centre, objective
from .posterior import Posterior, posterior
from .reloo import kfold, reloo
from .results import (
    ConvergenceWarning,
    Fit,
    FitDivergedError,
    FitFileError,
    FitInterrupted,
    NoOptimumWarning,
    Prediction,
    SiteMismatchError,
    UnusedParameterError,
    ZeroGradientWarning,
    load,
)

__version__ = "0.1.0"

__all__ = [
    "Comparison",
    "TRACE_CACHE",
    "clear_trace_cache",
    "ConvergenceWarning",
    "Fit",
    "FitDivergedError",
    "FitFileError",
    "SiteMismatchError",
    "FitInterrupted",
    "NoOptimumWarning",
    "PointObjective",
    "UnusedParameterError",
    "ZeroGradientWarning",
    "init_to_centre",
    "objective",
    "Prediction",
    "DiagnosticWarning",
    "LikelihoodComparison",
    "MemoryMappedRows",
    "Posterior",
    "SamplerFallbackWarning",
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
    "kfold",
    "load",
    "loo_pit",
    "optim",
    "posterior",
    "reloo",
    "to_datatree",
    "validation",
    "validation_enabled",
]
