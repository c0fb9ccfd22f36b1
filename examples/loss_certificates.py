"""The loss certificates as a figure: for every likelihood head, the largest difference between
its NLL and its classical loss written out by hand, on simulated data.

    python examples/loss_certificates.py --n 2000 --out out/examples
"""

import sys

import matplotlib

matplotlib.use("Agg")

from pyro_mle.certificates import certificate_table, format_table  # noqa: E402
from pyro_mle.plots import plot_certificates  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import out_dir, parser  # noqa: E402


def main(args):
    rows = certificate_table(n=args.n, seed=args.seed)
    print(format_table(rows))
    path = out_dir(args) / "loss_certificates.png"
    plot_certificates(rows).savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    main(parser(__doc__.splitlines()[0], n=2000).parse_args())
