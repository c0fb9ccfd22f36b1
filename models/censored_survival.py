"""Survival times with right-censoring: a Weibull accelerated failure time model.

Likelihood: Censored(Weibull(concentration=k), censoring=c) →
censored Weibull NLL (survival loss): an observed failure contributes −log f(t), a follow-up that ended without failure
(censored) −log S(t) = (t/λ)^k, with λ = exp(b + x·w). This is lifelines' ``WeibullAFTFitter``.

Data: simulated machine lifetimes. Inputs: load (standard normal) and a coating flag (0/1);
lifetime ~ Weibull(λ = exp(2.0 + 0.5·load − 0.4·coating), k = 1.5); follow-up ends at a
uniform time in [0, 20], so about a third of the machines are still running (censored).
The last column of x is that censoring indicator (1: still running at ``time``): it is part of
the observation, not a covariate, and the model splits it off.
"""

import pyro
import pyro.distributions as dist
import torch

from pyro_mle.likelihoods import Censored, Weibull

LIKELIHOOD = "censored"
LOSS = "censored Weibull NLL (survival loss)"
X_COLUMNS = ("load", "coating", "censored")
Y_COLUMNS = ("time",)


def model(x, y=None):
    covariates, censored = x[:, :-1], x[:, -1]
    w = pyro.sample("w", dist.Normal(x.new_zeros(covariates.shape[1]), 2.0).to_event(1))
    b = pyro.sample("b", dist.Normal(x.new_tensor(0.0), 5.0))
    k = pyro.sample("k", dist.LogNormal(x.new_tensor(0.0), 1.0))
    head = Censored(Weibull(concentration=k), censoring=censored)
    return head("y", b + covariates @ w, obs=y)  # the head's log link: λ = exp(outputs)


def load_data(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    load = torch.randn(n, generator=g)
    coating = (torch.rand(n, generator=g) < 0.5).float()
    scale = torch.exp(2.0 + 0.5 * load - 0.4 * coating)
    u = torch.rand(n, generator=g)
    lifetime = scale * (-torch.log1p(-u)) ** (1 / 1.5)  # the Weibull inverse cdf
    follow_up = 20.0 * torch.rand(n, generator=g)
    censored = (lifetime > follow_up).float()
    return torch.stack([load, coating, censored], -1), torch.minimum(lifetime, follow_up)
