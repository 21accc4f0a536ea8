"""Online merge selection: a contextual bandit that learns from every verified merge.

Arms are operator configurations (:class:`~simmerge.merging.grid.OperatorConfig` ids). A request
is a pair (or a running merge and the next expert); its context is a few standardized pair
features (:data:`CONTEXT_FEATURES`) plus, per arm, the offline predictor's predicted score
(the *prior*). The bandit models the reward as

    reward ≈ prior + x·θ_global + x·θ_family + x·θ_arm,      x = [1, prior, features]

so it learns only the *residual* of the offline predictor: on day one it behaves like the
predictor, and it corrects it wherever measured outcomes disagree. On a pair outside the
predictor's training data its prior is not to be trusted: the arm's context then carries a
``prior_sd`` (from the predictor's widened interval), which adds variance that shrinks with
the arm's pulls, so the bandit explores instead of following the prior. The three ridge levels are
the priors a new arm inherits: a new configuration of a known operator starts from what its
operator family has learned, a new family from the global correction. New tasks and models
need no code: their context comes from signatures and sketches like any other.

Policies: ``linucb`` (mean + alpha·sd), ``lints`` (linear Thompson sampling: one draw of
every θ per request), ``egreedy`` (the mean, or a random arm with probability epsilon),
``random``, and ``predictor`` (the prior alone; it never learns -- the offline baseline).
Each level is a Bayesian ridge regression; an update feeds the global level the reward minus
the prior, and each lower level what the levels above it did not explain at that moment
(sequential residual fitting, not iterated backfitting: earlier fits are never revisited). An
arm's variance is the sum of its levels'. The ``predictor`` policy takes the predictor's raw
argmax, without the anchoring margin ``simmerge rank`` applies.

State is durable: :meth:`MergeBandit.save` writes JSON atomically (temporary file, fsync,
rename), so a process killed while saving leaves the previous state; a process killed between
:meth:`~MergeBandit.update` and ``save`` loses only that update. Pending choices (selected but
not yet rewarded) are part of the state, so ``select`` and ``update`` can run in different
processes (the CLI). :meth:`MergeBandit.load` refuses unknown keys, wrong types, other
context features and other format versions.

Why not a bandit library: MABWiser (the maintained option we looked at) fits an independent
ridge per arm and persists by pickling; this module needs levels shared across arms, a per-arm
offset (the predictor's prior) and a state file that is checked, not executed, on load. The
linear algebra that takes is a few dozen lines (:class:`_Level`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    NonNegativeInt,
    ValidationError,
    model_validator,
)

from simmerge.errors import BanditStateError, ConfigError, InputNotFoundError, SimmergeError
from simmerge.infra.files import atomic_write_text
from simmerge.merging.grid import OperatorConfig

FORMAT_VERSION = 1
CONTEXT_FEATURES = (
    "js_mean",
    "top1_agreement",
    "cka_mean",
    "cos_all",
    "sign_conflict_d20_all",
    "mask_jaccard_d20_all",
    "norm_ratio_all",
)
POLICIES = ("linucb", "lints", "egreedy", "random", "predictor")
LEVEL_RIDGE = {"global": 1.0, "family": 2.0, "arm": 4.0}  # deeper levels shrink harder


@dataclass(frozen=True)
class ArmContext:
    """One arm's context for a request: the pair features and the predictor's prediction."""

    arm: str  # OperatorConfig id
    features: Mapping[str, float]
    prior: float
    # how far the prior may be off beyond what the levels model: 0 when the predictor has seen
    # pairs like this one; out of distribution, its widened interval (see prior_sd_of)
    prior_sd: float = 0.0


@dataclass(frozen=True)
class Choice:
    """A selected arm, remembered by the bandit until its reward arrives."""

    id: int
    arm: str
    prior: float
    x: tuple[float, ...]
    mean: float  # the bandit's expected reward
    sd: float  # its uncertainty
    request: dict[str, Any] | None = None  # what was asked (e.g. catalog, models, tasks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "arm": self.arm,
            "prior": self.prior,
            "mean": self.mean,
            "sd": self.sd,
            "request": self.request,
        }


@dataclass(frozen=True)
class Scaler:
    """Fixed standardization of the context features (fitted once, stored in the state, so
    the meaning of θ never drifts)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    prior_mean: float = 0.7
    prior_std: float = 0.25

    @classmethod
    def fit(cls, features: Any, priors: Sequence[float] | None = None) -> Scaler:
        """From a table with :data:`CONTEXT_FEATURES` columns (e.g. pair features of a
        training set) and optionally priors (e.g. training targets)."""
        x = np.array([[float(r[c]) for c in CONTEXT_FEATURES] for r in _records(features)])
        mean = np.nanmean(x, axis=0)
        std = np.nanstd(x, axis=0)
        std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        pm, ps = 0.7, 0.25
        if priors is not None and len(priors):
            pm, ps = float(np.mean(priors)), float(max(np.std(priors), 1e-3))
        return cls(tuple(map(float, mean)), tuple(map(float, std)), pm, ps)

    def transform(self, features: Mapping[str, float], prior: float) -> np.ndarray:
        vals = []
        for c, m, s in zip(CONTEXT_FEATURES, self.mean, self.std, strict=True):
            v = float(features[c]) if c in features else math.nan
            vals.append(0.0 if not math.isfinite(v) else (v - m) / s)  # missing -> the mean
        return np.array([1.0, (prior - self.prior_mean) / self.prior_std, *vals])


