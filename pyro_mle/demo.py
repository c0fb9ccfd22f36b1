"""``pyro-mle demo``: chapter 5 on built-in data, in one run.

1. every likelihood head against its hand-written classical loss (certificates);
2. least squares is maximum likelihood: an MLE fit equal to ``numpy.linalg.lstsq``, its NLL
   equal to the least-squares loss with its constants;
3. cross-entropy is maximum likelihood: a logistic MLE equal to scikit-learn's unpenalised
   logistic regression, its NLL equal to PyTorch's summed binary cross-entropy, and the
   KL = cross-entropy − entropy decomposition;
4. MLE, MAP and NUTS on one Bayesian program: table, figure, DataTree in netCDF;
5. every model of the shelf (``models/``) fitted by MLE.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

from .likelihoods import Bernoulli, Normal, empirical_kl
from .tables import format_table

SIGMA = 0.3


def line(x, y=None):
    """y = φ₀ + φ₁·x + ε, ε ~ Normal(0, 0.3): parameters without priors (pure MLE)."""
    phi0 = pyro.param("phi0", torch.tensor(0.0, dtype=x.dtype))
    phi1 = pyro.param("phi1", torch.tensor(0.0, dtype=x.dtype))
    Normal(scale=SIGMA)("y", phi0 + phi1 * x, obs=y)


def bayes_line(x, y=None):
    """The same line with Normal(0, 1) priors on φ₀ and φ₁, for MAP and the posterior."""
    zero = torch.tensor(0.0, dtype=x.dtype)
    phi0 = pyro.sample("phi0", dist.Normal(zero, 1.0))
    phi1 = pyro.sample("phi1", dist.Normal(zero, 1.0))
    Normal(scale=SIGMA)("y", phi0 + phi1 * x, obs=y)


def logistic(x, y=None):
    """P(y = 1 | x) = sigmoid(β₀ + β₁·x): binary cross-entropy."""
    b0 = pyro.param("b0", torch.tensor(0.0, dtype=x.dtype))
    b1 = pyro.param("b1", torch.tensor(0.0, dtype=x.dtype))
    Bernoulli()("y", b0 + b1 * x, obs=y)


def _line_data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.rand(n, generator=g, dtype=torch.float64)
    y = 0.4 + 0.9 * x + SIGMA * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


def _class_data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed + 1)
    x = 4.0 * torch.rand(n, generator=g, dtype=torch.float64) - 2.0
    y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(-0.5 + 2.0 * x)).double()
    return x, y


def _section(title: str) -> None:
    print(f"\n== {title} ==\n")


def run_demo(out: Path, seed: int = 0, quick: bool = False, progress: bool | None = None) -> int:
    """Run the chapter; write figures, tables and a DataTree to ``out``. Returns the exit code."""
    import matplotlib

    matplotlib.use("Agg")
    from .certificates import certificate_table
    from .certificates import format_table as certificates_table
    from .compare import compare
    from .fit import fit
    from .plots import plot_certificates, plot_class_probabilities, plot_likelihood_profile

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    ok = True

    _section("1. Every loss is a negative log-likelihood")
    rows = certificate_table(n=500 if quick else 2000, seed=seed)
    print(certificates_table(rows))
    worst = max(r.max_rel_diff for r in rows)
    ok &= worst < 1e-8
    print(f"\nlargest relative difference over {len(rows)} heads: {worst:.1e}")
    (out / "certificates.json").write_text(json.dumps([r.as_dict() for r in rows], indent=2))
    plot_certificates(rows).savefig(out / "certificates.png", dpi=110)

    _section("2. Least squares is maximum likelihood (Normal, σ = 0.3)")
    x, y = _line_data(50, seed)
    mle = fit(line, x, y, seed=seed, progress=progress)
    design = np.stack([np.ones(len(x)), x.numpy()], 1)
    lstsq = np.linalg.lstsq(design, y.numpy(), rcond=None)[0]
    est = np.array([float(mle.params["phi0"]), float(mle.params["phi1"])])
    resid = y.numpy() - design @ lstsq
    ls_loss = (resid**2).sum() / (2 * SIGMA**2) + len(x) * math.log(SIGMA * math.sqrt(2 * math.pi))
    table = format_table(
        ("", "φ₀", "φ₁", "loss"),
        [
            ("pyro_mle MLE", f"{est[0]:.8f}", f"{est[1]:.8f}", f"{mle.nll:.8f}  (NLL)"),
            ("numpy lstsq", f"{lstsq[0]:.8f}", f"{lstsq[1]:.8f}", f"{ls_loss:.8f}  (Σr²/2σ² + N·log σ√2π)"),
            (
                "difference",
                f"{abs(est[0] - lstsq[0]):.1e}",
                f"{abs(est[1] - lstsq[1]):.1e}",
                f"{abs(mle.nll - ls_loss):.1e}",
            ),
        ],
    )
    print(table)
    agree = np.abs(est - lstsq).max() < 1e-6 and abs(mle.nll - ls_loss) < 1e-6 * abs(ls_loss)
    ok &= agree
    print(f"\nMLE = least squares: {'yes' if agree else 'NO'}")
    report["least_squares"] = {"mle": est.tolist(), "lstsq": lstsq.tolist(), "nll": mle.nll, "loss": ls_loss}
    plot_likelihood_profile(y, base=est[1] * x, intercept=est[0], scale=SIGMA).savefig(
        out / "likelihood_profile.png", dpi=110
    )

    _section("3. Cross-entropy is maximum likelihood (Bernoulli on logits)")
    xc, yc = _class_data(200, seed)
    clf = fit(logistic, xc, yc, seed=seed, progress=progress)
    b = torch.stack([clf.params["b0"], clf.params["b1"]]).double()
    logits = b[0] + b[1] * xc
    bce = float(F.binary_cross_entropy_with_logits(logits, yc, reduction="sum"))
    rows_c = [("pyro_mle MLE", f"{b[0]:.6f}", f"{b[1]:.6f}", f"{clf.nll:.8f}  (NLL)")]
    rows_c.append(("torch BCEWithLogits", "", "", f"{bce:.8f}  (sum)"))
    try:
        from sklearn.linear_model import LogisticRegression

        sk = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(xc.numpy()[:, None], yc.numpy())
        rows_c.append(("scikit-learn", f"{sk.intercept_[0]:.6f}", f"{sk.coef_[0, 0]:.6f}", ""))
        agree_sk = abs(sk.intercept_[0] - float(b[0])) < 1e-4 and abs(sk.coef_[0, 0] - float(b[1])) < 1e-4
    except ImportError:  # scikit-learn is optional here; the loss identity below does not need it
        agree_sk = True
    print(format_table(("", "β₀", "β₁", "loss"), rows_c))
    k = empirical_kl(Bernoulli(), logits, yc)
    print(
        f"\nKL(empirical ‖ model) = cross-entropy − entropy: {float(k.kl):.6f} = {float(k.cross_entropy):.6f} − "
        f"{float(k.entropy) + 0.0:.6f} nats per example (every x distinct: entropy 0, KL = mean NLL)"
    )
    agree_c = abs(clf.nll - bce) < 1e-8 * abs(bce) and agree_sk
    ok &= agree_c
    print(f"MLE = cross-entropy minimum: {'yes' if agree_c else 'NO'}")
    grid = torch.linspace(-2, 2, 200, dtype=torch.float64)
    probs = torch.sigmoid(b[0] + b[1] * grid)
    plot_class_probabilities(xc, yc, grid, probs, title="logistic regression by MLE").savefig(
        out / "classification.png", dpi=110
    )
    report["cross_entropy"] = {"mle": b.tolist(), "nll": clf.nll, "bce_sum": bce}

    _section("4. MLE, MAP and the posterior (NUTS) of one program, on the first 10 rows")
    # few rows, so that the Normal(0, 1) priors visibly pull the MAP away from the MLE
    x, y = x[:10], y[:10]
    n_draws = 200 if quick else 1000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cmp = compare(
            bayes_line,
            x,
            y,
            methods=("mle", "map", "nuts"),
            seed=seed,
            progress=progress,
            # phi0 and phi1 are strongly correlated (x in [0, 2]): nutpie's low-rank mass matrix
            # takes the correlation out, for 5x the ESS of the diagonal one in half the time
            posterior_options={"num_samples": n_draws, "warmup": n_draws, "chains": 2, "adaptation": "low_rank"},
        )
    print(cmp)
    for w in caught:
        print(f"warning: {w.message}")
    cmp.plot().savefig(out / "mle_map_posterior.png", dpi=110)
    cmp.table.to_csv(out / "comparison_table.csv")
    cmp.methods.to_csv(out / "comparison_methods.csv")
    cmp.datatrees["nuts"].to_netcdf(out / "posterior_nuts.nc")
    print(f"\nwrote {out / 'posterior_nuts.nc'} (open with xarray.open_datatree; read with arviz_stats)")

    _section("5. The shelf: every model in models/, fitted by MLE")
    report["models"] = _shelf(seed, quick)

    (out / "demo.json").write_text(json.dumps(report, indent=2, default=float))
    elapsed = time.perf_counter() - start
    print(f"\nfigures, tables and the DataTree are in {out}/ ; demo finished in {elapsed:.1f} s")
    return 0 if ok else 1


def _shelf(seed: int, quick: bool) -> list[dict]:
    from .fit import fit
    from .model_files import builtin_models, call_load_data, load_model_file
    from .results import ConvergenceWarning

    rows, report = [], []
    for name in builtin_models():
        mf = load_model_file(name)
        x, y = call_load_data(mf, seed=seed)
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # reported in the table instead
            result = fit(mf.model, x, y, seed=seed, progress=False)
        dt = time.perf_counter() - t
        rows.append(
            (name, mf.likelihood, mf.loss, len(x), f"{result.nll / len(x):.4f}", str(result.converged), f"{dt:.2f}")
        )
        report.append({"model": name, "nll_per_row": result.nll / len(x), "converged": result.converged, "time_s": dt})
    if rows:
        print(format_table(("model", "likelihood", "loss", "N", "NLL / N", "converged", "time (s)"), rows))
    else:
        print("no models found (set PYRO_MLE_MODELS to the models/ folder)")
    return report
