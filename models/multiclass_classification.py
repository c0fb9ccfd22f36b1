"""Multiclass classification with three classes: multinomial logistic regression.

Likelihood: Categorical() on three logits → multiclass cross-entropy. The NLL of
y ~ Categorical(softmax(f)) is −f_y + log Σ_k exp(f_k), which is
``torch.nn.CrossEntropyLoss``; with f = x·W + b its minimiser is unpenalised multinomial
logistic regression. Adding the same vector to every class's weights leaves the softmax
unchanged, so the weights are identified only up to that shift: the MLE's probabilities
are unique, its weights are not, and the priors pin them down for MAP and NUTS.

Data: simulated, two inputs drawn from a standard normal, labels 0, 1, 2 drawn from
Categorical(softmax(x·W + b)) with three well-spread class directions.
"""

import pyro
import pyro.distributions as dist
import torch

from pyro_mle.likelihoods import Categorical

LIKELIHOOD = "categorical"
LOSS = "multiclass cross-entropy"
X_COLUMNS = ("x1", "x2")
Y_COLUMNS = ("y",)

CLASSES = 3


def model(x, y=None):
    W = pyro.sample("W", dist.Normal(x.new_zeros(x.shape[1], CLASSES), 5.0).to_event(2))
    b = pyro.sample("b", dist.Normal(x.new_zeros(CLASSES), 5.0).to_event(1))
    return Categorical(num_classes=CLASSES)("y", x @ W + b, obs=y)


def load_data(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    W = torch.tensor([[2.0, -1.0, -1.0], [0.0, 1.7, -1.7]])
    logits = x @ W + torch.tensor([0.0, 0.3, -0.3])
    y = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=g).squeeze(-1)
    return x, y.to(x.dtype)  # labels as floats, like every target here (exact below 2**24)
