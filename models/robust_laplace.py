"""Robust linear regression with a Laplace likelihood: least absolute deviations.

Likelihood: Laplace(scale=b) → absolute error (L1). The NLL is Σ|y − μ|/b + N·log 2b, so
for any scale b the best line minimises the sum of absolute residuals: it passes through
the conditional median, and a gross outlier pulls on it with a constant force instead of
one that grows with the residual as under least squares. The scale b is a latent site.

Data: simulated, x uniform on [−2, 2], y = 1 + 2x plus Normal(0, 0.5) noise, with gross
outliers: about 30% of the points with x > 1 are dropped by 10, which drags a least-squares
line's slope down while the L1 fit stays near 2.
"""

import pyro
import pyro.distributions as dist
import torch

from pyro_mle.likelihoods import Laplace

LIKELIHOOD = "laplace"
LOSS = "absolute error (L1)"
X_COLUMNS = ("x",)
Y_COLUMNS = ("y",)


def model(x, y=None):
    intercept = pyro.sample("intercept", dist.Normal(x.new_tensor(0.0), 10.0))
    slope = pyro.sample("slope", dist.Normal(x.new_tensor(0.0), 10.0))
    b = pyro.sample("b", dist.HalfNormal(x.new_tensor(5.0)))
    return Laplace(scale=b)("y", intercept + slope * x, obs=y)


def load_data(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 4.0 * torch.rand(n, generator=g) - 2.0
    y = 1.0 + 2.0 * x + 0.5 * torch.randn(n, generator=g)
    outlier = (x > 1.0) & (torch.rand(n, generator=g) < 0.3)
    return x, torch.where(outlier, y - 10.0, y)
