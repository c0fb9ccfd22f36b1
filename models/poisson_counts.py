"""Counts with a Poisson log-linear model (Poisson regression).

Likelihood: Poisson() with the log link → Poisson NLL, Σ λ − y·log λ + log y! with
λ = exp(x·w + b): the canonical Poisson GLM, whose NLL is convex in (w, b).

Data: simulated, two inputs drawn from a standard normal, counts drawn from
Poisson(exp(0.5 + 0.6·x1 − 0.4·x2)).
"""

import pyro
import pyro.distributions as dist
import torch

from pyro_mle.likelihoods import Poisson

LIKELIHOOD = "poisson"
LOSS = "Poisson NLL"
X_COLUMNS = ("x1", "x2")
Y_COLUMNS = ("count",)


def model(x, y=None):
    w = pyro.sample("w", dist.Normal(x.new_zeros(x.shape[1]), 2.0).to_event(1))
    b = pyro.sample("b", dist.Normal(x.new_tensor(0.0), 2.0))
    return Poisson()("y", x @ w + b, obs=y)  # the head's log link: rate = exp(outputs)


def load_data(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    rate = torch.exp(0.5 + x @ torch.tensor([0.6, -0.4]))
    return x, torch.poisson(rate, generator=g)
