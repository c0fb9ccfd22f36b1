"""Enumerated discrete latents, sequential (``pyro.markov``) loops, ``infer={"event_dims"}``
and ``dim=-2`` plates through the converter, checked against scipy and against ArviZ's NumPyro
converter (``arviz_base.from_numpyro``) on the equivalent NumPyro model fed the same draws; and
every tree of the modelling styles through ArviZ's statistics and plots."""

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import config_enumerate
from pyro.ops.indexing import Vindex
from scipy import stats
from scipy.special import logsumexp

import pyro_mle
from pyro_mle.diagnostics import DiagnosticWarning

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
numpyro = pytest.importorskip("numpyro")
nd = pytest.importorskip("numpyro.distributions")
from arviz_base import from_numpyro  # noqa: E402
from arviz_base.io_numpyro import NumPyroInferenceAdapter  # noqa: E402
from test_datatree_styles import (  # noqa: E402
    SIGMA8,
    Y8,
    _censored_data,
    _missing_data,
    censored_model,
    eight_schools,
    missing_model,
    regression,
)

F64 = torch.float64


class _Draws(NumPyroInferenceAdapter):
    """Given draws ``(chain, draw, …)`` as a NumPyro inference result, for ``from_numpyro``
    (no NUTS compile in the tests; both converters see the same draws)."""

    def __init__(self, draws, model, args=(), kwargs=None):
        shape = next(iter(draws.values())).shape[:2]
        super().__init__(None, model, args, kwargs, shape)
        self.draws = {k: jax.numpy.asarray(np.asarray(v)) for k, v in draws.items()}

    @property
    def sample_dims(self):
        return ["chain", "draw"]

    def get_samples(self, seed=None, **kwargs):
        return self.draws


# ------------------------------------------------------------------ enumerated mixture


def _mixture_data(n=40):
    g = np.random.default_rng(0)
    k = g.random(n) < 0.4
    return np.where(k, g.normal(2.0, 0.7, n), g.normal(-1.0, 0.7, n))


@config_enumerate
def mixture(y):
    """Two Gaussian components, one assignment per row (``locs[k]``: not vectorisable)."""
    w = pyro.sample("w", dist.Dirichlet(torch.ones(2, dtype=F64)))
    locs = pyro.sample("locs", dist.Normal(torch.tensor([-1.0, 2.0], dtype=F64), 2.0).to_event(1))
    scale = pyro.sample("scale", dist.HalfNormal(torch.tensor(2.0, dtype=F64)))
    with pyro.plate("data", y.shape[0]):
        k = pyro.sample("k", dist.Categorical(w))
        pyro.sample("y", dist.Normal(locs[k], scale), obs=y)


@config_enumerate
def mixture_vindex(y):
    """The same model written to broadcast over draws (``Vindex``)."""
    w = pyro.sample("w", dist.Dirichlet(torch.ones(2, dtype=F64)))
    locs = pyro.sample("locs", dist.Normal(torch.tensor([-1.0, 2.0], dtype=F64), 2.0).to_event(1))
    scale = pyro.sample("scale", dist.HalfNormal(torch.tensor(2.0, dtype=F64)))
    with pyro.plate("data", y.shape[0]):
        k = pyro.sample("k", dist.Categorical(w))
        pyro.sample("y", dist.Normal(Vindex(locs)[..., k], scale), obs=y)


def _mixture_draws(chains=1, draws=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "w": dist.Dirichlet(torch.tensor([6.0, 4.0], dtype=F64)).sample((chains, draws)),
        "locs": torch.tensor([-1.0, 2.0], dtype=F64) + 0.1 * torch.randn(chains, draws, 2, generator=g, dtype=F64),
        "scale": 0.7 + 0.05 * torch.rand(chains, draws, generator=g, dtype=F64),
    }


def _mixture_reference(draws, y):
    """log Σ_k w_k N(y_n | loc_k, scale), by scipy: (chain, draw, n)."""
    w = draws["w"].numpy()[..., None, :]
    locs = draws["locs"].numpy()[..., None, :]
    scale = draws["scale"].numpy()[..., None, None]
    return logsumexp(np.log(w) + stats.norm(locs, scale).logpdf(y[:, None]), axis=-1)


