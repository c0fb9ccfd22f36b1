"""Rankings with a Plackett–Luce likelihood: diners rank four dishes.

Likelihood: PlackettLuce(num_items=4) → listwise ranking loss (ListMLE). A ranking is a
permutation of the item indices, best first; its NLL is a sequence of cross-entropies:
the first choice among all four items, the second among the three left, and so on, each
a softmax over the items' scores.

Model: items have features (price, quality: ``ITEM_FEATURES``); a diner's score for an
item is the item's features weighted by the diner's taste, which depends on their income
x: s_k = features_k · (taste + x·income_effect). Scores are defined up to a common shift
that Plackett–Luce ignores; the item features carry no constant column, so the weights
are identified.

Data: simulated diners with standardised income x ~ Normal(0, 1), taste (−1.0, 1.5)
(cheaper and better is preferred) and income effect (0.8, 0.3) (richer diners mind the
price less); each ranking is an exact Plackett–Luce draw (Gumbel-perturbed scores,
sorted).
"""

import pyro
import pyro.distributions as dist
import torch

from pyro_mle.likelihoods import PlackettLuce

LIKELIHOOD = "plackett_luce"
LOSS = "listwise ranking loss (ListMLE)"
X_COLUMNS = ("income",)
Y_COLUMNS = ("first", "second", "third", "fourth")

# Four dishes × (price, quality), standardised.
ITEM_FEATURES = torch.tensor([[1.0, 0.2], [0.3, -0.5], [-0.8, 0.9], [-0.5, -0.6]])


def model(x, y=None):
    taste = pyro.sample("taste", dist.Normal(x.new_zeros(2), 3.0).to_event(1))
    income_effect = pyro.sample("income_effect", dist.Normal(x.new_zeros(2), 3.0).to_event(1))
    weights = taste + x.unsqueeze(-1) * income_effect  # (N, 2): each diner's weights on price, quality
    scores = weights @ ITEM_FEATURES.to(x).T  # (N, 4)
    return PlackettLuce(num_items=len(ITEM_FEATURES))("y", scores, obs=y)


def load_data(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    weights = torch.tensor([-1.0, 1.5]) + x.unsqueeze(-1) * torch.tensor([0.8, 0.3])
    scores = weights @ ITEM_FEATURES.T
    u = torch.rand(scores.shape, generator=g).clamp(min=torch.finfo(x.dtype).tiny)
    gumbel = -torch.log(-torch.log(u))
    ranking = torch.argsort(scores + gumbel, dim=-1, descending=True)  # Yellott (1977)
    return x, ranking.to(x.dtype)  # item indices as floats, like every target here