def _records(features: Any) -> list[Mapping[str, float]]:
    if hasattr(features, "to_dict"):  # a DataFrame
        return features.to_dict("records")
    return list(features)


DIM = 2 + len(CONTEXT_FEATURES)
# How many leading entries of x = [1, prior, features...] each level uses, by default: the
# global level learns a bias and a rescaling of the prior, each family and arm a bias. Replayed
# on recorded outcomes (scripts/simulate_bandit.py, 4 seeds, noise 0.05, ridge 25), the pair
# features in the global level (dims 9/1/1) ended with more regret for both policies (19.6 /
# 19.0 against 18.5 / 18.5); with arms also learning a prior slope (9/2/2), 19.0 / 18.2. The
# residual of one pull mixes the pair's level error into the arm's, and 20 arms see ~23 pulls
# each in a 462-request stream. The pair features still shape every choice through the prior.
DEFAULT_LEVEL_DIMS = {"global": 2, "family": 1, "arm": 1}
# the prior sd out of distribution when the predictor has no calibrated interval: the spread of
# normalized scores between candidates of one pair is of this order
UNBACKED_PRIOR_SD = 0.25


@dataclass
class _Level:
    """Bayesian ridge on one level's residual: A = ridge·I + Σxxᵀ, b = Σx·residual."""

    a: np.ndarray
    b: np.ndarray
    n: int = 0
    _inv: np.ndarray | None = field(default=None, repr=False)  # cached A⁻¹ (reset by add)

    @classmethod
    def new(cls, ridge: float, dim: int) -> _Level:
        return cls(ridge * np.eye(dim), np.zeros(dim))

    @property
    def dim(self) -> int:
        return len(self.b)

    def inverse(self) -> np.ndarray:
        if self._inv is None:
            inv = np.linalg.inv(self.a)
            self._inv = (inv + inv.T) / 2
        return self._inv

    def theta(self) -> np.ndarray:
        return self.inverse() @ self.b

    def variance(self, x: np.ndarray) -> float:
        x = x[: self.dim]
        return float(x @ self.inverse() @ x)

    def sample(self, rng: np.random.Generator, noise: float) -> np.ndarray:
        chol = np.linalg.cholesky(self.inverse())
        return self.theta() + noise * (chol @ rng.standard_normal(self.dim))

    def predict(self, x: np.ndarray, theta: np.ndarray | None = None) -> float:
        return float(x[: self.dim] @ (self.theta() if theta is None else theta))

    def add(self, x: np.ndarray, residual: float) -> None:
        x = x[: self.dim]
        self.a += np.outer(x, x)
        self.b += x * residual
        self.n += 1
        self._inv = None


