"""Likelihood, negative log-likelihood and sum of squares against one parameter (UDL fig. 5.5).

Fits ``models/linear_regression.py`` by maximum likelihood, then sweeps its intercept with the
weights held at their estimate: argmax likelihood = argmin NLL = argmin least squares, at
the fitted value, which equals numpy's lstsq.

    python examples/least_squares_likelihood.py --n 50 --out out/examples
"""

import sys

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402

import pyro_mle  # noqa: E402
from pyro_mle.model_files import load_model_file  # noqa: E402
from pyro_mle.plots import plot_likelihood_profile  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import out_dir, parser  # noqa: E402


def main(args):
    mf = load_model_file("linear_regression")
    x, y = mf.load_data(n=args.n, seed=args.seed)
    fit = pyro_mle.fit(mf.model, x, y, seed=args.seed)
    w, b = fit.params["w"].double(), float(fit.params["b"])
    design = np.concatenate([x.double().numpy(), np.ones((len(x), 1))], 1)
    lstsq = np.linalg.lstsq(design, y.double().numpy(), rcond=None)[0]
    print(f"MLE w = {w.tolist()}, b = {b:.6f}; numpy lstsq w = {lstsq[:-1].tolist()}, b = {lstsq[-1]:.6f}")
    path = out_dir(args) / "least_squares_likelihood.png"
    base = x.double() @ w  # every parameter but the intercept, at its estimate
    fig = plot_likelihood_profile(y, base=base, intercept=b, scale=mf.module.NOISE_SCALE)
    fig.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    main(parser(__doc__.splitlines()[0], n=50).parse_args())
