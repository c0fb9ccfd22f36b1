"""The NLL of each family equals PyTorch's own loss, up to documented constants and reductions.

PyTorch losses average over examples by default (``reduction="mean"``); ours are per example,
so each comparison uses ``reduction="none"`` and states the constant that separates them.
"""

import math

import pytest
import torch
from torch import nn

from pyro_mle import likelihoods as L

N = 50
g = torch.Generator().manual_seed(0)
F = torch.randn(N, 3, generator=g, dtype=torch.float64)  # raw outputs
Y = torch.randn(N, generator=g, dtype=torch.float64)


def test_mse_loss_is_normal_nll_with_unit_variance_halved_plus_constant():
    # -log N(y | μ, 1) = ½(y - μ)² + ½ log 2π
    nll = L.Normal(scale=1.0).nll(F[:, 0], Y)
    mse = nn.MSELoss(reduction="none")(F[:, 0], Y)
    torch.testing.assert_close(nll, 0.5 * mse + 0.5 * math.log(2 * math.pi), rtol=1e-12, atol=1e-12)


def test_mse_loss_argmin_does_not_depend_on_the_fixed_scale():
    # σ rescales and shifts the NLL but never moves its minimiser: d/dμ NLL = (μ - y)/σ²
    mu = F[:, 0].clone().requires_grad_()
    L.Normal(scale=2.5).nll(mu, Y).sum().backward()
    torch.testing.assert_close(mu.grad, (F[:, 0] - Y) / 2.5**2, rtol=1e-12, atol=1e-12)


def test_l1_loss_is_laplace_nll_with_unit_scale_minus_log2():
    nll = L.Laplace(scale=1.0).nll(F[:, 0], Y)
    l1 = nn.L1Loss(reduction="none")(F[:, 0], Y)
    torch.testing.assert_close(nll, l1 + math.log(2.0), rtol=1e-12, atol=1e-12)


def test_bce_with_logits_is_bernoulli_nll_exactly():
    y = (Y > 0).double()
    nll = L.Bernoulli().nll(F[:, 0], y)
    bce = nn.BCEWithLogitsLoss(reduction="none")(F[:, 0], y)
    torch.testing.assert_close(nll, bce, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("logit", [-1e4, 1e4])
def test_bce_agrees_at_extreme_logits(logit):
    f = torch.full((4,), logit, dtype=torch.float32)
    y = torch.tensor([0.0, 1.0, 0.0, 1.0])
    torch.testing.assert_close(L.Bernoulli().nll(f, y), nn.BCEWithLogitsLoss(reduction="none")(f, y))


def test_cross_entropy_is_categorical_nll_exactly():
    y = torch.randint(0, 3, (N,), generator=g)
    nll = L.Categorical().nll(F, y)
    ce = nn.CrossEntropyLoss(reduction="none")(F, y)
    torch.testing.assert_close(nll, ce, rtol=1e-12, atol=1e-12)
    # the default reduction is the mean: the mean NLL
    torch.testing.assert_close(nll.mean(), nn.CrossEntropyLoss()(F, y), rtol=1e-12, atol=1e-12)


def test_poisson_nll_loss_drops_log_factorial():
    y = torch.poisson(torch.exp(F[:, 0]), generator=g)
    nll = L.Poisson().nll(F[:, 0], y)
    pnll = nn.PoissonNLLLoss(log_input=True, full=False, reduction="none")(F[:, 0], y)
    torch.testing.assert_close(nll, pnll + torch.lgamma(y + 1), rtol=1e-12, atol=1e-12)


def test_poisson_nll_loss_full_uses_stirling_for_counts_above_one():
    y = torch.poisson(torch.exp(F[:, 0] + 2), generator=g)
    nll = L.Poisson().nll(F[:, 0] + 2, y)
    full = nn.PoissonNLLLoss(log_input=True, full=True, reduction="none")(F[:, 0] + 2, y)
    stirling = torch.where(y > 1, y * torch.log(y) - y + 0.5 * torch.log(2 * math.pi * y), torch.zeros_like(y))
    torch.testing.assert_close(nll - torch.lgamma(y + 1) + stirling, full, rtol=1e-12, atol=1e-12)


def test_gaussian_nll_loss_full_is_normal_nll_with_predicted_scale():
    lik = L.Normal()
    p = lik.parameters(F[:, :2])
    nll = lik.nll(F[:, :2], Y)
    gnll = nn.GaussianNLLLoss(full=True, eps=1e-12, reduction="none")(p["loc"], Y, p["scale"] ** 2)
    torch.testing.assert_close(nll, gnll, rtol=1e-12, atol=1e-12)


def test_multivariate_diagonal_is_the_sum_of_per_output_gaussian_nlls():
    lik = L.MultivariateNormal(dim=2, scale=torch.tensor([0.05, 4.0], dtype=torch.float64))
    y = torch.stack([Y * 0.05 + 1.7, Y * 4.0 + 70.0], dim=-1)
    out = torch.stack([F[:, 0] + 1.7, F[:, 1] + 70.0], dim=-1)
    per_output = [
        nn.GaussianNLLLoss(full=True, reduction="none")(out[:, d], y[:, d], torch.full((N,), s**2, dtype=torch.float64))
        for d, s in enumerate((0.05, 4.0))
    ]
    torch.testing.assert_close(lik.nll(out, y), per_output[0] + per_output[1], rtol=1e-12, atol=1e-12)
