"""Breast tumour diagnosis: logistic regression on a real data set.

Likelihood: Bernoulli() on the logit → binary cross-entropy; with a linear logit its
minimiser is unpenalised logistic regression.

Data: scikit-learn's bundled Wisconsin diagnostic breast cancer data set (569 tumours, no
download). Three of its thirty cell-nucleus features, standardised over the rows used:
mean radius, mean texture and mean smoothness; the label is 1 for benign, 0 for
malignant. With all thirty features the two classes are linearly separable, so the
unpenalised maximum-likelihood weights would run off to infinity; these three overlap
enough for a finite MLE.
"""

import pyro
import pyro.distributions as dist
import torch
from sklearn.datasets import load_breast_cancer

from pyro_mle.likelihoods import Bernoulli

LIKELIHOOD = "bernoulli"
LOSS = "binary cross-entropy"
X_COLUMNS = ("mean_radius", "mean_texture", "mean_smoothness")
Y_COLUMNS = ("benign",)

FEATURES = ("mean radius", "mean texture", "mean smoothness")


def model(x, y=None):
    w = pyro.sample("w", dist.Normal(x.new_zeros(x.shape[1]), 5.0).to_event(1))
    b = pyro.sample("b", dist.Normal(x.new_tensor(0.0), 5.0))
    return Bernoulli()("y", x @ w + b, obs=y)


def load_data(n: int = 569, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """All 569 tumours by default; a smaller ``n`` takes a random subset of them, drawn with
    ``seed`` (the first rows alone are mostly malignant)."""
    data = load_breast_cancer()
    rows = _rows(len(data.target), n, seed)
    columns = [list(data.feature_names).index(name) for name in FEATURES]
    x = torch.tensor(data.data[rows][:, columns], dtype=torch.float32)
    y = torch.tensor(data.target[rows], dtype=torch.float32)
    return (x - x.mean(0)) / x.std(0), y


def _rows(total: int, n: int, seed: int):
    if n >= total:
        return slice(None)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values.numpy()