@pytest.mark.parametrize(("model", "how"), [(mixture, "enumerated, loop"), (mixture_vindex, "enumerated, vectorised")])
def test_mixture_marginal_log_likelihood_equals_scipy(model, how):
    y = _mixture_data()
    draws = _mixture_draws()
    post = pyro_mle.Posterior("nuts", draws, {}, {}, model, (torch.tensor(y),), {})
    dt = pyro_mle.to_datatree(post)
    assert dt.attrs["log_likelihood_method"] == how
    ll = dt["log_likelihood"]["y"]
    assert ll.dims == ("chain", "draw", "data")
    np.testing.assert_allclose(ll.values, _mixture_reference(draws, y), rtol=1e-10, atol=1e-12)
    # the discrete site is summed out: not a posterior variable, never predicted
    assert "k" not in dt["posterior"] and set(dt["posterior_predictive"].data_vars) == {"y"}
    assert set(dt["observed_data"].data_vars) == {"y"}


def test_infer_discrete_draws_follow_the_responsibilities():
    """At one fixed θ repeated S times, the infer_discrete draws of k_n are Bernoulli(r_n) with
    r_n = w_1 N(y_n|loc_1) / Σ_k w_k N(y_n|loc_k): their means within 5 binomial standard errors."""
    y = _mixture_data()
    one = _mixture_draws(1, 1)
    S = 400
    draws = {k: v.expand((1, S) + v.shape[2:]).clone() for k, v in one.items()}
    post = pyro_mle.Posterior("nuts", draws, {}, {}, mixture_vindex, (torch.tensor(y),), {})
    dt = pyro_mle.to_datatree(post, infer_discrete=True, predictive=False, log_likelihood=False)
    assert dt.attrs["infer_discrete_method"] == "vectorised"
    k = dt["posterior"]["k"]
    assert k.dims == ("chain", "draw", "data") and k.dtype == np.int64
    w, locs, scale = one["w"].numpy()[0, 0], one["locs"].numpy()[0, 0], float(one["scale"][0, 0])
    joint = w * stats.norm(locs, scale).pdf(y[:, None])
    r = joint[:, 1] / joint.sum(-1)
    se = np.sqrt(r * (1 - r) / S) + 1e-3
    assert np.all(np.abs(k.values[0].mean(0) - r) < 5 * se)
    assert not np.all(r < 1e-3) and not np.all(r > 1 - 1e-3)  # the check is not vacuous
    with pytest.warns(DiagnosticWarning, match="nothing added"):
        pyro_mle.to_datatree(
            pyro_mle.Posterior("nuts", {"a": torch.zeros(1, 3, dtype=F64)}, {}, {}, _plain, (), {}),
            infer_discrete=True,
        )


def _plain():
    a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
    pyro.sample("y", dist.Normal(a, 1.0), obs=torch.tensor(0.5, dtype=F64))


def test_mixture_posterior_runs_end_to_end():
    """Pyro's NUTS (the fallback for discrete latents, which it enumerates) on the mixture,
    then the tree with infer_discrete draws (a short run: the plumbing, not the posterior)."""
    y = torch.tensor(_mixture_data())
    with pytest.warns(pyro_mle.SamplerFallbackWarning, match="discrete latent sites"):
        post = pyro_mle.posterior(
            mixture, y, method="nuts", num_samples=10, warmup=10, chains=1, seed=1, progress=False, diagnose=False
        )
    dt = pyro_mle.to_datatree(post, infer_discrete=True)
    assert "fallback" in post.info and "k" not in post.samples
    ref = _mixture_reference({k: v for k, v in post.samples.items()}, _mixture_data())
    np.testing.assert_allclose(dt["log_likelihood"]["y"].values, ref, rtol=1e-10, atol=1e-12)
    assert dt["posterior"]["k"].shape == (1, 10, 40) and dt.attrs["infer_discrete_method"] == "loop"
    assert set(dt["posterior_predictive"].data_vars) == {"y"}
    assert "energy" in dt["sample_stats"]


