"""Wind direction and speed together: two observed sites, two likelihoods, one loss.

Likelihoods: VonMises(concentration=κ) for the direction → cosine loss -κ·cos(y-μ) + const,
and Gamma(concentration=α) for the speed → gamma NLL. The two targets are independent
given x, so the joint NLL is the sum of the two losses: a model with outputs of different
kinds adds their negative log-likelihoods.

Model: direction mean μ = 2·atan(a + b·x) (the tan-half link); speed mean α/β(x) with rate
β(x) = softplus(c + d·x); κ and α are latent sites.

Data: simulated. x is the pressure difference between two stations (hPa, uniform on
[−3, 3]); y has two columns: the direction (radians in [−π, π], drawn from
VonMises(2·atan(0.3 + 0.8x), κ = 4)) and the speed (m/s, drawn from a Gamma with shape 3
and rate softplus(1 − 0.4x), so the wind is stronger for larger pressure differences).
"""

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

from pyro_mle.likelihoods import Gamma, VonMises, wrap_angle

LIKELIHOOD = "von_mises"  # and "gamma" for the speed
LOSS = "cosine loss -κ·cos(y-μ) + const, plus gamma NLL"
X_COLUMNS = ("pressure_difference",)
Y_COLUMNS = ("direction", "speed")


def model(x, y=None):
    direction, speed = (None, None) if y is None else (y[:, 0], y[:, 1])
    a = pyro.sample("a", dist.Normal(x.new_tensor(0.0), 2.0))
    b = pyro.sample("b", dist.Normal(x.new_tensor(0.0), 2.0))
    kappa = pyro.sample("kappa", dist.LogNormal(x.new_tensor(1.0), 1.0))
    c = pyro.sample("c", dist.Normal(x.new_tensor(0.0), 2.0))
    d = pyro.sample("d", dist.Normal(x.new_tensor(0.0), 2.0))
    alpha = pyro.sample("alpha", dist.LogNormal(x.new_tensor(1.0), 1.0))
    with pyro.plate("data", x.shape[0]):  # both heads use this plate: one row, two sites
        VonMises(concentration=kappa, links={"loc": "tan_half"})("direction", a + b * x, obs=direction)
        Gamma(concentration=alpha)("speed", c + d * x, obs=speed)  # rate = softplus(c + d·x)


def load_data(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 6.0 * torch.rand(n, generator=g) - 3.0
    # torch's VonMises and Gamma samplers take no generator; numpy's, seeded alike, are exact
    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(rng.vonmises(0.0, 4.0, n)).to(x.dtype)
    direction = wrap_angle(2.0 * torch.atan(0.3 + 0.8 * x) + noise)
    rate = F.softplus(1.0 - 0.4 * x)
    speed = torch.from_numpy(rng.gamma(3.0, 1.0, n)).to(x.dtype) / rate
    return x, torch.stack([direction, speed], dim=-1)
