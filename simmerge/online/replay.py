"""Replay a stream of merge requests on recorded outcomes, to measure a bandit policy's regret.

A :class:`ReplayData` holds, for each request (a pair), every arm's recorded reward (the pair
objective: mean normalized score over the pair's tasks, capped at 1), the offline predictor's
prior and the pair's context features. :func:`replay` feeds the requests in a given order to a
:class:`~simmerge.online.bandit.MergeBandit`, rewards each choice with the recorded outcome and
counts regret against the best arm *available at that request*. Arms can join mid-stream
(``arrivals``), which is how a new operator is tested.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from simmerge.online.bandit import ArmContext, MergeBandit, Scaler


@dataclass(frozen=True)
class ReplayData:
    arms: tuple[str, ...]
    rewards: np.ndarray  # (requests, arms), in [0, 1]
    priors: np.ndarray  # (requests, arms)
    features: tuple[Mapping[str, float], ...]  # per request
    keys: tuple[tuple[str, ...], ...] = ()  # e.g. (catalog, a, b) per request
    # (requests, arms): how far each prior may be off (ArmContext.prior_sd); None: all 0
    prior_sds: np.ndarray | None = None

    def __post_init__(self) -> None:
        n, k = len(self.features), len(self.arms)
        if self.rewards.shape != (n, k) or self.priors.shape != (n, k):
            raise ValueError(f"rewards/priors must be {(n, k)}")
        if self.prior_sds is not None and self.prior_sds.shape != (n, k):
            raise ValueError(f"prior_sds must be {(n, k)}")


@dataclass
class ReplayResult:
    policy: str
    chosen: list[str] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    regret: list[float] = field(default_factory=list)

    @property
    def cumulative_regret(self) -> np.ndarray:
        return np.cumsum(self.regret)


def replay(
    data: ReplayData,
    order: Sequence[int],
    policy: str,
    *,
    seed: int = 0,
    scaler: Scaler | None = None,
    initial_arms: Sequence[str] | None = None,
    arrivals: Mapping[int, Sequence[str]] | None = None,
    fixed_arm: str | None = None,
    **bandit_args: float,
) -> ReplayResult:
    """Run ``policy`` over the requests in ``order`` (``"best_fixed"`` always picks
    ``fixed_arm``; other names are :data:`~simmerge.online.bandit.POLICIES`). ``arrivals`` maps a
    step index to arms added just before it."""
    col = {a: i for i, a in enumerate(data.arms)}
    start = list(initial_arms if initial_arms is not None else data.arms)
    bandit = None
    if policy != "best_fixed":
        bandit = MergeBandit(
            arms=tuple(start),
            policy=policy,
            seed=seed,
            scaler=scaler or Scaler.fit(data.features),
            **bandit_args,
        )
    available = list(start)
    out = ReplayResult(policy)
    for step, req in enumerate(order):
        for arm in (arrivals or {}).get(step, ()):
            available.append(arm)
            if bandit is not None:
                bandit.add_arm(arm)
        idx = [col[a] for a in available]
        best = float(data.rewards[req, idx].max())
        if bandit is None:
            arm = fixed_arm if fixed_arm in available else available[0]
            r = float(data.rewards[req, col[arm]])
        else:
            feats = data.features[req]
            sds = data.prior_sds
            choice = bandit.select(
                [
                    ArmContext(
                        a,
                        feats,
                        float(data.priors[req, col[a]]),
                        0.0 if sds is None else float(sds[req, col[a]]),
                    )
                    for a in available
                ]
            )
            arm = choice.arm
            r = float(data.rewards[req, col[arm]])
            bandit.update(choice, r)
        out.chosen.append(arm)
        out.reward.append(r)
        out.regret.append(best - r)
    return out


def regret_summary(results: Sequence[ReplayResult]) -> dict[str, float]:
    """One policy's replays (one per seed) summarized: mean and sd of the final cumulative
    regret, mean reward, and regret per request over the last quarter of each stream."""
    finals = np.array([r.cumulative_regret[-1] for r in results])
    return {
        "final_regret_mean": float(finals.mean()),
        "final_regret_sd": float(finals.std()),
        "mean_reward": float(np.mean([np.mean(r.reward) for r in results])),
        "late_regret_per_request": float(
            np.mean([np.mean(r.regret[-len(r.regret) // 4 :]) for r in results])
        ),
    }