def test_a_shared_discrete_site_is_warned_about():
    @config_enumerate
    def shared(y):
        loc = pyro.sample("loc", dist.Normal(torch.tensor(0.0, dtype=F64), 3.0))
        regime = pyro.sample("regime", dist.Bernoulli(torch.tensor(0.5, dtype=F64)))
        with pyro.plate("data", y.shape[0]):
            pyro.sample("y", dist.Normal(loc + 2.0 * regime, 1.0), obs=y)

    y = np.array([0.1, 1.9, 2.3])
    locs = torch.linspace(-0.5, 0.5, 5, dtype=F64).reshape(1, 5)
    post = pyro_mle.Posterior("nuts", {"loc": locs}, {}, {}, shared, (torch.tensor(y),), {})
    with pytest.warns(
        DiagnosticWarning, match=r"'regime' is shared by the values of 'y' across the plate\(s\) \['data'\]"
    ):
        dt = pyro_mle.to_datatree(post)
    loc = locs.numpy()[..., None]
    ref = np.logaddexp(np.log(0.5) + stats.norm(loc, 1).logpdf(y), np.log(0.5) + stats.norm(loc + 2, 1).logpdf(y))
    np.testing.assert_allclose(dt["log_likelihood"]["y"].values, ref, rtol=1e-10)


# ------------------------------------------------- hidden Markov chain (pyro.markov)

HMM_Y = np.array([0.1, 2.2, 1.8, -0.3, 0.4, 2.5])
HMM_LOCS, HMM_INIT = np.array([0.0, 2.0]), np.array([0.9, 0.1])


def _hmm(markov=True, vindex=False):
    """Two states, stay probability ``p``; one site per step. ``pyro.markov`` recycles the
    enumeration dims (z_0, z_2, … share one); ``vindex`` writes it to broadcast over draws."""

    @config_enumerate
    def hmm(y):
        p = pyro.sample("p", dist.Beta(torch.tensor(2.0, dtype=F64), 2.0))
        locs, init = torch.tensor(HMM_LOCS), torch.tensor(HMM_INIT)
        trans = torch.stack([torch.stack([p, 1 - p], -1), torch.stack([1 - p, p], -1)], -2)
        z = None
        for t in pyro.markov(range(len(y))) if markov else range(len(y)):
            if z is None:
                probs = init
            else:
                probs = Vindex(trans)[..., z, :] if vindex else trans[z]
            z = pyro.sample(f"z_{t}", dist.Categorical(probs))
            pyro.sample(f"y_{t}", dist.Normal(Vindex(locs)[..., z] if vindex else locs[z], 1.0), obs=y[t])

    return hmm


def _forward(p, y, leave_out=None):
    """log p(y | p) by the forward recursion in scipy, the emission of step ``leave_out`` left out."""
    log_trans = np.log(np.array([[p, 1 - p], [1 - p, p]]))
    alpha = np.log(HMM_INIT)
    for t in range(len(y)):
        if t:
            alpha = logsumexp(alpha[:, None] + log_trans, axis=0)
        if t != leave_out:
            alpha = alpha + stats.norm(HMM_LOCS, 1.0).logpdf(y[t])
    return logsumexp(alpha)


def _hmm_reference(ps, y):
    """log p(y_t | y_{-t}, p) = log p(y | p) - log p(y_{-t} | p): (draws, steps)."""
    return np.array([[_forward(p, y) - _forward(p, y, t) for t in range(len(y))] for p in ps])


@pytest.mark.parametrize(
    ("markov", "vindex", "how"),
    [
        (True, False, "enumerated, conditional, loop"),
        (False, False, "enumerated, conditional, loop"),
        (True, True, "enumerated, conditional, vectorised"),
    ],
)
def test_hmm_pointwise_values_are_leave_one_out_conditionals(markov, vindex, how):
    from pyro_mle import _replay

    ps = torch.tensor([0.8, 0.6, 0.95, 0.3], dtype=F64)
    ll, got_how = _replay.pointwise_log_likelihood(_hmm(markov, vindex), {"p": ps}, (torch.tensor(HMM_Y),))
    assert got_how == how
    got = np.stack([ll[f"y_{t}"].numpy().reshape(-1) for t in range(len(HMM_Y))], -1)
    np.testing.assert_allclose(got, _hmm_reference(ps.numpy(), HMM_Y), rtol=1e-10)


