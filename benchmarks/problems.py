"""The benchmark problems: data (seeded, so every process regenerates the same) and models."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from pyro_mle import likelihoods as L

from .datasets import SCHOOLS_SD, SCHOOLS_Y, D, logistic, logistic_nuts_data

__all__ = ["D", "SCHOOLS_SD", "SCHOOLS_Y", "logistic", "logistic_nuts_data"]  # re-exported: the problems in one place


def linear_gaussian(n: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, 1)^D, y = x·w + 0.5 + ε, ε ~ N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=dtype)
    w = torch.randn(D, generator=g, dtype=dtype)
    y = x @ w + 0.5 + torch.randn(n, generator=g, dtype=dtype)
    return x, y


def linear_params(x: torch.Tensor) -> torch.Tensor:
    w = pyro.param("w", torch.zeros(x.shape[1], dtype=x.dtype))
    b = pyro.param("b", torch.zeros((), dtype=x.dtype))
    return x @ w + b


def least_squares_model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    L.Normal(scale=1.0)("y", linear_params(x), obs=y)


def logistic_model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    L.Bernoulli()("y", linear_params(x), obs=y)


def bayesian_logistic_model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1], dtype=x.dtype), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
    L.Bernoulli()("y", x @ w + b, obs=y)


def eight_schools_noncentred(sd: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """Rubin's eight schools, non-centred: theta = mu + tau·eta (NumPyro's process runs the same)."""
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=sd.dtype), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(torch.full((), 5.0, dtype=sd.dtype)))
    with pyro.plate("school", sd.shape[0]):
        eta = pyro.sample("eta", dist.Normal(torch.zeros((), dtype=sd.dtype), 1.0))
        pyro.sample("y", dist.Normal(mu + tau * eta, sd), obs=y)


def network_model(net: torch.nn.Module):
    """The linear-Gaussian model a PyTorch user writes: an nn.Linear registered with
    ``pyro.module`` and a Normal likelihood head (least squares)."""

    def model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        module = pyro.module("net", net)
        L.Normal(scale=1.0)("y", module(x).squeeze(-1), obs=y)

    return model


def streaming_model(x, y=None, batch_size: int | None = None) -> None:
    """Linear-Gaussian regression on rows read through a subsampling plate."""
    w = pyro.param("w", torch.zeros(x.shape[1], dtype=torch.float32))
    b = pyro.param("b", torch.zeros((), dtype=torch.float32))
    with pyro.plate("data", len(x), subsample_size=batch_size) as idx:
        L.Normal(scale=1.0)("y", x[idx] @ w + b, obs=None if y is None else y[idx])
