"""Linear regression by least squares.

Likelihood: Normal(scale=0.5) → least squares. The negative log-likelihood of
y ~ Normal(x·w + b, 0.5) is Σ(y − x·w − b)²/(2·0.5²) plus a constant, so its minimiser is
the ordinary least-squares fit whatever the fixed scale.

Data: simulated, two inputs drawn from a standard normal, y = 1.5·x1 − 0.8·x2 + 0.3 plus
Normal(0, 0.5) noise.
"""

import pyro
import pyro.distributions as dist
import torch

from pyro_mle.likelihoods import Normal

LIKELIHOOD = "normal"
LOSS = "least squares"
X_COLUMNS = ("x1", "x2")
Y_COLUMNS = ("y",)

NOISE_SCALE = 0.5


def model(x, y=None):
    # Wide Normal priors: MLE ignores them, MAP turns them into ridge regression with
    # α = σ²/τ² = 0.5²/10², and NUTS needs them to have a posterior at all.
    w = pyro.sample("w", dist.Normal(x.new_zeros(x.shape[1]), 10.0).to_event(1))
    b = pyro.sample("b", dist.Normal(x.new_tensor(0.0), 10.0))
    return Normal(scale=NOISE_SCALE)("y", x @ w + b, obs=y)


def load_data(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = x @ torch.tensor([1.5, -0.8]) + 0.3 + NOISE_SCALE * torch.randn(n, generator=g)
    return x, y