def test_hmm_one_site_asked_for_is_still_its_leave_one_out_conditional():
    """The chain is found among all the observed sites, not only those asked for."""
    from pyro_mle import _replay

    ps = torch.tensor([0.8, 0.6], dtype=F64)
    ll, how = _replay.pointwise_log_likelihood(_hmm(False, True), {"p": ps}, (torch.tensor(HMM_Y),), sites=["y_3"])
    assert how == "enumerated, conditional, vectorised" and set(ll) == {"y_3"}
    np.testing.assert_allclose(ll["y_3"].numpy().reshape(-1), _hmm_reference(ps.numpy(), HMM_Y)[:, 3], rtol=1e-10)


def test_hmm_through_the_converter_stacks_and_loo_reads_it():
    import arviz_stats as azs

    ps = torch.linspace(0.55, 0.95, 200, dtype=F64).reshape(2, 100)
    post = pyro_mle.Posterior("nuts", {"p": ps}, {}, {}, _hmm(True, True), (torch.tensor(HMM_Y),), {})
    dt = pyro_mle.to_datatree(post, predictive=False, stack={"y": r"y_\d+"})
    assert dt.attrs["log_likelihood_method"] == "enumerated, conditional, vectorised"
    ref = _hmm_reference(ps.numpy().reshape(-1), HMM_Y).reshape(2, 100, -1)
    np.testing.assert_allclose(dt["log_likelihood"]["y"].values, ref, rtol=1e-10)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        assert azs.loo(dt).n_data_points == len(HMM_Y)


# ---------------------------------------------------------------------- AR(1) loop

T = 30


def _ar_data():
    g = np.random.default_rng(1)
    y = np.zeros(T)
    for t in range(1, T):
        y[t] = 0.6 * y[t - 1] + 0.5 * g.normal()
    return y


