"""Quantile regression: the 90 % quantile of food expenditure given income.

Likelihood: AsymmetricLaplace(quantile=0.9) → pinball (check) loss, q=0.9. Its NLL is
Σ ρ_q(y − μ)/σ + N·log(σ/(q(1−q))) with ρ_q(r) = r·(q − 1{r < 0}), so for any scale σ the best
line minimises the pinball loss: it passes through the conditional 90 % quantile (statsmodels'
``QuantReg(q=0.9)``, Koenker's linear programme). The scale σ is a latent site. The kinks of
the loss are solved exactly (pyro_mle.nonsmooth), as for median regression.

Data: simulated after Engel's household budgets: income x uniform on [0.5, 5] (thousands),
expenditure y = 0.1 + 0.5x plus Normal noise whose spread grows with income (0.05 + 0.1x), so
the quantile lines fan out and the 90 % line is steeper than the mean's.
"""

import pyro
import pyro.distributions as dist
import torch

from pyro_mle.likelihoods import AsymmetricLaplace

LIKELIHOOD = "asymmetric_laplace"
LOSS = "pinball (check) loss, q=0.9"
X_COLUMNS = ("income",)
Y_COLUMNS = ("food",)


def model(x, y=None):
    intercept = pyro.sample("intercept", dist.Normal(x.new_tensor(0.0), 10.0))
    slope = pyro.sample("slope", dist.Normal(x.new_tensor(0.0), 10.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(x.new_tensor(5.0)))
    return AsymmetricLaplace(quantile=0.9, scale=sigma)("y", intercept + slope * x, obs=y)


def load_data(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 0.5 + 4.5 * torch.rand(n, generator=g)
    y = 0.1 + 0.5 * x + (0.05 + 0.1 * x) * torch.randn(n, generator=g)
    return x, y
