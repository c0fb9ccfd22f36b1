"""Over-dispersed counts with a negative binomial log-linear model (NB2 regression).

Likelihood: NegativeBinomial(total_count=r) with the log link → negative binomial NLL.
The mean is μ = exp(a + b·x) and the dispersion r is a latent site:
Var y = μ + μ²/r, so the counts spread more than a Poisson's (Var y = μ) would allow,
and the NLL down-weights the large counts a Poisson fit would chase.

Data: simulated, x uniform on [−1, 2], counts drawn from a negative binomial with mean
exp(1 + 0.7x) and dispersion r = 2.
"""

import pyro
import pyro.distributions as dist
import torch

from pyro_mle.likelihoods import NegativeBinomial

LIKELIHOOD = "negative_binomial"
LOSS = "negative binomial NLL"
X_COLUMNS = ("x",)
Y_COLUMNS = ("count",)


def model(x, y=None):
    a = pyro.sample("a", dist.Normal(x.new_tensor(0.0), 3.0))
    b = pyro.sample("b", dist.Normal(x.new_tensor(0.0), 3.0))
    r = pyro.sample("r", dist.LogNormal(x.new_tensor(0.0), 2.0))
    return NegativeBinomial(total_count=r)("y", a + b * x, obs=y)  # log link: mean = exp(a + b·x)


def load_data(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 3.0 * torch.rand(n, generator=g) - 1.0
    mean, r = torch.exp(1.0 + 0.7 * x), 2
    # With an integer dispersion r, an NB2 count is the number of failures before the r-th
    # success of trials that succeed with probability p = r/(r + μ): a sum of r geometric
    # counts, each floor(log U / log(1 − p)) for U uniform.
    p = r / (r + mean)
    u = torch.rand(r, n, generator=g)
    return x, torch.floor(torch.log(u) / torch.log1p(-p)).sum(0)
