"""Fitted mean with a ±2σ band: homoscedastic (the 1-3-1 network, fixed σ) and heteroscedastic
(a network predicting mean and scale) (UDL figs. 5.3 and 5.11).

    python examples/regression_bands.py --n 200 --out out/examples
"""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import pyro_mle  # noqa: E402
from pyro_mle.model_files import load_model_file  # noqa: E402
from pyro_mle.plots import plot_regression_band  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import grid_along_first_input, out_dir, parser  # noqa: E402

MODELS = (("shallow_network", "homoscedastic: 1-3-1 ReLU network"), ("heteroscedastic", "heteroscedastic"))


def main(args):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (name, title) in zip(axes, MODELS):
        mf = load_model_file(name)
        x, y = mf.load_data(n=args.n, seed=args.seed)
        fit = pyro_mle.fit(mf.model, x, y, seed=args.seed)
        inputs, values = grid_along_first_input(x)
        d = fit.predict(inputs, num_samples=1).distributions["y"]
        plot_regression_band(x, y, values, d.mean, d.stddev, ax=ax, title=f"{title} (MLE)")
    fig.tight_layout()
    path = out_dir(args) / "regression_bands.png"
    fig.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    main(parser(__doc__.splitlines()[0], n=200).parse_args())
