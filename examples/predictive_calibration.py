"""Calibrated predictive intervals: 90 % bands of a constant-scale and a predicted-scale Normal
fit beside the PIT histograms and interval coverage of new data (issue 13).

A model whose noise grows with x but whose scale is held constant gives bands too wide on the
left and too narrow on the right: its overall coverage looks right, but its PIT histogram is
far from flat (humped: most points sit where its bands are too wide); predicting the scale
(``Normal(links={"scale": "exp"})``) makes the PIT values uniform.
CRPS (lower is better) and coverage of the 90 % interval are in the legend.

    python examples/predictive_calibration.py --n 1000 --out out/examples
"""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402

import pyro_mle  # noqa: E402
from pyro_mle import scores  # noqa: E402
from pyro_mle.likelihoods import Normal  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import out_dir, parser  # noqa: E402


def simulate(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = 4 * torch.rand(n, generator=g, dtype=torch.float64) - 2
    return x, 1.0 + 0.5 * x + 0.3 * torch.exp(0.6 * x) * torch.randn(n, generator=g, dtype=torch.float64)


def constant_scale(x, y=None):
    a = pyro.sample("a", dist.Normal(x.new_tensor(0.0), 5.0))
    b = pyro.sample("b", dist.Normal(x.new_tensor(0.0), 5.0))
    sigma = pyro.sample("sigma", dist.LogNormal(x.new_tensor(0.0), 2.0))
    return Normal(scale=sigma)("y", a + b * x, obs=y)


def predicted_scale(x, y=None):
    a = pyro.sample("a", dist.Normal(x.new_tensor(0.0), 5.0))
    b = pyro.sample("b", dist.Normal(x.new_tensor(0.0), 5.0))
    c = pyro.sample("c", dist.Normal(x.new_tensor(0.0), 5.0))
    d = pyro.sample("d", dist.Normal(x.new_tensor(0.0), 5.0))
    return Normal(links={"scale": "exp"})("y", torch.stack([a + b * x, c + d * x], -1), obs=y)


MODELS = (("constant scale", constant_scale, "tab:red"), ("predicted scale (exp link)", predicted_scale, "tab:blue"))


def main(args):
    g = torch.Generator().manual_seed(args.seed)
    x, y = simulate(args.n, g)
    x_new, y_new = simulate(args.n, g)  # held-out data from the same law
    grid = torch.linspace(-2, 2, 200, dtype=torch.float64)
    fig, (bands, hist) = plt.subplots(1, 2, figsize=(11, 4))
    bands.scatter(x, y, s=4, color="0.6", label="data")
    for label, model, color in MODELS:
        pyro.clear_param_store()
        fit = pyro_mle.fit(model, x, y, seed=args.seed)
        iv = fit.predict(grid, num_samples=1, seed=args.seed).interval(0.9)
        bands.plot(grid, iv.lower, color=color, label=f"90 % interval, {label}")
        bands.plot(grid, iv.upper, color=color)
        s = scores.score(fit.predict(x_new, num_samples=200, seed=args.seed), y_new, prob=0.9)
        hist.hist(
            s.pit.numpy(),
            bins=10,
            range=(0, 1),
            density=True,
            histtype="step",
            color=color,
            label=f"{label}: CRPS {s.crps:.3f}, coverage {s.coverage:.1%}",
        )
    hist.axhline(1.0, color="k", lw=0.8, ls="--")
    hist.set(title="PIT of new data (uniform when calibrated)", xlabel="F(y)", ylabel="density")
    hist.legend(fontsize=8, loc="lower center")
    bands.set(title="fitted 90 % predictive intervals (MLE)", xlabel="x", ylabel="y")
    bands.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = out_dir(args) / "predictive_calibration.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main(parser(__doc__.splitlines()[0], n=1000).parse_args())
