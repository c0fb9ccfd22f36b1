"""Class probabilities of binary (Bernoulli) and multiclass (Categorical) classifiers fitted by
maximum likelihood, i.e. by minimising cross-entropy (UDL figs. 5.9 and 5.10).

    python examples/class_probabilities.py --n 200 --out out/examples
"""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import pyro_mle  # noqa: E402
from pyro_mle.model_files import load_model_file  # noqa: E402
from pyro_mle.plots import plot_class_probabilities  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import grid_along_first_input, out_dir, parser  # noqa: E402

MODELS = ("binary_classification", "multiclass_classification")


def main(args):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, name in zip(axes, MODELS):
        mf = load_model_file(name)
        x, y = mf.load_data(n=args.n, seed=args.seed)
        fit = pyro_mle.fit(mf.model, x, y, seed=args.seed)
        inputs, values = grid_along_first_input(x)
        d = fit.predict(inputs, num_samples=1).distributions["y"]
        x1 = x if x.dim() == 1 else x[:, 0]
        plot_class_probabilities(x1, y, values, d.probs, ax=ax, title=f"{name} (MLE = min cross-entropy)")
        if x.dim() > 1:
            ax.set_xlabel("first input (others at their mean)")
    fig.tight_layout()
    path = out_dir(args) / "class_probabilities.png"
    fig.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    main(parser(__doc__.splitlines()[0], n=200).parse_args())
