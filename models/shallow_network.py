"""The shallow 1-3-1 ReLU network of chapter 3, fitted by least squares.

Likelihood: Normal(scale=0.2) → least squares. The network predicts the mean of a Normal
with a fixed scale, so maximum likelihood is least squares on the network's output.

Model: one input, three hidden ReLU units, one output (UDL eq. 3.1),
y = φ0 + φ1·a(θ10 + θ11·x) + φ2·a(θ20 + θ21·x) + φ3·a(θ30 + θ31·x), a = ReLU,
written with each unit's joint c_d = −θd0/θd1 (where its kink sits) in place of the bias:
a(θd0 + θd1·x) = a(θd1·(x − c_d)). The function is the same. The joints get a prior over
the inputs' range [0, 2], so no joint can leave the data; a ReLU unit whose joint has left
it is either zero on every input (zero gradient: it never recovers) or linear on all of
them, and the maximum-likelihood fit of the usual parameterisation often ends that way.

Data: simulated from eq. 3.1 with (θ10, θ11) = (0.3, −1.0), (θ20, θ21) = (−1.0, 2.0),
(θ30, θ31) = (−0.5, 0.65) (joints at 0.3, 0.5 and 0.77) and φ = (−0.3, 2.0, −1.0, 7.0);
x uniform on [0, 2]; plus Normal(0, 0.2) noise.
"""

import pyro
import pyro.distributions as dist
import torch

from pyro_mle.likelihoods import Normal

LIKELIHOOD = "normal"
LOSS = "least squares"
X_COLUMNS = ("x",)
Y_COLUMNS = ("y",)

NOISE_SCALE = 0.2
X_RANGE = (0.0, 2.0)  # inputs are expected here: the joints' prior covers this range


def model(x, y=None):
    joints = pyro.sample("joints", dist.Uniform(x.new_tensor(X_RANGE[0]), X_RANGE[1]).expand([3]).to_event(1))
    slopes = pyro.sample("slopes", dist.Normal(x.new_zeros(3), 3.0).to_event(1))  # θ11, θ21, θ31
    phi = pyro.sample("phi", dist.Normal(x.new_zeros(4), 3.0).to_event(1))  # φ0, φ1, φ2, φ3
    hidden = torch.relu(slopes * (x.unsqueeze(-1) - joints))  # (N, 3)
    return Normal(scale=NOISE_SCALE)("y", phi[0] + hidden @ phi[1:], obs=y)


def load_data(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    theta = torch.tensor([[0.3, -1.0], [-1.0, 2.0], [-0.5, 0.65]])  # rows (θd0, θd1)
    phi = torch.tensor([-0.3, 2.0, -1.0, 7.0])
    x = X_RANGE[0] + (X_RANGE[1] - X_RANGE[0]) * torch.rand(n, generator=g)
    mean = phi[0] + torch.relu(theta[:, 0] + x.unsqueeze(-1) * theta[:, 1]) @ phi[1:]
    return x, mean + NOISE_SCALE * torch.randn(n, generator=g)
