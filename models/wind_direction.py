"""Wind direction: a circular target with a von Mises likelihood.

Likelihood: VonMises(concentration=κ) → cosine loss -κ·cos(y-μ) + const. For a given
concentration κ (a latent site here) the NLL depends on the angle between prediction and
target, so 179° and −179° are 2° apart rather than 358°. The mean
direction is μ = 2·atan(a + b·x) ∈ (−π, π), the tan-half link chosen by name.

Data: simulated. x is the pressure difference between two stations (hPa, uniform on
[−3, 3]); the direction (radians in [−π, π], 0 = from the north) is drawn from
VonMises(2·atan(0.3 + 0.8x), κ = 4) and wrapped to [−π, π].
"""

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from pyro_mle.likelihoods import VonMises, wrap_angle

LIKELIHOOD = "von_mises"
LOSS = "cosine loss -κ·cos(y-μ) + const"
X_COLUMNS = ("pressure_difference",)
Y_COLUMNS = ("direction",)


def model(x, y=None):
    a = pyro.sample("a", dist.Normal(x.new_tensor(0.0), 2.0))
    b = pyro.sample("b", dist.Normal(x.new_tensor(0.0), 2.0))
    kappa = pyro.sample("kappa", dist.LogNormal(x.new_tensor(1.0), 1.0))
    return VonMises(concentration=kappa, links={"loc": "tan_half"})("y", a + b * x, obs=y)  # μ = 2·atan(a + b·x)


def load_data(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 6.0 * torch.rand(n, generator=g) - 3.0
    mean = 2.0 * torch.atan(0.3 + 0.8 * x)
    # torch's VonMises sampler takes no generator; numpy's, seeded alike, is exact
    noise = torch.from_numpy(np.random.default_rng(seed).vonmises(0.0, 4.0, n)).to(x.dtype)
    return x, wrap_angle(mean + noise)
