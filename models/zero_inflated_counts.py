"""Counts with excess zeros: a zero-inflated Poisson regression.

Likelihood: ZeroInflatedPoisson() → zero-inflated Poisson NLL: with probability π a
structural zero, else Poisson(λ); log λ = a + b·x1 and logit π = c + d·x2, statsmodels'
``ZeroInflatedPoisson(inflation="logit")``.

Data: simulated park visits. x1 (standard normal) drives how often a visitor comes, x2
(standard normal) whether they are a visitor at all; visits ~ Poisson(exp(0.7 + 0.5·x1)),
replaced by a structural 0 with probability sigmoid(−0.3 + x2).
"""

import pyro
import pyro.distributions as dist
import torch

from pyro_mle.likelihoods import ZeroInflatedPoisson

LIKELIHOOD = "zero_inflated_poisson"
LOSS = "zero-inflated Poisson NLL"
X_COLUMNS = ("x1", "x2")
Y_COLUMNS = ("visits",)


def model(x, y=None):
    a = pyro.sample("a", dist.Normal(x.new_tensor(0.0), 3.0))
    b = pyro.sample("b", dist.Normal(x.new_tensor(0.0), 3.0))
    c = pyro.sample("c", dist.Normal(x.new_tensor(0.0), 3.0))
    d = pyro.sample("d", dist.Normal(x.new_tensor(0.0), 3.0))
    outputs = torch.stack([a + b * x[:, 0], c + d * x[:, 1]], -1)  # log-rate, logit of a structural zero
    return ZeroInflatedPoisson()("y", outputs, obs=y)


def load_data(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    visits = torch.poisson(torch.exp(0.7 + 0.5 * x[:, 0]), generator=g)
    structural = torch.rand(n, generator=g) < torch.sigmoid(-0.3 + x[:, 1])
    return x, torch.where(structural, torch.zeros_like(visits), visits)
