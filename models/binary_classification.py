"""Binary classification by logistic regression.

Likelihood: Bernoulli() on the logit → binary cross-entropy. The NLL of
y ~ Bernoulli(sigmoid(f)) is −y·log σ(f) − (1 − y)·log(1 − σ(f)), which is
``torch.nn.BCEWithLogitsLoss``; with f = x·w + b its minimiser is unpenalised logistic
regression.

Data: simulated, two inputs drawn from a standard normal, labels drawn from
Bernoulli(sigmoid(0.5 + 2·x1 − x2)).
"""

import pyro
import pyro.distributions as dist
import torch

from pyro_mle.likelihoods import Bernoulli

LIKELIHOOD = "bernoulli"
LOSS = "binary cross-entropy"
X_COLUMNS = ("x1", "x2")
Y_COLUMNS = ("y",)


def model(x, y=None):
    w = pyro.sample("w", dist.Normal(x.new_zeros(x.shape[1]), 5.0).to_event(1))
    b = pyro.sample("b", dist.Normal(x.new_tensor(0.0), 5.0))
    return Bernoulli()("y", x @ w + b, obs=y)


def load_data(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    logits = 0.5 + x @ torch.tensor([2.0, -1.0])
    return x, torch.bernoulli(torch.sigmoid(logits), generator=g)
