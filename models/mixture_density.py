"""Multimodal regression with a mixture density network.

Likelihood: NormalMixture(num_components=2) → mixture density network NLL,
−log Σ_k π_k(x)·N(y | μ_k(x), σ_k). A single Normal would put its mean in the gap between
the two bands of data, where there are no points; the mixture gives each band its own
component (Bishop 1994, "Mixture density networks").

Model: one input, 4 tanh hidden units, four outputs: two mixture-weight logits and two
component means. The two component scales are latent sites shared across x, so the head is
``NormalMixture(num_components=2, scale=scales)``; leave ``scale`` out and give the network
six outputs to predict them too.

Data: simulated, x uniform on [−1, 1]; a point lies on the upper band y = sin(3x) + 0.8
with probability sigmoid(2x), otherwise on the lower band y = sin(3x) − 0.8, plus
Normal(0, 0.1) noise.
"""

import pyro
import pyro.distributions as dist
import torch

from pyro_mle.likelihoods import NormalMixture

LIKELIHOOD = "normal_mixture"
LOSS = "mixture density network NLL"
X_COLUMNS = ("x",)
Y_COLUMNS = ("y",)

COMPONENTS = 2
HIDDEN = 4


def model(x, y=None):
    outputs = 2 * COMPONENTS  # weight logits, then means
    w1 = pyro.sample("w1", dist.Normal(x.new_zeros(HIDDEN), 2.0).to_event(1))
    b1 = pyro.sample("b1", dist.Normal(x.new_zeros(HIDDEN), 2.0).to_event(1))
    w2 = pyro.sample("w2", dist.Normal(x.new_zeros(HIDDEN, outputs), 1.0).to_event(2))
    b2 = pyro.sample("b2", dist.Normal(x.new_zeros(outputs), 1.0).to_event(1))
    scales = pyro.sample("scales", dist.HalfNormal(x.new_ones(COMPONENTS)).to_event(1))
    hidden = torch.tanh(x.unsqueeze(-1) * w1 + b1)  # (N, HIDDEN)
    return NormalMixture(num_components=COMPONENTS, scale=scales)("y", hidden @ w2 + b2, obs=y)


def load_data(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.rand(n, generator=g) - 1.0
    upper = torch.rand(n, generator=g) < torch.sigmoid(2.0 * x)
    band = torch.where(upper, 0.8, -0.8)
    return x, torch.sin(3.0 * x) + band + 0.1 * torch.randn(n, generator=g)
