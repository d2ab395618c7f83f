"""A state-entropy intrinsic reward: PEBBLE's unsupervised pre-training (Lee, Smith & Abbeel 2021, arXiv:2106.05091).

Before any label, PEBBLE trains the agent to visit diverse states: it maximises the entropy of its state distribution,
estimated with a particle (k-nearest-neighbour) estimator, so that the first segments shown to the labeller cover
the state space instead of the few states a random policy reaches (Sec. 4.1, "unsupervised pre-training").

The estimator (Kozachenko & Leonenko 1987; Beirlant et al. 1997; in RL, Singh et al. 2003 and APT, Liu & Abbeel 2021)
of the differential entropy of N samples x_i in R^d from their distances eps_i to the k-th nearest other sample::

    H_hat = psi(N) - psi(k) + log V_d + (d / N) sum_i log eps_i,     V_d = pi^(d/2) / Gamma(d/2 + 1)

(``kozachenko_leonenko_entropy``). Every term but the last is a constant, so a state's contribution grows with
log eps_i: PEBBLE's intrinsic reward is r_int(s) = the distance from s to its k-th nearest neighbour among the states
collected so far (Sec. 4.1, eq. 3, writes the log of it; the official implementation, whose numbers the paper reports,
uses the distance itself, ``compute_state_entropy`` in rll-research/BPref ``agent/sac.py``, and so do we: the order of
states is the same and a distance is never negative), with k = 5 (BPref ``config/train_PEBBLE.yaml``, ``topK: 5``), in
the raw observation space (state-based tasks), divided by a running estimate of its standard deviation (the paper's
"normalize the intrinsic reward"; BPref's ``norm_state_entropy = state_entropy / s_ent_stats.std``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.running_mean_std import RunningMeanStd

from rewardmodels.published import PEBBLE_K
from textenv.checks import check, check_number


def _flat(x: Any) -> torch.Tensor:
    """(N, *shape) -> (N, D) float tensor on the CPU (float64 stays float64, anything else becomes float32)."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).cpu()
    return t.reshape(t.shape[0], -1).to(torch.float64 if t.dtype == torch.float64 else torch.float32)


@torch.no_grad()
def knn_distances(query: Any, reference: Any, k: int, chunk: int = 1024) -> torch.Tensor:
    """(N,) Euclidean distance from each query point to its k-th nearest point of ``reference``.

    A query row that is itself in ``reference`` (distance exactly 0: a state of the buffer being relabelled) skips
    that copy, as PEBBLE's ``kthvalue(dists, k + 1)`` does for a batch drawn from the buffer; for states in continuous
    spaces, an exact repeat of another state has probability 0.

    Shapes: query (N, *shape), reference (M, *shape) with M > k; computed in chunks of ``chunk`` query rows.
    """
    q, ref = _flat(query), _flat(reference)
    check_number("k", k, low=1, integer=True)
    check(ref.shape[0] > k, f"the reference holds {ref.shape[0]} points; the k-th nearest of {k} needs more than k")
    check(q.shape[1] == ref.shape[1], f"query rows have {q.shape[1]} features, reference rows {ref.shape[1]}")
    out = []
    for i in range(0, q.shape[0], chunk):
        # exact differences, not |x|^2 + |y|^2 - 2xy: a state's distance to its own copy must come out as 0
        d = torch.cdist(q[i:i + chunk], ref.to(q.dtype), compute_mode="donot_use_mm_for_euclid_dist")  # (n, M)
        nearest = torch.topk(d, k + 1, dim=1, largest=False).values  # (n, k + 1), ascending
        out.append(torch.where(nearest[:, 0] == 0, nearest[:, k], nearest[:, k - 1]))
    return torch.cat(out) if out else torch.zeros(0)


def kozachenko_leonenko_entropy(samples: Any, k: int = PEBBLE_K) -> float:
    """The Kozachenko-Leonenko estimate (module docstring) of the differential entropy, in nats, of the
    distribution ``samples`` (N, d) were drawn from. Consistent as N grows (for fixed k)."""
    x = _flat(np.asarray(samples, dtype=np.float64))
    n, d = x.shape
    eps = knn_distances(x, x, k).double()  # each sample is in the reference: its own copy is skipped
    check(bool((eps > 0).all()), "repeated samples: the estimator needs distinct points")
    log_unit_ball = (d / 2) * math.log(math.pi) - math.lgamma(d / 2 + 1)
    return float(torch.special.digamma(torch.tensor(float(n))) - torch.special.digamma(torch.tensor(float(k)))
                 + log_unit_ball + d * torch.log(eps).mean())


class StateEntropyReward:
    """PEBBLE's intrinsic reward (module docstring) as a ``rewardmodels.wrappers.RewardFn``: ``reward(obs, acts)`` is
    each observation's k-th-nearest-neighbour distance to the ``reference`` states, divided by the running standard
    deviation of every distance it has returned so far (the actions are ignored: it rewards states).

    ``set_reference`` replaces the states (the agent's experience so far); the running statistics carry over, as
    PEBBLE's do across its whole pre-training.
    """

    def __init__(self, k: int = PEBBLE_K, reference: Any = None):
        check_number("k", k, low=1, integer=True)
        self.k = int(k)
        self.reference: torch.Tensor | None = None
        self.stats = RunningMeanStd(shape=())  # PEBBLE: TorchRunningMeanStd(shape=[1]): mean 0, var 1, count 1e-4
        if reference is not None:
            self.set_reference(reference)

    def set_reference(self, states: Any) -> None:
        self.reference = _flat(states)

    @property
    def ready(self) -> bool:
        """Enough reference states for a k-th neighbour (before that, the reward is 0)."""
        return self.reference is not None and self.reference.shape[0] > self.k

    def __call__(self, obs: Any, acts: Any = None) -> np.ndarray:
        n = len(obs)
        if not self.ready:
            return np.zeros(n, np.float32)
        dist = knn_distances(obs, self.reference, self.k).numpy().astype(np.float64)
        self.stats.update(dist)
        return (dist / math.sqrt(float(self.stats.var) + 1e-8)).astype(np.float32)
