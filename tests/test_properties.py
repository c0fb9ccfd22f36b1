"""Property-based checks (hypothesis) on the stable forms, over wide ranges of raw outputs."""

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

from pyro_mle import likelihoods as L

logit = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(f=logit, y=st.sampled_from([0.0, 1.0]))
def test_binary_cross_entropy_matches_scipy_log_expit_everywhere(f, y):
    nll = L.Bernoulli().nll(torch.tensor([f], dtype=torch.float64), torch.tensor([y])).item()
    ref = -(y * special.log_expit(f) + (1 - y) * special.log_expit(-f))
    assert math.isfinite(nll) and nll >= 0
    assert abs(nll - ref) <= 1e-12 * max(1.0, abs(ref))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(logits=st.lists(logit, min_size=2, max_size=6), data=st.data())
def test_cross_entropy_matches_scipy_log_softmax_everywhere(logits, data):
    k = data.draw(st.integers(0, len(logits) - 1))
    nll = L.Categorical().nll(torch.tensor([logits], dtype=torch.float64), torch.tensor([k])).item()
    ref = -special.log_softmax(np.array(logits))[k]
    assert abs(nll - ref) <= 1e-12 * max(1.0, abs(ref))


@settings(max_examples=50, deadline=None, derandomize=True)
@given(scores=st.lists(st.floats(-50, 50), min_size=2, max_size=7), seed=st.integers(0, 2**16))
def test_plackett_luce_samples_are_permutations_with_finite_log_prob(scores, seed):
    torch.manual_seed(seed)
    d = L.PlackettLuce().distribution(torch.tensor([scores], dtype=torch.float64))
    s = d.sample((5,))
    assert bool(L.permutation.check(s).all())
    assert torch.isfinite(d.log_prob(s)).all() and (d.log_prob(s) <= 0).all()
