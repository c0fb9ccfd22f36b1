"""Cross-entropy = KL + entropy, and minimising either is maximum likelihood."""

import numpy as np
import pytest
import torch
from scipy import special, stats

from pyro_mle import likelihoods as L
from pyro_mle.likelihoods import empirical_kl

LABELS = torch.tensor([0, 1, 1, 2, 2, 2, 2, 0, 1, 2])


def test_unconditional_categorical_matches_scipy_entropy_and_kl():
    logits = torch.tensor([0.3, -0.5, 1.2], dtype=torch.float64)
    k = empirical_kl(L.Categorical(), logits, LABELS)
    q = np.bincount(LABELS.numpy(), minlength=3) / len(LABELS)
    p = special.softmax(logits.numpy())
    assert k.kl.item() == pytest.approx(stats.entropy(q, p), rel=1e-12)  # scipy's KL(q‖p)
    assert k.entropy.item() == pytest.approx(stats.entropy(q), rel=1e-12)
    assert k.cross_entropy.item() == pytest.approx(-(q * np.log(p)).sum(), rel=1e-12)
    assert (k.kl - (k.cross_entropy - k.entropy)).abs().item() < 1e-15


def test_kl_is_zero_at_the_maximum_likelihood_estimate_the_empirical_frequencies():
    q = np.bincount(LABELS.numpy(), minlength=3) / len(LABELS)
    k = empirical_kl(L.Categorical(), torch.tensor(np.log(q)), LABELS)
    assert abs(k.kl.item()) < 1e-12
    assert k.cross_entropy.item() == pytest.approx(stats.entropy(q), rel=1e-12)


def test_minimising_kl_cross_entropy_and_nll_pick_the_same_parameters():
    # gradient descent on the KL from an arbitrary start lands on the closed-form MLE
    logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [logits], line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-16, max_iter=500
    )

    def closure():
        opt.zero_grad()
        loss = empirical_kl(L.Categorical(), logits, LABELS).kl
        loss.backward()
        return loss

    opt.step(closure)
    q = np.bincount(LABELS.numpy(), minlength=3) / len(LABELS)
    np.testing.assert_allclose(special.softmax(logits.detach().numpy()), q, atol=1e-7)


def test_conditional_model_groups_rows_by_their_outputs():
    # two inputs: x=0 gets logits a, x=1 gets logits b; q(y|x) per group, weighted by group size
    a, b = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([-1.0, 2.0], dtype=torch.float64)
    x = torch.tensor([0, 0, 0, 1, 1])
    y = torch.tensor([0, 1, 0, 1, 1])
    outputs = torch.where(x[:, None] == 0, a, b)
    k = empirical_kl(L.Categorical(), outputs, y)
    kl0 = stats.entropy([2 / 3, 1 / 3], special.softmax(a.numpy()))
    kl1 = stats.entropy([0.0, 1.0], special.softmax(b.numpy()))
    assert k.kl.item() == pytest.approx(3 / 5 * kl0 + 2 / 5 * kl1, rel=1e-12)


def test_unique_inputs_make_kl_equal_cross_entropy():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(20, dtype=torch.float64, generator=g)
    y = (torch.rand(20, generator=g) < 0.5).double()
    k = empirical_kl(L.Bernoulli(), f, y)
    assert k.entropy.item() == 0.0
    assert k.kl.item() == pytest.approx(L.Bernoulli().nll(f, y).mean().item(), rel=1e-12)


def test_poisson_counts():
    y = torch.tensor([0, 2, 2, 3, 5, 2.0])
    rate = 2.0
    k = empirical_kl(L.Poisson(), torch.tensor([np.log(rate)]), y)
    vals, counts = np.unique(y.numpy(), return_counts=True)
    q = counts / counts.sum()
    expected = np.sum(q * (np.log(q) - stats.poisson(rate).logpmf(vals)))
    assert k.kl.item() == pytest.approx(expected, rel=1e-6)


def test_continuous_family_is_refused():
    with pytest.raises(TypeError, match="needs a discrete likelihood"):
        empirical_kl(L.Normal(scale=1.0), torch.zeros(3), torch.zeros(3))


def test_bad_labels_are_named():
    with pytest.raises(
        ValueError, match=r"Categorical likelihood 'y': observed values must be integer class labels in 0\.\.2"
    ):
        empirical_kl(L.Categorical(), torch.zeros(3), torch.tensor([0, 1, 3]))
