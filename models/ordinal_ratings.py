"""Ordinal ratings: a cumulative logit (proportional odds) model of product ratings.

Likelihood: OrderedLogistic(num_classes=5, cutpoints=c) →
cumulative logit (proportional odds) NLL: P(rating ≤ k) = sigmoid(c_k − x·w) with four
increasing cut points c, statsmodels' ``OrderedModel(distr="logit")``.

Data: simulated star ratings (1–5 stars, coded 0..4) of a product against its standardised
price and build quality: a latent satisfaction −0.8·price + 1.2·quality plus standard
logistic noise, cut at (−2.0, −0.5, 0.7, 2.2).
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import OrderedTransform

from pyro_mle.likelihoods import OrderedLogistic

LIKELIHOOD = "ordered_logistic"
LOSS = "cumulative logit (proportional odds) NLL"
X_COLUMNS = ("price", "quality")
Y_COLUMNS = ("stars",)
CUTPOINTS = (-2.0, -0.5, 0.7, 2.2)


def model(x, y=None):
    w = pyro.sample("w", dist.Normal(x.new_zeros(x.shape[1]), 2.0).to_event(1))
    # four cut points, increasing by construction (an ordered transform of a Normal vector)
    raw = dist.Normal(x.new_zeros(4), 3.0).to_event(1)
    c = pyro.sample("c", dist.TransformedDistribution(raw, [OrderedTransform()]))
    return OrderedLogistic(num_classes=5, cutpoints=c)("y", x @ w, obs=y)


def load_data(n: int = 500, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    u = torch.rand(n, generator=g)
    satisfaction = x @ torch.tensor([-0.8, 1.2]) + torch.log(u / (1 - u))  # + logistic noise
    stars = (satisfaction.unsqueeze(-1) > torch.tensor(CUTPOINTS)).sum(-1)
    return x, stars.float()
