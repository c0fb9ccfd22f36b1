"""MLE, MAP and the NUTS posterior of one program on one plot.

With few rows the prior matters: the MAP is pulled from the MLE toward the prior, and the
posterior shows how uncertain both are.

    python examples/mle_map_posterior.py --n 15 --draws 500 --out out/examples
"""

import sys
import warnings

import matplotlib

matplotlib.use("Agg")

import pyro_mle  # noqa: E402
from pyro_mle.model_files import load_model_file  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import out_dir, parser  # noqa: E402


def main(args):
    mf = load_model_file(args.model)
    x, y = mf.load_data(n=args.n, seed=args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("default", pyro_mle.DiagnosticWarning)  # show, don't fail, on short runs
        cmp = pyro_mle.compare(
            mf.model,
            x,
            y,
            methods=("mle", "map", "nuts"),
            seed=args.seed,
            # low-rank mass matrix: a line's intercept and slope are correlated a posteriori
            posterior_options={"num_samples": args.draws, "warmup": args.draws, "chains": 2, "adaptation": "low_rank"},
        )
    print(cmp)
    path = out_dir(args) / "mle_map_posterior.png"
    cmp.plot().savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0], n=15)
    p.add_argument("--model", default="linear_regression", help="model name or file (default linear_regression)")
    p.add_argument("--draws", type=int, default=500, help="NUTS warm-up steps and draws per chain (default 500)")
    main(p.parse_args())