@dataclass
class MergeBandit:
    """Contextual bandit over operator configurations (see the module docs).

    ``alpha``: LinUCB's width in standard deviations; ``noise``: the reward noise scale (the
    posterior's scale for the sd and for Thompson draws); ``ridge``: prior precision of every
    level's θ (times :data:`LEVEL_RIDGE`; larger trusts the predictor longer); ``epsilon``:
    ε-greedy's rate; ``level_dims``: how many leading entries of the context each level
    uses (:data:`DEFAULT_LEVEL_DIMS`). Defaults were chosen by replaying both directions
    between the two shipped datasets (see ``scripts/simulate_bandit.py``)."""

    arms: tuple[str, ...] = ()
    policy: str = "lints"
    alpha: float = 1.0
    noise: float = 0.05
    ridge: float = 25.0
    epsilon: float = 0.1
    new_family_sd: float = 0.2
    level_dims: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LEVEL_DIMS))
    seed: int = 0
    scaler: Scaler = field(
        default_factory=lambda: Scaler(
            (0.0,) * len(CONTEXT_FEATURES), (1.0,) * len(CONTEXT_FEATURES)
        )
    )
    _active: dict[str, str] = field(default_factory=dict, repr=False)  # arm -> family
    _levels: dict[str, _Level] = field(default_factory=dict, repr=False)
    _pending: dict[int, Choice] = field(default_factory=dict, repr=False)
    _next_id: int = 0
    _updates: int = 0
    _known: set[str] = field(default_factory=set, repr=False)  # families the predictor saw
    _rng: np.random.Generator | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(
                f"Unknown bandit policy {self.policy!r}.", f"use one of {', '.join(POLICIES)}."
            )
        for name, v in (
            ("alpha", self.alpha),
            ("noise", self.noise),
            ("ridge", self.ridge),
            ("new_family_sd", self.new_family_sd),
        ):
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(
                    f"Bandit {name} must be a positive number, got {v!r}.",
                    f"leave {name} at its default or pass a finite value > 0.",
                )
        if set(self.level_dims) != set(LEVEL_RIDGE) or not all(
            isinstance(d, int) and 1 <= d <= DIM for d in self.level_dims.values()
        ):
            raise ConfigError(
                f"Bandit level_dims must map {sorted(LEVEL_RIDGE)} to 1..{DIM}, "
                f"got {self.level_dims!r}.",
                "leave level_dims at its default unless you know the context layout.",
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(
                f"Bandit seed must be an integer >= 0, got {self.seed!r}.", "pass --seed 0 or more."
            )
        if not 0 <= self.epsilon <= 1:
            raise ConfigError(
                f"Bandit epsilon must be in [0, 1], got {self.epsilon!r}.",
                "use an exploration rate such as 0.1.",
            )
        if self._rng is None:
            self._rng = np.random.default_rng(self.seed)
        for arm in self.arms:
            if arm not in self._active:
                self.add_arm(arm)
        # the initial arms are those the offline predictor was trained on: their families are
        # "known"; a family first added later is new to the predictor as well
        self._known |= set(self._active.values())
        self.arms = ()  # the live set is _active; ``arms`` only seeds it

    # --- arms ----------------------------------------------------------------------------

    @property
    def active_arms(self) -> tuple[str, ...]:
        return tuple(self._active)

    def add_arm(self, arm: str | OperatorConfig) -> str:
        """Add an operator configuration; it inherits its family's (or the global) level.

        A family none of the initial arms belonged to was never seen by the offline
        predictor, so its prior is not to be trusted: its family level starts wide
        (``new_family_sd``) and the arm is explored until measured outcomes narrow it."""
        config = arm if isinstance(arm, OperatorConfig) else OperatorConfig.from_id(str(arm))
        arm_id = config.id
        if arm_id in self._active:
            raise BanditStateError(
                f"Arm {arm_id!r} is already active.", "add each configuration once."
            )
        self._active[arm_id] = config.operator
        return arm_id

    def remove_arm(self, arm: str) -> None:
        """Stop choosing ``arm``; what it taught its family and the global level stays."""
        if arm not in self._active:
            raise BanditStateError(
                f"Arm {arm!r} is not active.", f"active arms: {', '.join(self._active)}."
            )
        del self._active[arm]

    def pulls(self, arm: str) -> int:
        level = self._levels.get(f"arm:{arm}")
        return level.n if level else 0

    # --- model ---------------------------------------------------------------------------

    def _level_keys(self, arm: str, family: str) -> tuple[str, str, str]:
        return ("global", f"family:{family}", f"arm:{arm}")

    def _level(self, key: str) -> _Level:
        if key not in self._levels:
            self._levels[key] = self._new_level(key)
        return self._levels[key]

    def _new_level(self, key: str) -> _Level:
        kind, _, name = key.partition(":")
        ridge = self.ridge * LEVEL_RIDGE[kind]
        if kind == "family" and name not in self._known:
            ridge = (self.noise / self.new_family_sd) ** 2
        return _Level.new(ridge, self.level_dims[kind])

    def _peek(self, key: str) -> _Level:
        return self._levels.get(key) or self._new_level(key)

    def estimate(
        self, arm: str, x: np.ndarray, prior: float, prior_sd: float = 0.0
    ) -> tuple[float, float]:
        """(expected reward, sd) of ``arm`` in context ``x``; ``prior_sd`` widens the sd of an
        untrusted prior (:meth:`_prior_var`)."""
        family = self._family(arm)
        levels = [self._peek(k) for k in self._level_keys(arm, family)]
        mean = prior + sum(lv.predict(x) for lv in levels)
        var = self.noise**2 * sum(lv.variance(x) for lv in levels)
        return mean, math.sqrt(var + self._prior_var(arm, prior_sd))

    def _prior_var(self, arm: str, prior_sd: float) -> float:
        """Extra variance of a prior the predictor cannot back (a pair outside its training
        data): ``prior_sd``² at first, shrinking as 1 / (1 + pulls of the arm), so an arm is
        explored until its own measurements replace the prior."""
        return prior_sd**2 / (1 + self.pulls(arm)) if prior_sd else 0.0

    def _family(self, arm: str) -> str:
        if arm in self._active:
            return self._active[arm]
        return OperatorConfig.from_id(arm).operator

    # --- select / update -----------------------------------------------------------------

    def select(
        self, candidates: Sequence[ArmContext], request: Mapping[str, Any] | None = None
    ) -> Choice:
        """Choose one of ``candidates`` (active arms with their context) by the policy; the
        choice stays pending (with ``request``, JSON data describing what was asked) until
        :meth:`update` gives its reward."""
        if not candidates:
            raise BanditStateError("select() got no candidates.", "pass one ArmContext per arm.")
        inactive = [c.arm for c in candidates if c.arm not in self._active]
        if inactive:
            raise BanditStateError(
                f"Candidates name arm(s) the bandit does not have: {inactive[:3]}.",
                "add them first with add_arm (or `simmerge bandit add-arm`).",
            )
        rng = self._rng
        xs = [self.scaler.transform(c.features, _check_prior(c.prior)) for c in candidates]
        est = [
            self.estimate(c.arm, x, c.prior, _check_prior_sd(c.prior_sd))
            for c, x in zip(candidates, xs, strict=True)
        ]
        if self.policy == "random" or (self.policy == "egreedy" and rng.random() < self.epsilon):
            i = int(rng.integers(len(candidates)))
        elif self.policy == "predictor":
            i = int(np.argmax([c.prior for c in candidates]))
        elif self.policy == "linucb":
            i = int(np.argmax([m + self.alpha * s for m, s in est]))
        elif self.policy == "lints":
            i = int(np.argmax(self._thompson(candidates, xs)))
        else:  # egreedy, exploiting
            i = int(np.argmax([m for m, _ in est]))
        c = candidates[i]
        choice = Choice(
            self._next_id,
            c.arm,
            float(c.prior),
            tuple(map(float, xs[i])),
            *map(float, est[i]),
            request=dict(request) if request is not None else None,
        )
        self._pending[choice.id] = choice
        self._next_id += 1
        return choice

    def _thompson(self, candidates: Sequence[ArmContext], xs: list[np.ndarray]) -> list[float]:
        draws: dict[str, np.ndarray] = {}
        scores = []
        for c, x in zip(candidates, xs, strict=True):
            total = c.prior
            for key in self._level_keys(c.arm, self._family(c.arm)):
                level = self._peek(key)
                if key not in draws:  # one draw per level per request: arms share levels
                    draws[key] = level.sample(self._rng, self.noise)
                total += level.predict(x, draws[key])
            extra = self._prior_var(c.arm, c.prior_sd)
            if extra:
                total += math.sqrt(extra) * float(self._rng.standard_normal())
            scores.append(total)
        return scores

    def update(self, choice: Choice | int, reward: float) -> None:
        """Learn from the measured ``reward`` (in [0, 1], e.g. the normalized score, capped at
        1) of a pending choice."""
        cid = choice.id if isinstance(choice, Choice) else choice
        if cid not in self._pending:
            raise BanditStateError(
                f"Choice {cid} is not pending (never selected, or already updated).",
                "pass the id printed by select; each choice takes one reward.",
            )
        reward = check_reward(reward)
        pending = self._pending.pop(cid)
        x = np.array(pending.x)
        residual = reward - pending.prior
        for key in self._level_keys(pending.arm, self._family(pending.arm)):
            level = self._level(key)
            fitted = level.predict(x)
            level.add(x, residual)  # this level learns what the levels above left over
            residual -= fitted
        self._updates += 1

    @property
    def pending(self) -> tuple[Choice, ...]:
        return tuple(self._pending.values())

    @property
    def n_updates(self) -> int:
        return self._updates

    # --- persistence ---------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "context_features": list(CONTEXT_FEATURES),
            "policy": self.policy,
            "alpha": self.alpha,
            "noise": self.noise,
            "ridge": self.ridge,
            "level_dims": dict(self.level_dims),
            "epsilon": self.epsilon,
            "seed": self.seed,
            "scaler": {
                "mean": list(self.scaler.mean),
                "std": list(self.scaler.std),
                "prior_mean": self.scaler.prior_mean,
                "prior_std": self.scaler.prior_std,
            },
            "arms": dict(self._active),
            "known_families": sorted(self._known),
            "new_family_sd": self.new_family_sd,
            "levels": {
                k: {"a": lv.a.tolist(), "b": lv.b.tolist(), "n": lv.n}
                for k, lv in self._levels.items()
            },
            "pending": [{**c.to_dict(), "x": list(c.x)} for c in self._pending.values()],
            "next_choice": self._next_id,
            "updates": self._updates,
            "rng": self._rng.bit_generator.state,
        }

    def save(self, path: str | Path) -> Path:
        """Write the state atomically (a killed process leaves the previous file)."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_state(), sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> MergeBandit:
        path = Path(path)
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputNotFoundError(
                f"No bandit state at {str(path)!r}.",
                "create one with MergeBandit(...).save(path) or `simmerge bandit select`.",
            ) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise BanditStateError(
                f"Bandit state {str(path)!r} is not JSON ({exc}).",
                "restore it from a backup, or start a new state file.",
            ) from None
        return cls.from_state(state, source=str(path))

    @classmethod
    def from_state(cls, state: Any, source: str = "state") -> MergeBandit:
        checked = _parse_state(state, source).model_dump()
        try:
            return cls._from_checked_state(checked, source)
        except ConfigError as exc:  # e.g. an unknown policy or out-of-range parameter
            if isinstance(exc, BanditStateError):
                raise
            raise BanditStateError(f"Bandit {source}: {exc.what}", exc.fix) from None

    @classmethod
    def _from_checked_state(cls, state: dict[str, Any], source: str) -> MergeBandit:
        sc = state["scaler"]
        bandit = cls(
            policy=state["policy"],
            alpha=state["alpha"],
            noise=state["noise"],
            ridge=state["ridge"],
            new_family_sd=state["new_family_sd"],
            level_dims=dict(state["level_dims"]),
            epsilon=state["epsilon"],
            seed=state["seed"],
            scaler=Scaler(tuple(sc["mean"]), tuple(sc["std"]), sc["prior_mean"], sc["prior_std"]),
        )
        bandit._active = dict(state["arms"])
        bandit._known = set(state["known_families"])
        bandit._levels = {
            k: _Level(np.array(v["a"], dtype=float), np.array(v["b"], dtype=float), int(v["n"]))
            for k, v in state["levels"].items()
        }
        bandit._pending = {
            int(p["id"]): Choice(
                int(p["id"]), p["arm"], p["prior"], tuple(p["x"]), p["mean"], p["sd"], p["request"]
            )
            for p in state["pending"]
        }
        bandit._next_id = int(state["next_choice"])
        bandit._updates = int(state["updates"])
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = state["rng"]
        except (TypeError, ValueError, KeyError) as exc:
            raise BanditStateError(
                f"Bandit {source}: unusable random state ({exc}).",
                "restore the file from a backup, or start a new state file.",
            ) from None
        bandit._rng = rng
        return bandit


def check_reward(reward: Any) -> float:
    try:
        r = float(reward)
    except (TypeError, ValueError):
        raise BanditStateError(
            f"Reward {reward!r} is not a number.",
            "pass the measured normalized score, a number in [0, 1].",
        ) from None
    if not (math.isfinite(r) and 0.0 <= r <= 1.0):
        raise BanditStateError(
            f"Reward {reward!r} is outside [0, 1].",
            "pass a normalized score capped at 1 (merge score / expert score, at most 1).",
        )
    return r


def _check_prior_sd(prior_sd: float) -> float:
    if not isinstance(prior_sd, int | float) or not math.isfinite(prior_sd) or prior_sd < 0:
        raise BanditStateError(
            f"Arm prior_sd {prior_sd!r} is not a finite number >= 0.",
            "pass 0 for a trusted prior, or the predictor's interval half-width out of "
            "distribution (simmerge.online.bandit.prior_sd_of).",
        )
    return float(prior_sd)


def prior_sd_of(interval: tuple[float, float] | None, in_distribution: bool | None,
                level: float | None) -> float:  # fmt: skip
    """The prior sd of a ranked candidate: 0 when its pair is inside the predictor's training
    data (or unknown); outside, the sd of a normal distribution with the candidate's (widened)
    interval at its level, or :data:`UNBACKED_PRIOR_SD` without an interval."""
    if in_distribution is not False:
        return 0.0
    if interval is None or not level:
        return UNBACKED_PRIOR_SD
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + level / 2)
    return (interval[1] - interval[0]) / (2 * z)


def _check_prior(prior: float) -> float:
    if not isinstance(prior, int | float) or not math.isfinite(prior):
        raise BanditStateError(
            f"Arm prior {prior!r} is not a finite number.",
            "pass the predictor's predicted score (a number in [0, 1]) as the prior.",
        )
    return float(prior)


PositiveFiniteFloat = Annotated[FiniteFloat, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _ScalerState(_Strict):
    mean: list[FiniteFloat]
    std: list[PositiveFiniteFloat]
    prior_mean: FiniteFloat
    prior_std: PositiveFiniteFloat


class _LevelState(_Strict):
    a: list[list[FiniteFloat]]
    b: list[FiniteFloat]
    n: NonNegativeInt


class _PendingState(_Strict):
    id: NonNegativeInt
    arm: str
    prior: FiniteFloat
    x: list[FiniteFloat]
    mean: FiniteFloat
    sd: FiniteFloat
    request: dict[str, Any] | None


class BanditState(_Strict):
    """The saved state's schema: unknown keys, missing keys, wrong types and non-finite numbers
    are refused by the model; :meth:`_consistent` checks what ties the values together."""

    format_version: int
    context_features: list[str]
    policy: str
    alpha: FiniteFloat
    noise: FiniteFloat
    ridge: FiniteFloat
    level_dims: dict[str, int]
    epsilon: FiniteFloat
    seed: NonNegativeInt
    scaler: _ScalerState
    arms: dict[str, str]
    known_families: list[str]
    new_family_sd: FiniteFloat
    levels: dict[str, _LevelState]
    pending: list[_PendingState]
    next_choice: NonNegativeInt
    updates: NonNegativeInt
    rng: dict[str, Any]

    @model_validator(mode="after")
    def _consistent(self) -> BanditState:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"has format {self.format_version}, this code reads {FORMAT_VERSION}")
        if self.context_features != list(CONTEXT_FEATURES):
            raise ValueError(
                f"was written for other context features ({self.context_features} vs "
                f"{list(CONTEXT_FEATURES)})"
            )
        dims = self.level_dims
        if set(dims) != set(LEVEL_RIDGE) or not all(1 <= d <= DIM for d in dims.values()):
            raise ValueError(f"is malformed: level_dims {dims!r}")
        for k, v in self.levels.items():
            kind = k.split(":")[0]
            if kind not in LEVEL_RIDGE:
                raise ValueError(f"is malformed: level {k!r}")
            a, b = np.array(v.a, dtype=float), np.array(v.b, dtype=float)
            if a.shape != (dims[kind], dims[kind]) or b.shape != (dims[kind],):
                raise ValueError(f"is malformed: level {k!r} has the wrong shape")
            if not np.allclose(a, a.T) or not _positive_definite(a):
                # ridge·I + Σxxᵀ is always symmetric positive definite
                raise ValueError(f"is malformed: level {k!r} is not symmetric positive definite")
        for arm, family in self.arms.items():
            try:
                operator = OperatorConfig.from_id(arm).operator
            except SimmergeError:
                operator = None
            if operator != family:
                raise ValueError(f"is malformed: arm {arm!r} listed under family {family!r}")
        for c in self.pending:
            if len(c.x) != DIM or c.id >= self.next_choice:
                raise ValueError(f"is malformed: pending choice {c.id}")
        n = len(CONTEXT_FEATURES)
        if len(self.scaler.mean) != n or len(self.scaler.std) != n:
            raise ValueError("is malformed: scaler length")
        return self


def _positive_definite(a: np.ndarray) -> bool:
    try:
        np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        return False
    return True


def _parse_state(state: Any, source: str) -> BanditState:
    """The state as a :class:`BanditState`, or a :class:`BanditStateError` saying what is
    wrong (pydantic's errors turned into one line)."""
    fix = "use a state written by this simmerge version, or start a new one."
    if not isinstance(state, dict):
        raise BanditStateError(f"Bandit {source} is not a JSON object.", fix)
    try:
        return BanditState.model_validate(state)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    top = [e for e in errors if len(e["loc"]) == 1]
    unknown = sorted(str(e["loc"][0]) for e in top if e["type"] == "extra_forbidden")
    missing = sorted(str(e["loc"][0]) for e in top if e["type"] == "missing")
    if unknown or missing:
        raise BanditStateError(
            f"Bandit {source}: unknown keys {unknown}, missing keys {missing}.", fix
        )
    first = errors[0]
    if first["type"] == "value_error":  # from _consistent: the message says what is wrong
        raise BanditStateError(f"Bandit {source} {first['ctx']['error']}.", fix)
    if len(first["loc"]) == 1:
        raise BanditStateError(
            f"Bandit {source}: {first['loc'][0]!r} should be of another type ({first['msg']}, "
            f"got {type(first['input']).__name__}).",
            fix,
        )
    where = ".".join(str(x) for x in first["loc"])
    raise BanditStateError(f"Bandit {source} is malformed: {where}: {first['msg']}.", fix)
