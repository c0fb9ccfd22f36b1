"""NumPy-only benchmark data (no torch import), for the NumPyro process too."""

from __future__ import annotations

import numpy as np

D = 20  # features of the regression problems
NUTS_ROWS, NUTS_FEATURES = 1000, 10

#: Rubin's eight schools: estimated effects and their standard errors
SCHOOLS_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SCHOOLS_SD = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def logistic(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """float64 x ~ N(0, 1)^D, y ~ Bernoulli(sigmoid(x·w/2 + 0.3)), w ~ N(0, 1)^D."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, D))
    logits = 0.5 * X @ rng.normal(size=D) + 0.3
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logits))).astype(np.float64)
    return X, y


def logistic_nuts_data(
    seed: int = 2, rows: int = NUTS_ROWS, features: int = NUTS_FEATURES
) -> tuple[np.ndarray, np.ndarray]:
    """Bayesian logistic regression data, float64: x ~ N(0, 1), y ~ Bernoulli(sigmoid(x·w + 0.3)),
    w ~ N(0, 1/D) (logits of unit scale whatever D). N = 1000, D = 10 by default; the
    coefficients of the default size are drawn as they always were (w ~ N(0, 1))."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, features))
    w = rng.normal(size=features)
    if features != NUTS_FEATURES:
        w /= np.sqrt(features)
    logits = X @ w + 0.3
    y = (rng.uniform(size=rows) < 1 / (1 + np.exp(-logits))).astype(np.float64)
    return X, y
