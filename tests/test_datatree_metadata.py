"""Names, dtypes and attrs of the converter's trees against ArviZ's NumPyro converter
(``arviz_base.from_numpyro``), constant data of ``PyroModule`` programs, and point-fit trees."""

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule, PyroSample

import pyro_mle

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
numpyro = pytest.importorskip("numpyro")
nd = pytest.importorskip("numpyro.distributions")
from arviz_base import from_numpyro  # noqa: E402

F64 = torch.float64
N = 15


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(N, 2, generator=g, dtype=F64)
    y = X @ torch.tensor([1.0, -0.5], dtype=F64) + 0.3 + torch.randn(N, generator=g, dtype=F64)
    return X, y


def regression(X, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
    with pyro.plate("obs", X.shape[0]):
        pyro.sample("y", dist.Normal(X @ w, 1.0), obs=y)


def regression_numpyro(X, y=None):
    w = numpyro.sample("w", nd.Normal(np.zeros(2), 1.0).to_event(1))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", nd.Normal(X @ w, 1.0), obs=y)


class ModuleRegression(PyroModule):
    def __init__(self):
        super().__init__()
        self.linear = PyroModule[torch.nn.Linear](2, 1).to(F64)
        self.linear.weight = PyroSample(dist.Normal(torch.tensor(0.0, dtype=F64), 1.0).expand([1, 2]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(torch.tensor(0.0, dtype=F64), 1.0).expand([1]).to_event(1))

    def forward(self, X, y=None):
        mean = self.linear(X).squeeze(-1)  # the weights are drawn outside the plate
        with pyro.plate("obs", X.shape[0]):
            pyro.sample("y", dist.Normal(mean, 1.0), obs=y)


@pytest.fixture(scope="module")
def pair(data):
    """from_numpyro on a NumPyro run, and our tree of a NUTS run of the Pyro program, and of
    the NumPyro draws replayed through the Pyro program."""
    from numpyro.infer import MCMC, NUTS

    X, y = data
    mcmc = MCMC(NUTS(regression_numpyro), num_warmup=50, num_samples=40, num_chains=1, progress_bar=False)
    fields = ("num_steps", "accept_prob", "adapt_state.step_size", "energy", "potential_energy", "diverging")
    mcmc.run(jax.random.PRNGKey(0), X.numpy(), y.numpy(), extra_fields=fields)
    ref = from_numpyro(mcmc, log_likelihood=True)
    w = torch.tensor(np.asarray(mcmc.get_samples(group_by_chain=True)["w"]), dtype=F64)
    replayed = pyro_mle.to_datatree(pyro_mle.Posterior("nuts", {"w": w}, {}, {}, regression, (X, y), {}))
    post = pyro_mle.posterior(regression, X, y, num_samples=40, warmup=50, chains=1, seed=0, diagnose=False)
    return ref, replayed, pyro_mle.to_datatree(post, predictive=False)


def test_same_draws_same_tree_as_from_numpyro(pair, same_groups):
    ref, replayed, _ = pair
    same_groups(replayed, ref)


def test_every_group_names_the_inference_library_and_its_version(pair):
    ref, replayed, tree = pair
    for dt in (replayed, tree):
        for name, group in dt.children.items():
            assert group.attrs["inference_library"] == "pyro", name
            assert group.attrs["inference_library_version"] == pyro.__version__, name
            # the keys from_numpyro writes on each of its groups are there too
            assert set(ref["posterior"].attrs) <= set(group.attrs), name


def test_sample_stats_names_and_dtypes_as_from_numpyro(pair):
    ref, _, tree = pair
    ours, theirs = tree["sample_stats"].to_dataset(), ref["sample_stats"].to_dataset()
    shared = set(ours.data_vars) & set(theirs.data_vars)
    assert {"diverging", "acceptance_rate", "step_size", "n_steps", "tree_depth", "energy", "lp"} <= shared
    for name in shared:
        assert ours[name].dtype.kind == theirs[name].dtype.kind, name  # bool, int, float alike
        assert ours[name].dims == theirs[name].dims, name
    # from_numpyro writes reached_max_tree_depth; arviz_stats.diagnose reads reached_max_treedepth
    assert ours["reached_max_treedepth"].dtype == bool
    accept = ours["acceptance_rate"].values
    assert ((accept >= 0) & (accept <= 1)).all()


def test_pyro_engine_acceptance_rate_is_a_probability(data):
    X, y = data
    post = pyro_mle.posterior(regression, X, y, num_samples=30, warmup=30, chains=1, sampler="pyro", diagnose=False)
    stats = pyro_mle.to_datatree(post, predictive=False)["sample_stats"]
    accept = stats["acceptance_rate"].values
    assert ((accept >= 0) & (accept <= 1)).all() and accept.dtype == np.float64
    assert stats["diverging"].dtype == bool and stats["reached_max_treedepth"].dtype == bool
    assert stats["tree_depth"].dtype.kind == "i" and stats["n_steps"].dtype.kind == "i"


@pytest.mark.parametrize("kind", ["posterior", "fit"])
def test_pyro_module_programs_get_constant_data(kind, data):
    X, y = data
    module = ModuleRegression()
    if kind == "posterior":
        result = pyro_mle.posterior(module, X, y, method="laplace", num_samples=20, chains=2)
    else:
        result = pyro_mle.fit(module, X, y, method="map", progress=False)
    dt = pyro_mle.to_datatree(result, num_draws=20)
    const = dt["constant_data"]
    assert set(const.data_vars) == {"X"}  # y is the observation, in observed_data
    assert const["X"].dims == ("obs", "X_dim_1")
    np.testing.assert_array_equal(const["X"].values, X.numpy())


def test_point_fit_tree_says_it_is_a_point_estimate(data):
    import arviz_stats as azs

    X, y = data
    fit = pyro_mle.fit(regression, X, y, method="map", progress=False)
    dt = pyro_mle.to_datatree(fit, num_draws=100)
    assert dt.attrs["point_estimate"] == "map"
    for group in ("posterior", "posterior_predictive", "log_likelihood"):
        assert dt[group].attrs["point_estimate"] == "map", group
    assert "point_estimate" not in dt["observed_data"].attrs  # data, not drawn from the estimate
    # ArviZ's PSIS stops on identical draws (as the README says); pyro_mle.loo_pit does not
    with pytest.raises(ValueError, match="All tail values are the same"):
        azs.loo(dt)
    with pytest.raises(ValueError, match="All tail values are the same"):
        azs.loo_pit(dt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pit = pyro_mle.loo_pit(dt)["y"].values
    below = (dt["posterior_predictive"]["y"].values[0] <= y.numpy()).mean(0)
    assert np.abs(pit - below).max() <= 1.0 / 100 + 1e-12
    # a tree handed on without its root attrs is still recognised by its groups
    bare = dt.copy()
    bare.attrs = {}
    np.testing.assert_array_equal(pyro_mle.loo_pit(bare)["y"].values, pit)
