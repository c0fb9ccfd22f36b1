"""Disease progression in diabetes patients: linear least squares on a real data set.

Likelihood: Normal(scale=σ) with σ a latent site → least squares. For any σ the best
weights are the ordinary least-squares fit; the MLE of σ is then the root mean squared
residual.

Data: scikit-learn's bundled diabetes data set (Efron et al. 2004; 442 patients, no
download): ten baseline measurements (age, sex, body mass index, blood pressure and six
blood serum values) and a measure of disease progression one year later. Inputs and
target are standardised to mean 0 and standard deviation 1 over the rows used.
"""

import pyro
import pyro.distributions as dist
import torch
from sklearn.datasets import load_diabetes

from pyro_mle.likelihoods import Normal

LIKELIHOOD = "normal"
LOSS = "least squares"
X_COLUMNS = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
Y_COLUMNS = ("progression",)


def model(x, y=None):
    w = pyro.sample("w", dist.Normal(x.new_zeros(x.shape[1]), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(x.new_tensor(0.0), 1.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(x.new_tensor(1.0)))
    return Normal(scale=sigma)("y", x @ w + b, obs=y)


def load_data(n: int = 442, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """All 442 patients by default; a smaller ``n`` takes a random subset of them, drawn
    with ``seed``."""
    X, y = load_diabetes(return_X_y=True, scaled=False)
    rows = _rows(len(y), n, seed)
    x, y = torch.tensor(X[rows], dtype=torch.float32), torch.tensor(y[rows], dtype=torch.float32)
    return (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()


def _rows(total: int, n: int, seed: int):
    if n >= total:
        return slice(None)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values.numpy()
