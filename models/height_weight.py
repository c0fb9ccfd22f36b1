"""Multi-output regression on different scales: children's height (m) and weight (kg).

Likelihood: MultivariateNormal(dim=2, scale=scales) with a diagonal covariance →
per-output least squares, summed: Σ_d Σ_n (y_nd − μ_nd)²/(2σ_d²) + N·log σ_d + const.
Height varies by centimetres and weight by kilograms; one scale per output (two latent
sites) weighs each output's residuals by its own noise, where a plain sum of squared
errors would let the weight swamp the height.

Model: each output is linear in age; the scales σ_height, σ_weight are latent.

Data: simulated children aged 2 to 16: height = 0.80 + 0.055·age + Normal(0, 0.05) m,
weight = 4 + 3·age + Normal(0, 4) kg.
"""

import pyro
import pyro.distributions as dist
import torch

from pyro_mle.likelihoods import MultivariateNormal

LIKELIHOOD = "multivariate_normal"
LOSS = "per-output least squares, summed"
X_COLUMNS = ("age",)
Y_COLUMNS = ("height", "weight")


def model(x, y=None):
    intercept = pyro.sample("intercept", dist.Normal(x.new_zeros(2), x.new_tensor([2.0, 50.0])).to_event(1))
    slope = pyro.sample("slope", dist.Normal(x.new_zeros(2), x.new_tensor([0.5, 10.0])).to_event(1))
    scales = pyro.sample("scales", dist.HalfNormal(x.new_tensor([0.5, 20.0])).to_event(1))
    mean = intercept + x.unsqueeze(-1) * slope  # (N, 2): height, weight
    return MultivariateNormal(dim=2, scale=scales)("y", mean, obs=y)


def load_data(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    age = 2.0 + 14.0 * torch.rand(n, generator=g)
    height = 0.80 + 0.055 * age + 0.05 * torch.randn(n, generator=g)
    weight = 4.0 + 3.0 * age + 4.0 * torch.randn(n, generator=g)
    return age, torch.stack([height, weight], dim=-1)
