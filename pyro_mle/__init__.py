"""pyro_mle: a loss function is the negative log-likelihood of a distribution over the targets.

Write an ordinary Pyro program whose observed sites use a likelihood head; its NLL is the
classical loss (least squares, cross-entropy, ...).
"""

from . import likelihoods
from ._validation import validation, validation_enabled
from .compare import Comparison, LikelihoodComparison, compare, compare_likelihoods
from .datatree import to_datatree
from .diagnostics import DiagnosticWarning
from .likelihoods import empirical_kl
from .posterior import Posterior, posterior

__version__ = "0.1.0"

__all__ = [
    "Comparison",
    "DiagnosticWarning",
    "LikelihoodComparison",
    "Posterior",
    "__version__",
    "compare",
    "compare_likelihoods",
    "empirical_kl",
    "likelihoods",
    "posterior",
    "to_datatree",
    "validation",
    "validation_enabled",
]