def ar1(y):
    rho = pyro.sample("rho", dist.Uniform(torch.tensor(-1.0, dtype=F64), 1.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(torch.tensor(1.0, dtype=F64)))
    for t in pyro.markov(range(1, len(y))):
        pyro.sample(f"y_{t}", dist.Normal(rho * y[t - 1], sigma), obs=y[t])


def ar1_numpyro(y):
    from numpyro.contrib.control_flow import scan

    rho = numpyro.sample("rho", nd.Uniform(-1.0, 1.0))
    sigma = numpyro.sample("sigma", nd.HalfNormal(1.0))

    def step(prev, y_t):
        numpyro.sample("y", nd.Normal(rho * prev, sigma), obs=y_t)
        return y_t, None

    scan(step, y[0], y[1:])


def ar1_numpyro_loop(y):
    rho = numpyro.sample("rho", nd.Uniform(-1.0, 1.0))
    sigma = numpyro.sample("sigma", nd.HalfNormal(1.0))
    for t in range(1, len(y)):
        numpyro.sample(f"y_{t}", nd.Normal(rho * y[t - 1], sigma), obs=y[t])


@pytest.fixture(scope="module")
def ar_pair():
    y = _ar_data()
    g = torch.Generator().manual_seed(0)
    samples = {
        "rho": 0.6 + 0.08 * torch.randn(2, 30, generator=g, dtype=F64),
        "sigma": 0.5 + 0.05 * torch.rand(2, 30, generator=g, dtype=F64),
    }
    ref = from_numpyro(_Draws(samples, ar1_numpyro, (y,)), log_likelihood=True)
    post = pyro_mle.Posterior("nuts", samples, {}, {}, ar1, (torch.tensor(y),), {})
    return ref, post


def test_ar1_stacked_matches_from_numpyro_scan(ar_pair, same_groups):
    ref, post = ar_pair
    dt = pyro_mle.to_datatree(post, stack={"y": r"y_\d+"})
    same_groups(dt, ref)
    assert dt["posterior_predictive"]["y"].dims == ("chain", "draw", "y_dim_0")
    assert dt["posterior_predictive"]["y"].sizes["y_dim_0"] == T - 1


def test_ar1_stacked_log_likelihood_equals_scipy_and_loo_sees_every_step(ar_pair):
    import arviz_stats as azs

    _, post = ar_pair
    y = _ar_data()
    with pytest.warns(DiagnosticWarning, match=r"stack=\{'y': r'y_\\d\+'\}"):
        unstacked = pyro_mle.to_datatree(post, predictive=False)
    assert len(unstacked["log_likelihood"].data_vars) == T - 1  # one variable per step, as written
    dt = pyro_mle.to_datatree(post, stack=True)
    rho, sigma = post.samples["rho"].numpy()[..., None], post.samples["sigma"].numpy()[..., None]
    ref = stats.norm(rho * y[:-1], sigma).logpdf(y[1:])
    np.testing.assert_allclose(dt["log_likelihood"]["y"].values, ref, rtol=1e-12)
    np.testing.assert_array_equal(dt["observed_data"]["y"].values, y[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        elpd = azs.loo(dt)
    assert elpd.n_data_points == T - 1


def test_ar1_unstacked_matches_from_numpyro_python_loop(ar_pair):
    """Without stack=, one variable per step, as ArviZ's NumPyro converter writes a Python loop."""
    _, post = ar_pair
    ref = from_numpyro(_Draws(dict(post.samples), ar1_numpyro_loop, (_ar_data(),)), log_likelihood=True)
    with pytest.warns(DiagnosticWarning, match="look like the steps of one sequential loop"):
        dt = pyro_mle.to_datatree(post, predictive=False)
    for group in ("log_likelihood", "observed_data"):
        ours, theirs = dt[group].to_dataset(), ref[group].to_dataset()
        assert set(ours.data_vars) == set(theirs.data_vars) and len(ours.data_vars) == T - 1, group
        for name in theirs.data_vars:
            assert ours[name].dims == theirs[name].dims, (group, name)
            np.testing.assert_allclose(ours[name].values, theirs[name].values, rtol=1e-10, err_msg=f"{group}/{name}")


def test_a_latent_loop_stacks_in_step_order_in_every_group():
    """A random walk x_t observed as y_t: x_0 … x_11 become posterior["x"] with x_10 after x_9
    (numeric order, not the strings' order), in posterior and prior alike."""
    steps = 12
    y = torch.linspace(-1, 1, steps, dtype=F64)

    def walk(y):
        s = pyro.sample("s", dist.HalfNormal(torch.tensor(1.0, dtype=F64)))
        x = torch.tensor(0.0, dtype=F64)
        for t in pyro.markov(range(steps)):
            x = pyro.sample(f"x_{t}", dist.Normal(x, s))
            pyro.sample(f"y_{t}", dist.Normal(x, 0.5), obs=y[t])

    g = torch.Generator().manual_seed(4)
    draws = {"s": 0.5 + 0.1 * torch.rand(1, 8, generator=g, dtype=F64)}
    draws |= {f"x_{t}": torch.randn(1, 8, generator=g, dtype=F64) for t in range(steps)}
    post = pyro_mle.Posterior("nuts", draws, {}, {}, walk, (y,), {})
    dt = pyro_mle.to_datatree(post, stack=True, prior=5)
    x = dt["posterior"]["x"]
    assert x.dims == ("chain", "draw", "x_dim_0")
    np.testing.assert_array_equal(x.values, np.stack([draws[f"x_{t}"].numpy() for t in range(steps)], -1))
    assert dt["prior"]["x"].shape == (1, 5, steps) and dt["prior_predictive"]["y"].shape == (1, 5, steps)
    ref = stats.norm(x.values, 0.5).logpdf(y.numpy())
    np.testing.assert_allclose(dt["log_likelihood"]["y"].values, ref, rtol=1e-12)


def ar1_masked(y, mask):
    rho = pyro.sample("rho", dist.Uniform(torch.tensor(-1.0, dtype=F64), 1.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(torch.tensor(1.0, dtype=F64)))
    for t in pyro.markov(range(1, len(y))):
        with pyro.poutine.mask(mask=mask[t]):
            pyro.sample(f"y_{t}", dist.Normal(rho * y[t - 1], sigma), obs=y[t])


def ar1_obs_mask(y, mask):
    rho = pyro.sample("rho", dist.Uniform(torch.tensor(-1.0, dtype=F64), 1.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(torch.tensor(1.0, dtype=F64)))
    for t in pyro.markov(range(1, len(y))):
        pyro.sample(f"y_{t}", dist.Normal(rho * y[t - 1], sigma), obs=y[t], obs_mask=mask[t])


@pytest.mark.parametrize("program", [ar1_masked, ar1_obs_mask])
def test_a_masked_step_is_left_out_of_the_stack_with_step_numbers(ar_pair, program):
    """Step 2 masked out whole: ``y`` holds steps 1, 3, 4, … (scipy's values there), labelled
    by their step numbers, and arviz_stats.loo reads it (a NaN in its place would make it NaN)."""
    import arviz_stats as azs

    _, post = ar_pair
    y = _ar_data()
    mask = torch.ones(T, dtype=torch.bool)
    mask[2] = False
    masked = pyro_mle.Posterior("nuts", dict(post.samples), {}, {}, program, (torch.tensor(y), mask), {})
    with pytest.warns(DiagnosticWarning, match=r"stack 'y': the sites \['y_2'\] are masked out whole"):
        dt = pyro_mle.to_datatree(masked, stack={"y": r"y_\d+"})
    kept = [t for t in range(1, T) if t != 2]
    rho, sigma = post.samples["rho"].numpy()[..., None], post.samples["sigma"].numpy()[..., None]
    ref = stats.norm(rho * y[np.array(kept) - 1], sigma).logpdf(y[kept])
    ll = dt["log_likelihood"]["y"]
    assert ll.dims == ("chain", "draw", "y_dim_0") and list(ll["y_dim_0"].values) == kept
    np.testing.assert_allclose(ll.values, ref, rtol=1e-12)
    np.testing.assert_array_equal(dt["observed_data"]["y"].values, y[kept])
    assert list(dt["posterior_predictive"]["y"]["y_dim_0"].values) == kept
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        elpd = azs.loo(dt)
    assert elpd.n_data_points == T - 2 and np.isfinite(elpd.elpd)


def test_bad_stack_specs_are_explained(ar_pair):
    _, post = ar_pair
    with pytest.raises(ValueError, match="matches no site"):
        pyro_mle.to_datatree(post, stack={"z": r"z_\d+"}, predictive=False)
    with pytest.raises(TypeError, match="stack must be True or a mapping"):
        pyro_mle.to_datatree(post, stack="y", predictive=False)


# ------------------------------------------------ event_dims and a dim=-2 plate


def nested(y=None):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
    with pyro.plate("g", 3, dim=-2):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        with pyro.plate("obs", 4, dim=-1):
            pyro.sample("y", dist.Normal(z, 1.0), obs=y)
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1), infer={"event_dims": ["coef"]})
    with pyro.plate("rows", 5):
        pyro.sample(
            "v", dist.Normal(w, 1.0).to_event(1), obs=torch.zeros(5, 2, dtype=F64), infer={"event_dims": ["coef"]}
        )


def nested_numpyro(y=None):
    mu = numpyro.sample("mu", nd.Normal(0.0, 1.0))
    with numpyro.plate("g", 3, dim=-2):
        z = numpyro.sample("z", nd.Normal(mu, 1.0))
        with numpyro.plate("obs", 4, dim=-1):
            numpyro.sample("y", nd.Normal(z, 1.0), obs=y)
    w = numpyro.sample("w", nd.Normal(np.zeros(2), 1.0).to_event(1), infer={"event_dims": ["coef"]})
    with numpyro.plate("rows", 5):
        numpyro.sample("v", nd.Normal(w, 1.0).to_event(1), obs=np.zeros((5, 2)), infer={"event_dims": ["coef"]})


def test_event_dims_and_a_dim_minus_2_plate_match_from_numpyro(same_groups):
    y = np.random.default_rng(2).normal(size=(3, 4))
    g = torch.Generator().manual_seed(1)
    samples = {
        "mu": torch.randn(1, 12, generator=g, dtype=F64),
        "z": torch.randn(1, 12, 3, 1, generator=g, dtype=F64),
        "w": torch.randn(1, 12, 2, generator=g, dtype=F64),
    }
    ref = from_numpyro(_Draws(samples, nested_numpyro, kwargs={"y": y}), log_likelihood=True)
    post = pyro_mle.Posterior("nuts", samples, {}, {}, nested, (torch.tensor(y),), {})
    dt = pyro_mle.to_datatree(post)
    same_groups(dt, ref, dtypes=False)
    assert dt["posterior"]["z"].dims == ("chain", "draw", "g", "z_dim_0")
    assert dt["observed_data"]["v"].dims == ("rows", "coef")


def test_event_dims_of_the_wrong_length_are_refused():
    def model():
        w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1), infer={"event_dims": ["a", "b"]})
        pyro.sample("y", dist.Normal(w.sum(), 1.0), obs=torch.tensor(0.0, dtype=F64))

    post = pyro_mle.Posterior("nuts", {"w": torch.zeros(1, 4, 2, dtype=F64)}, {}, {}, model, (), {})
    with pytest.raises(ValueError, match=r"site 'w' has infer=\{'event_dims': \['a', 'b'\]\}, 2 name\(s\) for its 1"):
        pyro_mle.to_datatree(post)


def test_event_dims_name_the_event_axis_of_a_deterministic_in_a_plate():
    """``pyro.deterministic(..., event_dim=1)`` in a plate: one name for its one event axis,
    the plate names the other; the values are the program's ``y * mu, y + mu``."""
    y = torch.tensor([0.5, -1.0, 2.0, 0.1], dtype=F64)

    def model(y):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
        with pyro.plate("rows", 4):
            pyro.deterministic("v", torch.stack([y * mu, y + mu], -1), event_dim=1)
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    named = pyro.poutine.infer_config(model, lambda msg: {"event_dims": ["pair"]} if msg["name"] == "v" else {})
    mu = torch.tensor([[0.3, -0.2, 1.5]], dtype=F64)
    dt = pyro_mle.to_datatree(pyro_mle.Posterior("nuts", {"mu": mu}, {}, {}, named, (y,), {}), predictive=False)
    v = dt["posterior"]["v"]
    assert v.dims == ("chain", "draw", "rows", "pair")
    m, yy = mu.numpy()[..., None], y.numpy()
    np.testing.assert_allclose(v.values, np.stack([yy * m, yy + m], -1), rtol=1e-12)


# ------------------------------------------- every style through ArviZ's functions


def multivariate(X, y):
    """Each row a 2-vector observation (``.to_event(1)`` inside a plate): one pointwise value per row."""
    b = pyro.sample("b", dist.Normal(torch.zeros(2, dtype=F64), 2.0).to_event(1))
    with pyro.plate("rows", X.shape[0]):
        pyro.sample("y", dist.Normal(X[:, None] * b, 0.5).to_event(1), obs=y)


def _stats(chains, draws, seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "energy": 10 + torch.randn(chains, draws, generator=g, dtype=F64),
        "diverging": torch.zeros(chains, draws, dtype=torch.bool),
    }


def _tree(name):
    """The tree of one modelling style: draws near each model's posterior (2 chains × 40),
    energy statistics for plot_energy."""
    C, S = 2, 40
    g = torch.Generator().manual_seed(3)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    def post(draws, model, args):
        return pyro_mle.Posterior("nuts", draws, _stats(C, S, 5), {}, model, args, {})

    if name == "eight_schools":
        draws = {"mu": 4 + 3 * randn(C, S), "tau": (3 * randn(C, S)).abs(), "theta_tilde": randn(C, S, 8)}
        return pyro_mle.to_datatree(post(draws, eight_schools, (8, torch.tensor(SIGMA8), torch.tensor(Y8))))
    if name == "missing":
        x, y = _missing_data()
        draws = {"a": 1 + 0.1 * randn(C, S), "b": 2 + 0.1 * randn(C, S), "y_unobserved": randn(C, S, len(x))}
        return pyro_mle.to_datatree(post(draws, missing_model, (torch.tensor(x), torch.tensor(y))))
    if name == "censored":
        t, c = _censored_data()
        draws = {"rate": 0.7 + 0.05 * randn(C, S).abs()}
        args = (torch.tensor(t), torch.tensor(c))
        return pyro_mle.to_datatree(post(draws, censored_model, args), log_likelihood={"t": ["t", "censored"]})
    if name == "to_event":
        X = torch.linspace(-1, 1, 20, dtype=F64)
        y = X[:, None] * torch.tensor([1.0, -2.0], dtype=F64) + 0.5 * randn(20, 2)
        draws = {"b": torch.tensor([1.0, -2.0], dtype=F64) + 0.1 * randn(C, S, 2)}
        return pyro_mle.to_datatree(post(draws, multivariate, (X, y)))
    if name == "ar1":
        draws = {"rho": 0.6 + 0.05 * randn(C, S), "sigma": 0.5 + 0.03 * randn(C, S).abs()}
        return pyro_mle.to_datatree(post(draws, ar1, (torch.tensor(_ar_data()),)), stack=True)
    if name == "mixture":
        y = torch.tensor(_mixture_data())
        return pyro_mle.to_datatree(post(_mixture_draws(C, S), mixture_vindex, (y,)), infer_discrete=True)
    if name == "prior_predictions":
        X = torch.randn(15, 2, generator=g, dtype=F64)
        y = X @ torch.tensor([1.0, -1.0], dtype=F64) + 0.3 * randn(15)
        draws = {"w": torch.tensor([1.0, -1.0], dtype=F64) + 0.05 * randn(C, S, 2), "s": 0.3 + 0.02 * randn(C, S).abs()}
        return pyro_mle.to_datatree(post(draws, regression, (X, y)), prior=40, predictions=(randn(4, 2),))
    raise KeyError(name)


# style → whether ArviZ's own loo_pit (and plot_loo_pit) can read it: a row of several values
# with one pointwise log-likelihood (.to_event inside a plate) cannot be, from_numpyro's tree
# of the same model neither; pyro_mle.loo_pit gives each value its row's weights
STYLES = {
    "eight_schools": True,
    "missing": True,
    "censored": True,
    "to_event": False,
    "ar1": True,
    "mixture": True,
    "prior_predictions": True,
}


@pytest.mark.parametrize("name", list(STYLES))
def test_arviz_stats_and_plots_run_on_every_style(name):
    import arviz_plots as azp
    import arviz_stats as azs
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dt = _tree(name)
    with warnings.catch_warnings():
        # a high Pareto k is a property of the data and of 80 draws, not of the tree
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        elpd = azs.loo(dt)
        assert np.isfinite(elpd.elpd)
        assert elpd.n_data_points == int(np.prod([dt["log_likelihood"].sizes[d] for d in _obs_dims(dt)]))
        pit = pyro_mle.loo_pit(dt)
        assert all(np.all((v.values >= 0) & (v.values <= 1)) for v in pit.data_vars.values())
        if STYLES[name]:
            xr_equal = azs.loo_pit(dt, random_state=0).equals(pyro_mle.loo_pit(dt, random_state=0))
            assert xr_equal  # where ArviZ reads the tree, the two agree
        else:
            with pytest.raises(ValueError, match="broadcast"):
                azs.loo_pit(dt)
            assert pit["y"].dims == dt["observed_data"]["y"].dims
        cmp = azs.compare({"a": dt, "b": dt})
        assert len(cmp) == 2
        try:
            azp.plot_trace_dist(dt, backend="matplotlib")
            azp.plot_forest(dt, backend="matplotlib")
            azp.plot_ppc_dist(dt, num_samples=20, backend="matplotlib")
            if STYLES[name]:
                azp.plot_loo_pit(dt, backend="matplotlib")
            azp.plot_energy(dt, backend="matplotlib")
            azp.plot_compare(cmp, backend="matplotlib")
        finally:
            plt.close("all")


def _obs_dims(dt):
    var = next(iter(dt["log_likelihood"].data_vars.values()))
    return [d for d in var.dims if d not in ("chain", "draw")]
