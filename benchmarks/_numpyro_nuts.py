"""NumPyro's NUTS on a benchmark posterior, in a fresh process (its first run: compilation included).

Run by :mod:`benchmarks.run` as ``python -m benchmarks._numpyro_nuts OUT.npz --problem P --seed S``:

* ``--problem logistic --rows N --features D``: Bayesian logistic regression, the same data
  (regenerated from the same seed) and the same Normal(0, 1) priors as the Pyro program;
* ``--problem schools``: the non-centred eight schools (mu ~ N(0, 5), tau ~ HalfCauchy(5),
  eta ~ N(0, 1)^8, y ~ N(mu + tau·eta, sd)).

500 warm-up and 500 draws per chain (``--warmup``, ``--samples``), ``--chains`` chains run one
after another (``chain_method="sequential"``; one CPU device), float64. Writes every latent
site's draws ``(chain, draw, ...)`` and the times: ``import_s`` (importing JAX and NumPyro),
``run_s`` (wall time from building the sampler until the draws are ready: tracing, compiling,
sampling) and ``cpu_s`` (this process's CPU time over the same span, all threads).
"""

import argparse
import time

_start = time.perf_counter()
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402

from benchmarks.datasets import SCHOOLS_SD, SCHOOLS_Y, logistic_nuts_data  # noqa: E402

IMPORT_S = time.perf_counter() - _start


def logistic_model(x, y=None):
    w = numpyro.sample("w", dist.Normal(jnp.zeros(x.shape[1]), 1.0).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=x @ w + b), obs=y)


def schools_model(sd, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", sd.shape[0]):
        eta = numpyro.sample("eta", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu + tau * eta, sd), obs=y)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--problem", choices=["logistic", "schools"], default="logistic")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--chains", type=int, default=1)
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    if args.problem == "logistic":
        model, data = (
            logistic_model,
            [jnp.asarray(a) for a in logistic_nuts_data(rows=args.rows, features=args.features)],
        )
        sites = ("w", "b")
    else:
        model, data = schools_model, [jnp.asarray(SCHOOLS_SD), jnp.asarray(SCHOOLS_Y)]
        sites = ("mu", "tau", "eta")
    start, cpu = time.perf_counter(), time.process_time()
    mcmc = MCMC(
        NUTS(model),
        num_warmup=args.warmup,
        num_samples=args.samples,
        num_chains=args.chains,
        chain_method="sequential",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(args.seed), *data)
    draws = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
    run_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    np.savez(
        args.out,
        **{k: np.asarray(draws[k]) for k in sites},
        run_s=run_s,
        cpu_s=cpu_s,
        import_s=IMPORT_S,
        version=numpyro.__version__,
    )


if __name__ == "__main__":
    main()
