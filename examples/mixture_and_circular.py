"""Predictive draws where a mean and a band mislead: a mixture density network on bimodal data,
and von Mises regression of a wind direction (UDL figs. 5.12 and 5.13).

    python examples/mixture_and_circular.py --n 300 --out out/examples
"""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import pyro_mle  # noqa: E402
from pyro_mle.model_files import load_model_file  # noqa: E402
from pyro_mle.plots import plot_predictive_draws  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import grid_along_first_input, out_dir, parser  # noqa: E402

MODELS = (("mixture_density", False), ("wind_direction", True))


def main(args):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (name, circular) in zip(axes, MODELS):
        mf = load_model_file(name)
        x, y = mf.load_data(n=args.n, seed=args.seed)
        fit = pyro_mle.fit(mf.model, x, y, seed=args.seed)
        inputs, values = grid_along_first_input(x, size=100)
        draws = fit.predict(inputs, num_samples=args.draws, seed=args.seed).draws["y"]
        x1 = x if x.dim() == 1 else x[:, 0]
        plot_predictive_draws(x1, y, values, draws, ax=ax, title=f"{name} (MLE)", circular=circular)
    fig.tight_layout()
    path = out_dir(args) / "mixture_and_circular.png"
    fig.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0], n=300)
    p.add_argument("--draws", type=int, default=50, help="predictive draws per grid point (default 50)")
    main(p.parse_args())
