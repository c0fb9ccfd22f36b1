"""Edges of the likelihood heads and of fitting with improper priors (issue 10).

Each bad input gets one clear error naming the head, the bad shape or length and the fix;
improper priors fit, MLE and MAP, against closed forms.
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import init_to_median, init_to_sample, init_to_value

import pyro_mle
from pyro_mle import likelihoods as L
from pyro_mle.objective import init_to_centre

# ---------------------------------------------------------------- fixed lengths at construction


@pytest.mark.parametrize(
    ("build", "text"),
    [
        (
            lambda: L.MultivariateNormal(dim=2, scale=[1.0, 1.0, 1.0]),
            r"fixed scale has length 3 .* dim=2.*Give 2 values",
        ),
        (
            lambda: L.MultivariateNormal(dim=2, scale=torch.ones(5, 3)),
            r"fixed scale has length 3 \(shape \(5, 3\)\), but the head has dim=2",
        ),
        (
            lambda: L.MultivariateNormal(dim=2, covariance="full", scale_tril=torch.eye(3)),
            r"fixed scale_tril must be a 2×2 .*got shape \(3, 3\).*or set dim=3",
        ),
        (
            lambda: L.MultivariateNormal(dim=2, covariance="full", scale_tril=[1.0, 2.0]),
            r"fixed scale_tril must be a 2×2 .*got shape \(2,\)",
        ),
        (lambda: L.NormalMixture(3, scale=[1.0, 2.0]), r"fixed scale has length 2 .*num_components=3.*per component"),
        (
            lambda: L.VonMisesMixture(2, concentration=[1.0, 2.0, 3.0]),
            r"fixed concentration has length 3 .*num_components=2.*or set num_components=3",
        ),
    ],
)
def test_a_fixed_vector_of_the_wrong_length_is_refused_at_construction(build, text):
    with pytest.raises(ValueError, match=text) as e:
        build()
    assert "likelihood: fixed" in str(e.value)


def test_fixed_vectors_of_the_right_length_or_one_value_are_kept():
    out, y = torch.zeros(4, 2), torch.zeros(4, 2)
    for scale in ([1.0, 2.0], [1.5], 1.5, torch.ones(4, 2), torch.ones(4, 1)):
        head = L.MultivariateNormal(dim=2, scale=scale)
        assert head.nll(out, y).shape == (4,)
    full = L.MultivariateNormal(dim=2, covariance="full", scale_tril=torch.eye(2))
    assert full.nll(out, y).shape == (4,)
    assert L.NormalMixture(3, scale=[1.0, 2.0, 3.0]).nll(torch.zeros(4, 6), torch.zeros(4)).shape == (4,)


# ---------------------------------------------------------------- Categorical and Bernoulli shapes


def test_categorical_logits_of_shape_n_name_bernoulli_or_k_columns():
    head = L.Categorical()
    with pytest.raises(ValueError) as e:
        head("label", torch.zeros(5), obs=torch.zeros(5))
    msg = str(e.value)
    assert "Categorical likelihood 'label'" in msg
    assert "logits have shape (5,), read as one example over 5 classes, while y holds 5 examples" in msg
    assert "logits must be (N, K)" in msg and "needs Bernoulli" in msg and "(shape (5, K))" in msg
    assert "Reshape y" not in msg
    # a single logit column is caught earlier with the same fix
    with pytest.raises(ValueError, match=r"at least 2 channels.*Bernoulli with 1 logit"):
        head.nll(torch.zeros(5, 1), torch.zeros(5))


@pytest.mark.parametrize("head", [L.Categorical(), L.Categorical(num_classes=3)])
def test_one_hot_labels_name_argmax(head):
    onehot = torch.eye(3)[[0, 1, 2, 0, 1]]
    with pytest.raises(ValueError) as e:
        head.nll(torch.zeros(5, 3), onehot)
    msg = str(e.value)
    assert "y of shape (5, 3) holds one-hot labels" in msg and "pass class indices (y.argmax(-1))" in msg
    assert "Reshape y" not in msg
    # the fix it names works
    assert head.nll(torch.zeros(5, 3), onehot.argmax(-1)).shape == (5,)


def test_class_probabilities_as_y_name_argmax_too():
    with pytest.raises(ValueError, match=r"has one column per class.*pass class indices \(y.argmax\(-1\)\)"):
        L.Categorical().nll(torch.zeros(4, 3), torch.full((4, 3), 1 / 3))


def test_bernoulli_one_hot_rows_name_argmax():
    onehot = torch.eye(2)[[0, 1, 1, 0]]
    with pytest.raises(ValueError, match=r"holds one-hot rows; Bernoulli observes one 0/1 label.*y.argmax\(-1\)"):
        L.Bernoulli()("y", torch.zeros(4), obs=onehot)


def test_multi_channel_outputs_read_as_one_example_name_the_rows():
    with pytest.raises(
        ValueError, match=r"outputs give one example.*y holds 7 examples: give outputs of shape \(7, 2\)"
    ):
        L.Normal().nll(torch.zeros(2), torch.zeros(7))


def test_the_column_hint_still_wins_for_a_trailing_one():
    with pytest.raises(ValueError, match=r"broadcast to a \(5, 5\) table: pass y.squeeze\(-1\)"):
        L.Categorical().nll(torch.zeros(5, 3), torch.zeros(5, 1))


# ---------------------------------------------------------------- no data rows


@pytest.mark.parametrize(
    ("head", "outputs", "y"),
    [
        (L.Normal(scale=1.0), torch.zeros(0), torch.zeros(0)),
        (L.Bernoulli(), torch.zeros(0, 1), torch.zeros(0)),
        (L.Categorical(), torch.zeros(0, 3), torch.zeros(0)),
        (L.MultivariateNormal(dim=2), torch.zeros(0, 4), torch.zeros(0, 2)),
    ],
)
def test_no_data_rows_is_refused_by_the_head(head, outputs, y):
    with pytest.raises(ValueError, match=r"'y': no data rows: the outputs have shape \(0,"):
        head("y", outputs, obs=y)
    with pytest.raises(ValueError, match=r"'y': no data rows: the outputs have shape \(0,"):
        head("y", outputs)
    with pytest.raises(ValueError, match=r"'y': no data rows"):
        head.nll(outputs, y)


def test_fit_of_an_empty_data_set_names_the_head_and_no_rows():
    def model(x, y):
        w = pyro.param("w", torch.zeros(()))
        L.Normal(scale=1.0)("y", x * w, obs=y)

    with pytest.raises(ValueError, match=r"Normal likelihood 'y': no data rows") as e:
        pyro_mle.fit(model, torch.zeros(0), torch.zeros(0), progress=False)
    assert not isinstance(e.value, ZeroDivisionError)


# ---------------------------------------------------------------- improper priors


def flat_mean(y):
    mu = pyro.sample("mu", dist.ImproperUniform(constraints.real, (), ()))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def flat_scale(y):
    scale = pyro.sample("scale", dist.ImproperUniform(constraints.positive, (), ()))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(0.0, scale), obs=y)


@pytest.fixture
def sample():
    return torch.tensor([2.1, 3.4, 1.7, 4.0, 2.8, 3.3, 2.2, 3.9], dtype=torch.float64)


@pytest.mark.parametrize("method", ["mle", "map"])
def test_flat_prior_on_a_mean_gives_the_sample_mean(method, sample):
    result = pyro_mle.fit(flat_mean, sample, method=method, progress=False)
    assert result.converged and result.latent == ("mu",)
    # MLE: argmax of the likelihood; MAP with a flat prior: the same point, log p(θ) = 0
    # (a parameterless prior starts in the default dtype, float32: agreement to float32 precision)
    assert result.params["mu"].item() == pytest.approx(float(np.mean(sample.numpy())), rel=1e-6)
    nll = 0.5 * float(((sample - sample.mean()) ** 2).sum()) + 0.5 * len(sample) * math.log(2 * math.pi)
    assert result.nll == pytest.approx(nll, rel=1e-6)
    assert result.loss == pytest.approx(nll, rel=1e-6)


@pytest.mark.parametrize("method", ["mle", "map"])
def test_flat_prior_on_a_positive_scale_gives_the_root_mean_square(method, sample):
    result = pyro_mle.fit(flat_scale, sample, method=method, progress=False)
    assert result.converged
    assert result.params["scale"].item() == pytest.approx(float(np.sqrt(np.mean(sample.numpy() ** 2))), rel=1e-6)


class _FlatOnInterval(dist.TorchDistribution):
    """A density that cannot be sampled (no ``sample``): flat on (0, 10)."""

    arg_constraints = {}
    support = constraints.interval(0.0, 10.0)

    def __init__(self):
        super().__init__(torch.Size(), torch.Size(), validate_args=False)

    def log_prob(self, value):
        return torch.zeros_like(value)


def test_any_distribution_without_sample_starts_inside_its_support(sample):
    def model(y):
        mu = pyro.sample("mu", _FlatOnInterval())
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    assert init_to_centre({"fn": _FlatOnInterval()}).item() == 5.0  # the midpoint
    result = pyro_mle.fit(model, sample, method="map", progress=False)
    assert result.params["mu"].item() == pytest.approx(float(sample.mean()), rel=1e-6)


@pytest.mark.parametrize("init", [init_to_median, init_to_sample])
def test_an_init_that_samples_an_improper_prior_gets_the_fix(init, sample):
    with pytest.raises(ValueError) as e:
        pyro_mle.fit(flat_mean, sample, init_loc_fn=init, progress=False)
    msg = str(e.value)
    assert "latent site 'mu'" in msg and "ImproperUniform" in msg and "cannot be sampled" in msg
    assert "Leave init_loc_fn unset" in msg and "init_to_value" in msg


def test_init_to_value_with_the_centre_as_fallback_fits_an_improper_prior(sample):
    init = init_to_value(values={}, fallback=init_to_centre)
    result = pyro_mle.fit(flat_mean, sample, init_loc_fn=init, progress=False)
    assert result.params["mu"].item() == pytest.approx(float(sample.mean()), rel=1e-6)
