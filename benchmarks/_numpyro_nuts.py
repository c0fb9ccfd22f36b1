"""NumPyro's NUTS on the benchmark's Bayesian logistic regression, in a fresh process.

Run by :mod:`benchmarks.run` as ``python -m benchmarks._numpyro_nuts OUT.npz --seed S``: the
same data (regenerated from the same seed), the same priors, 500 warm-up and 500 draws, one
chain, float64. Writes the draws and the times: ``import_s`` (importing JAX and NumPyro) and
``run_s`` (building the sampler, compiling and sampling, until the draws are ready).
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

from benchmarks.datasets import logistic_nuts_data  # noqa: E402

IMPORT_S = time.perf_counter() - _start


def model(x, y=None):
    w = numpyro.sample("w", dist.Normal(jnp.zeros(x.shape[1]), 1.0).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=x @ w + b), obs=y)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    X, y = logistic_nuts_data()
    start = time.perf_counter()
    mcmc = MCMC(NUTS(model), num_warmup=args.warmup, num_samples=args.samples, num_chains=1, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(args.seed), jnp.asarray(X), jnp.asarray(y))
    draws = jax.block_until_ready(mcmc.get_samples())
    run_s = time.perf_counter() - start
    np.savez(
        args.out,
        w=np.asarray(draws["w"]),
        b=np.asarray(draws["b"]),
        run_s=run_s,
        import_s=IMPORT_S,
        version=numpyro.__version__,
    )


if __name__ == "__main__":
    main()
