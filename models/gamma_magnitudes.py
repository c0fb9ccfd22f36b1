"""Positive magnitudes with a Gamma likelihood: rainfall on wet days.

Likelihood: Gamma(concentration=α) → gamma NLL,
−α·log β − (α − 1)·log y + β·y + log Γ(α), with the rate β(x) = softplus(a + b·x) predicted
(the head's softplus link) and the shape α a latent site. The mean is α/β(x); the spread
grows with the mean (constant coefficient of variation 1/√α), as it does for amounts.

Data: simulated. x is the relative humidity anomaly (uniform on [0, 2]); the rainfall (mm)
is drawn from a Gamma with shape 2 and rate softplus(1.5 − 0.8x).
"""

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

from pyro_mle.likelihoods import Gamma

LIKELIHOOD = "gamma"
LOSS = "gamma NLL"
X_COLUMNS = ("humidity",)
Y_COLUMNS = ("rainfall",)


def model(x, y=None):
    a = pyro.sample("a", dist.Normal(x.new_tensor(0.0), 3.0))
    b = pyro.sample("b", dist.Normal(x.new_tensor(0.0), 3.0))
    alpha = pyro.sample("alpha", dist.LogNormal(x.new_tensor(0.0), 2.0))
    return Gamma(concentration=alpha)("y", a + b * x, obs=y)  # rate = softplus(a + b·x)


def load_data(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.rand(n, generator=g)
    rate = F.softplus(1.5 - 0.8 * x)
    # torch's Gamma sampler takes no generator; numpy's, seeded alike, is exact
    y = torch.from_numpy(np.random.default_rng(seed).gamma(2.0, 1.0, n)).to(x.dtype) / rate
    return x, y
