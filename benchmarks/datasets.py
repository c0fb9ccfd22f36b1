"""NumPy-only benchmark data (no torch import), for the NumPyro process too."""

from __future__ import annotations

import numpy as np

D = 20  # features of the regression problems
NUTS_ROWS, NUTS_FEATURES = 1000, 10


def logistic(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """float64 x ~ N(0, 1)^D, y ~ Bernoulli(sigmoid(x·w/2 + 0.3)), w ~ N(0, 1)^D."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, D))
    logits = 0.5 * X @ rng.normal(size=D) + 0.3
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logits))).astype(np.float64)
    return X, y


def logistic_nuts_data(seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Bayesian logistic regression data: N = 1000, D = 10, float64."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(NUTS_ROWS, NUTS_FEATURES))
    logits = X @ rng.normal(size=NUTS_FEATURES) + 0.3
    y = (rng.uniform(size=NUTS_ROWS) < 1 / (1 + np.exp(-logits))).astype(np.float64)
    return X, y
