"""Heteroscedastic regression: a small network predicts both the mean and the scale.

Likelihood: Normal() with two output channels (mean, raw scale through softplus) →
heteroscedastic Gaussian NLL, Σ (y − μ(x))²/(2σ(x)²) + log σ(x) + const. Unlike least
squares it weighs each residual by the noise the network expects there.

Model: one input, 8 tanh hidden units, two outputs.

Data: simulated, x uniform on [0, 2], y = sin(3x) plus Normal noise whose scale grows
from 0.05 at x = 0 to 0.45 at x = 2.
"""

import pyro
import pyro.distributions as dist
import torch

from pyro_mle.likelihoods import Normal

LIKELIHOOD = "normal"
LOSS = "heteroscedastic Gaussian NLL"
X_COLUMNS = ("x",)
Y_COLUMNS = ("y",)

HIDDEN = 8


def model(x, y=None):
    w1 = pyro.sample("w1", dist.Normal(x.new_zeros(HIDDEN), 2.0).to_event(1))
    b1 = pyro.sample("b1", dist.Normal(x.new_zeros(HIDDEN), 2.0).to_event(1))
    w2 = pyro.sample("w2", dist.Normal(x.new_zeros(HIDDEN, 2), 1.0).to_event(2))
    b2 = pyro.sample("b2", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
    hidden = torch.tanh(x.unsqueeze(-1) * w1 + b1)  # (N, HIDDEN)
    outputs = hidden @ w2 + b2  # (N, 2): mean, raw scale
    return Normal()("y", outputs, obs=y)


def load_data(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.rand(n, generator=g)
    scale = 0.05 + 0.2 * x
    return x, torch.sin(3.0 * x) + scale * torch.randn(n, generator=g)
