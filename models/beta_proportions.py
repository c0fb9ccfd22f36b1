"""Proportions in (0, 1) with a Beta likelihood: the share of a day with sunshine.

Likelihood: Beta() with two output channels → beta NLL,
−(α − 1)·log y − (β − 1)·log(1 − y) + log B(α, β), with α(x) = softplus(a1 + b1·x) and
β(x) = softplus(a0 + b0·x) (the head's softplus links). Unlike least squares it respects
the support: the density vanishes at 0 and 1 and the spread shrinks near the ends.

Data: simulated. x is the cloud-cover anomaly (uniform on [−2, 2]); the sunshine share is
drawn from Beta(softplus(2.5 − x), softplus(2.5 + x)); both stay above 0.97, so no
draw rounds to exactly 0 or 1, where the Beta density is not defined.
"""

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

from pyro_mle.likelihoods import Beta

LIKELIHOOD = "beta"
LOSS = "beta NLL"
X_COLUMNS = ("cloud_cover",)
Y_COLUMNS = ("sunshine",)


def model(x, y=None):
    intercept = pyro.sample("intercept", dist.Normal(x.new_zeros(2), 3.0).to_event(1))
    slope = pyro.sample("slope", dist.Normal(x.new_zeros(2), 3.0).to_event(1))
    outputs = intercept + x.unsqueeze(-1) * slope  # (N, 2): raw α, raw β
    return Beta()("y", outputs, obs=y)


def load_data(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 4.0 * torch.rand(n, generator=g) - 2.0
    alpha, beta = F.softplus(2.5 - x), F.softplus(2.5 + x)
    # torch's Beta sampler takes no generator; numpy's, seeded alike, is exact
    y = torch.from_numpy(np.random.default_rng(seed).beta(alpha.double().numpy(), beta.double().numpy()))
    return x, y.to(x.dtype)
