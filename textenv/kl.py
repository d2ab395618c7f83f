"""The KL penalty of ``TextGen-v0``'s reward: its one home.

The env's per-token reward is ``r_t = -beta * (log pi(a_t|s_t) - log pi_ref(a_t|s_t))``, plus the score at the last
token (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", arXiv:1909.08593, eq. 2; Ouyang et
al. 2022). ``KLPenalty`` is that ``beta``: fixed, or adapted towards a target KL by the proportional controller of
Ziegler et al. 2019, Sec. 2.2::

    e      = clip(KL / target - 1, -0.2, 0.2)          KL: the mean sequence KL of the episodes just finished
    beta  <- beta * (1 + e * n / horizon)              n: how many episodes that mean is over

The env asks it for ``beta`` at every step and tells it the KL of the episodes it finishes (``observe``), so an
agent that reads the env's rewards (the native agents, from the rollout; any SB3 algorithm, from ``step``) trains on
exactly the reward the MDP defines, adaptive or not; no agent writes a coefficient back. A KL term inside a loss
(GRPO's k3 term, DPO's beta) is that algorithm's own setting, not this one.
"""

from __future__ import annotations

from typing import Any

from textenv.checks import check_number

__all__ = ["KLPenalty"]


class KLPenalty:
    """``beta`` of the env's per-token KL penalty (module docstring).

    Args:
        coef: beta (its initial value when adaptive); 0 = no penalty.
        target: the sequence KL (nats) to steer towards; None = a fixed ``beta``.
        horizon: episodes it takes the controller to change beta by about e^0.2 at full error (10,000 in the
            paper).
    """

    def __init__(self, coef: float = 0.05, target: float | None = None, horizon: float = 10_000):
        check_number("kl_coef", coef, low=0, hint="0 disables the KL penalty")
        check_number("kl_target", target, low=0, low_open=True, none_ok=True, hint="None keeps beta fixed")
        check_number("kl_horizon", horizon, low=0, low_open=True, hint="the paper's horizon is 10000")
        if target is not None and coef == 0:
            raise ValueError("an adaptive KL penalty (kl_target set) scales beta multiplicatively: give kl_coef > 0 "
                             "as its initial value, or drop kl_target")
        self.value = float(coef)
        self.target = None if target is None else float(target)
        self.horizon = float(horizon)

    @classmethod
    def of(cls, value: float | KLPenalty) -> KLPenalty:
        """``value`` itself if it is a ``KLPenalty``, else a fixed penalty of ``beta = value``."""
        return value if isinstance(value, KLPenalty) else cls(value)

    @property
    def adaptive(self) -> bool:
        return self.target is not None

    @property
    def active(self) -> bool:
        """Whether the reward has a KL term at all (the env then needs a reference model)."""
        return self.value != 0 or self.adaptive

    def observe(self, mean_kl: float, n_episodes: int) -> None:
        """The mean sequence KL of ``n_episodes`` episodes just finished; an adaptive penalty updates ``beta``."""
        if self.target is None or n_episodes <= 0:
            return
        check_number("the observed KL", float(mean_kl), hint="the reference or the policy produced NaN/inf")
        error = min(max(float(mean_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_episodes / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value, self.target, self.horizon = float(state["value"]), state["target"], float(state["horizon"])

    def __repr__(self) -> str:
        if self.target is None:
            return f"KLPenalty({self.value:g})"
        return f"KLPenalty({self.value:g}, target={self.target:g}, horizon={self.horizon:g})"
