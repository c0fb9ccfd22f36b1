"""Robust linear regression with a Student-t likelihood.

Likelihood: StudentT(df=3, scale=σ) → robust (Student-t) loss,
(ν+1)/2·log(1 + ((y − μ)/σ)²/ν) + log σ + const. The loss grows like log|y − μ| rather
than quadratically, so gross outliers barely move the fit. The degrees of freedom are
fixed at ν = 3 (heavy tails, finite variance); the scale σ is a latent site.

Data: simulated, x uniform on [−2, 2], y = 1 + 2x plus Normal(0, 0.5) noise, with gross
outliers: about 30% of the points with x > 1 are dropped by 10, which drags a least-squares
line's slope down while the Student-t fit stays near 2.
"""

import pyro
import pyro.distributions as dist
import torch

from pyro_mle.likelihoods import StudentT

LIKELIHOOD = "student_t"
LOSS = "robust (Student-t) loss"
X_COLUMNS = ("x",)
Y_COLUMNS = ("y",)

DF = 3.0


def model(x, y=None):
    intercept = pyro.sample("intercept", dist.Normal(x.new_tensor(0.0), 10.0))
    slope = pyro.sample("slope", dist.Normal(x.new_tensor(0.0), 10.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(x.new_tensor(5.0)))
    return StudentT(df=DF, scale=sigma)("y", intercept + slope * x, obs=y)


def load_data(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 4.0 * torch.rand(n, generator=g) - 2.0
    y = 1.0 + 2.0 * x + 0.5 * torch.randn(n, generator=g)
    outlier = (x > 1.0) & (torch.rand(n, generator=g) < 0.3)
    return x, torch.where(outlier, y - 10.0, y)
