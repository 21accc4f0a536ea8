"""The learned merge predictor: pair features + candidate -> normalized score, with uncertainty.

One training row is (ordered pair a, b; task t; candidate c) with target = normalized score of
the merge on t (score / score of t's expert). Its features (:func:`predictor_columns`):

* the pair's similarity features on the general probe set (:data:`FEATURE_COLUMNS`);
* the functional features on t's own probe set, prefixed ``task_`` (NaN when t has none);
* ``task_of_a`` / ``task_of_b``: whose task t is (an asymmetric merge such as slerp favours one
  member, so the model must know which side the task sits on);
* the candidate: operator one-hot (``op_*``) and hyper-parameters (``hp_*``, NaN when absent).

The target is decomposed (``decompose=True``, the default): rows measured on the same pair and
task form a *group* whose candidates differ, and the prediction is **level + deviation** --
a *level* model predicts the group's mean score over its candidates from the pair columns
alone, and a *deviation* model predicts each candidate's score minus that mean from all
columns. Why: most of the variance of a normalized score is between pairs (how compatible the
two experts are), but a user chooses *within* a pair; a single regressor spends its splits on
the level and ranks the candidates of one pair poorly. Fitting the deviation separately made
held-out-model gap closure 0.35 instead of 0.20 on ``features/zoo-large`` (measured with
``scripts/evaluate_selector.py``; see docs/results/pairwise.md).

Each of the two is a seed ensemble of :data:`DEFAULT_ENSEMBLE` LightGBM regressors (bagging
rows and columns with different seeds); member i's prediction is level_i + deviation_i, the
mean over members the prediction and their spread the uncertainty. The pick on a close pair
depends on the members' bagging draws, so held-out figures move with the training seed:
held-out-model gap closure 0.25-0.41 over five seeds with 5 members, 0.33-0.45 with 20 (means
0.35 and 0.39, a difference within that spread; ``scripts/selector_seed_spread.py``), so 5
it stays. Saved as LightGBM text files plus a JSON card; :meth:`MergePredictor.load` refuses
a card whose feature list differs from this code's, because a model silently fed columns in
another order predicts garbage.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simmerge.errors import ConfigError, InputNotFoundError, OperatorParameterError, PredictorError
from simmerge.infra.files import atomic_output_dir
from simmerge.learn.conformal import IntervalCalibration
from simmerge.learn.domain import COVERAGE, DOMAIN_FILE, DomainCheck, TrainingDomain
from simmerge.merging.grid import HYPERPARAMETERS, PREDICTOR_OPERATORS, OperatorConfig
from simmerge.signals.similarity import FEATURE_COLUMNS, FUNCTIONAL_COLUMNS

CARD = "card.json"
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # 1: no decomposition (no level models)
DEFAULT_ENSEMBLE = 5  # members per model (see the module docs)
TASK_PREFIX = "task_"
GROUP_KEYS = ("catalog", "a", "b", "task")  # rows sharing these differ only in the candidate


def candidate_columns() -> tuple[str, ...]:
    return tuple(f"op_{name}" for name in PREDICTOR_OPERATORS) + tuple(
        f"hp_{h}" for h in HYPERPARAMETERS
    )


def level_columns() -> tuple[str, ...]:
    """The columns of the level model: everything but the candidate's."""
    cand = set(candidate_columns())
    return tuple(c for c in predictor_columns() if c not in cand)


def predictor_columns() -> tuple[str, ...]:
    """Input columns of the predictor, in order (see the module docs)."""
    return (
        *FEATURE_COLUMNS,
        *(TASK_PREFIX + c for c in FUNCTIONAL_COLUMNS),
        "task_of_a",
        "task_of_b",
        *candidate_columns(),
    )


def candidate_features(config: OperatorConfig) -> dict[str, float]:
    if config.operator not in PREDICTOR_OPERATORS:
        raise OperatorParameterError(
            f"The predictor has no features for operator {config.operator!r}: it was trained "
            f"on {', '.join(PREDICTOR_OPERATORS)} only.",
            "rank candidates of those operators, or merge and evaluate this one "
            "(`simmerge verify`, `simmerge collect`) to build training data for it.",
        )
    out = {f"op_{name}": float(name == config.operator) for name in PREDICTOR_OPERATORS}
    out.update({f"hp_{k}": v for k, v in config.hyperparameters().items()})
    return out


def design_row(
    general: Mapping[str, float],
    task_features: Mapping[str, float] | None,
    task_of_a: bool,
    task_of_b: bool,
    config: OperatorConfig,
) -> dict[str, float]:
    """One predictor input row from its parts (see the module docs)."""
    row = {c: float(general[c]) for c in FEATURE_COLUMNS}
    for c in FUNCTIONAL_COLUMNS:
        row[TASK_PREFIX + c] = float(task_features[c]) if task_features else math.nan
    row["task_of_a"] = float(task_of_a)
    row["task_of_b"] = float(task_of_b)
    row.update(candidate_features(config))
    return row


def to_matrix(rows: Sequence[Mapping[str, float]] | Any, columns: Sequence[str]) -> np.ndarray:
    """Rows (mappings or a DataFrame) -> float64 matrix in ``columns`` order."""
    if hasattr(rows, "columns"):  # a pandas DataFrame
        missing = [c for c in columns if c not in rows.columns]
        if missing:
            raise ConfigError(
                f"Predictor input lacks {len(missing)} column(s), e.g. {missing[:3]}.",
                "build rows with simmerge.learn.predictor.design_row or the training table.",
            )
        return rows[list(columns)].to_numpy(dtype=np.float64)
    return np.array([[r[c] for c in columns] for r in rows], dtype=np.float64).reshape(
        -1, len(columns)
    )


def data_hash(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "regression",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "deterministic": True,
    "force_col_wise": True,
    "num_threads": 2,
}


@dataclass
class MergePredictor:
    """Seed ensemble of LightGBM regressors on :func:`predictor_columns`.

    scikit-learn's estimator contract: the constructor only stores its parameters (they are
    checked by ``fit``); what fitting learns ends in ``_`` (``boosters_``, ``level_boosters_``,
    ``card_``: the training record saved beside the models); ``predict(X)`` gives the mean
    and ``predict(X, return_std=True)`` the ensemble's spread too; ``save`` / ``load``.
    """

    n_models: int = DEFAULT_ENSEMBLE
    num_boost_round: int = 300
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    decompose: bool = True
    columns: tuple[str, ...] = field(default_factory=predictor_columns)

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        """LightGBM parameters that ``params`` overrides."""
        return dict(DEFAULT_PARAMS)

    def _check_params(self) -> None:
        if self.n_models < 1 or self.num_boost_round < 1:
            raise ConfigError(
                f"MergePredictor needs n_models >= 1 and num_boost_round >= 1 "
                f"(got {self.n_models}, {self.num_boost_round}).",
                "pass positive values.",
            )
        known = set(self.default_params()) | {"min_sum_hessian_in_leaf", "max_depth"}
        unknown = set(self.params) - known
        if unknown:
            raise ConfigError(
                f"Unknown LightGBM parameter(s) for {type(self).__name__}: {sorted(unknown)}.",
                f"use keys among {sorted(known)}.",
            )

    # --- training --------------------------------------------------------------------------

    def fit(
        self, rows: Any, y: Sequence[float], groups: Sequence[Any] | None = None
    ) -> MergePredictor:
        """Fit on ``rows`` (mappings or a DataFrame with :func:`predictor_columns`) and targets
        ``y``. With ``decompose``, ``groups`` gives each row's (pair, task) group; by default
        it is read from a DataFrame's :data:`GROUP_KEYS` columns."""
        self._check_params()
        x = to_matrix(rows, self.columns)
        target = np.asarray(y, dtype=np.float64)
        if len(target) != len(x) or len(x) < 2:
            raise ConfigError(
                f"fit() got {len(x)} rows and {len(target)} targets.",
                "pass one target per row and at least two rows.",
            )
        self.boosters_, self.level_boosters_ = [], []
        if self.decompose:
            codes = _group_codes(rows, groups, len(x))
            counts = np.bincount(codes)
            level = np.bincount(codes, weights=target) / counts
            first = np.unique(codes, return_index=True)[1]
            level_x = x[:, self._level_index()][first]
            self.level_boosters_ = self._train(level_x, level, level_columns())
            self.boosters_ = self._train(x, target - level[codes], self.columns)
        else:
            self.boosters_ = self._train(x, target, self.columns)
        self.domain_ = self._fit_domain(rows, groups, x)
        self.card_ = {
            "format_version": FORMAT_VERSION,
            "features": list(self.columns),
            "target": self.target_description(),
            "decompose": self.decompose,
            "n_models": self.n_models,
            "num_boost_round": self.num_boost_round,
            "params": {**self.default_params(), **self.params},
            "seed": self.seed,
            "training_rows": len(x),
            "training_data_hash": data_hash(x, target),
            "versions": _versions(),
            "domain": self._domain_card(),
        }
        self.interval_ = None  # calibrated on held-out residuals: set_interval
        return self

    def set_interval(self, calibration: IntervalCalibration, coverage: Mapping[str, Any]) -> None:
        """Attach an interval calibration and its measured coverage (the card keeps both)."""
        self.interval_ = calibration
        self.card_["interval"] = {**calibration.to_card(), "measured": dict(coverage)}

    def _fit_domain(self, rows: Any, groups: Sequence[Any] | None, x: np.ndarray) -> TrainingDomain:
        """One row per (pair, task) group when decomposing, else per distinct row."""
        sub = x[:, self._domain_index()]
        pairs = _row_pairs(rows)
        if self.decompose:
            first = np.unique(_group_codes(rows, groups, len(x)), return_index=True)[1]
            sub = sub[first]
            pairs = None if pairs is None else [pairs[i] for i in first]
        else:
            sub, first = np.unique(sub, axis=0, return_index=True)
            pairs = None if pairs is None else [pairs[i] for i in first]
        return TrainingDomain.fit(sub, self.domain_columns(), seed=self.seed, pairs=pairs)

    def add_domain(
        self, rows: Any, y: Sequence[float], groups: Sequence[Any] | None = None
    ) -> dict[str, Any]:
        """Fit the training domain of an already fitted predictor from its training data.

        For predictors saved before the domain existed: ``rows`` and ``y`` must be the data it
        was fitted on (checked against the card's ``training_data_hash``). Returns the card's
        new ``domain`` entry; :meth:`save_domain` writes both."""
        x = self.check_training_data(rows, y)
        self.domain_ = self._fit_domain(rows, groups, x)
        self.card_["domain"] = self._domain_card()
        return self.card_["domain"]

    def check_training_data(self, rows: Any, y: Sequence[float]) -> np.ndarray:
        """The design matrix of ``rows``, after checking that they and ``y`` are the data this
        predictor was fitted on (the card's ``training_data_hash``)."""
        x = to_matrix(rows, self.columns)
        if data_hash(x, np.asarray(y, dtype=np.float64)) != self.card_.get("training_data_hash"):
            raise PredictorError(
                "These rows are not the data this predictor was trained on (its card's "
                "training_data_hash differs).",
                "pass the card's training_sources, with the library versions it records.",
            )
        return x

    def clone(self) -> MergePredictor:
        """An unfitted predictor with the same settings (scikit-learn's ``clone``)."""
        return type(self)(
            n_models=self.n_models,
            num_boost_round=self.num_boost_round,
            params=dict(self.params),
            seed=self.seed,
            decompose=self.decompose,
            columns=self.columns,
        )

    def save_card(self, folder: str | Path) -> None:
        """Rewrite only the card (boosters and domain stay byte for byte)."""
        from simmerge.infra.files import atomic_write_text

        card = json.dumps(self.card_, indent=2, sort_keys=True) + "\n"
        atomic_write_text(Path(folder) / CARD, card)

    def save_domain(self, folder: str | Path) -> None:
        """Write only the domain file and the card (the boosters stay byte for byte)."""
        folder = Path(folder)
        tmp = folder / f".{DOMAIN_FILE}.tmp.npz"
        self.domain_.save(tmp)
        tmp.replace(folder / DOMAIN_FILE)
        self.save_card(folder)

    def _domain_card(self) -> dict[str, Any]:
        d = self.domain_
        return {
            "file": DOMAIN_FILE,
            "reference_rows": int(len(d.reference)),
            "neighbours": d.k,
            "threshold": d.threshold,
            "coverage": COVERAGE,
        }

    def check_domain(self, rows: Any) -> list[DomainCheck] | None:
        """Whether each row's pair features lie inside the training data (None for a
        predictor saved without its training domain; see scripts/add_training_domain.py)."""
        domain = getattr(self, "domain_", None)
        if domain is None:
            return None
        return domain.check(to_matrix(rows, self.columns)[:, self._domain_index()])

    @classmethod
    def expected_columns(cls) -> tuple[str, ...]:
        """The columns a saved model of this class must list (its card is checked on load)."""
        return predictor_columns()

    @classmethod
    def target_description(cls) -> str:
        return "normalized score (merge score / the task's expert score)"

    @classmethod
    def domain_columns(cls) -> tuple[str, ...]:
        """The columns whose training range the domain keeps: the pair's, not the candidate's
        (a pair unlike the training pairs is out of distribution whatever is merged)."""
        return level_columns()

    def _domain_index(self) -> list[int]:
        return [self.columns.index(c) for c in self.domain_columns()]

    def _level_index(self) -> list[int]:
        """Positions of the level model's columns in the input matrix."""
        return [self.columns.index(c) for c in level_columns()]

    def _train(self, x: np.ndarray, y: np.ndarray, columns: Sequence[str]) -> list[Any]:
        import lightgbm as lgb

        boosters = []
        for i in range(self.n_models):
            params = {**self.default_params(), **self.params, "seed": self.seed + i}
            ds = lgb.Dataset(x, y, feature_name=list(columns), free_raw_data=True)
            boosters.append(lgb.train(params, ds, num_boost_round=self.num_boost_round))
        return boosters

    # --- inference -------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not getattr(self, "boosters_", None):
            raise PredictorError(
                "This MergePredictor has not been fitted.", "call fit() or MergePredictor.load()."
            )

    def predict(
        self, rows: Any, return_std: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """The ensemble's mean predicted normalized score per row; with ``return_std``, the
        pair (mean, std over the ensemble's members)."""
        self._check_fitted()
        x = to_matrix(rows, self.columns)
        preds = np.stack([b.predict(x) for b in self.boosters_])
        if self.level_boosters_:
            level_x = x[:, self._level_index()]
            preds += np.stack([b.predict(level_x) for b in self.level_boosters_])
        mean = preds.mean(axis=0)
        return (mean, preds.std(axis=0)) if return_std else mean

    def contributions(self, rows: Any) -> np.ndarray:
        """Per-row, per-feature SHAP contributions (LightGBM ``pred_contrib``), averaged over
        the ensemble; the last column is the bias. Shape (rows, features + 1)."""
        self._check_fitted()
        x = to_matrix(rows, self.columns)
        contrib = np.mean([b.predict(x, pred_contrib=True) for b in self.boosters_], axis=0)
        if self.level_boosters_:  # SHAP values add: place the level model's in its columns
            idx = self._level_index()
            level = np.mean(
                [b.predict(x[:, idx], pred_contrib=True) for b in self.level_boosters_], axis=0
            )
            contrib[:, idx] += level[:, :-1]
            contrib[:, -1] += level[:, -1]
        return contrib

    def top_contributions(self, row: Mapping[str, float], k: int = 5) -> list[tuple[str, float]]:
        contrib = self.contributions([row])[0][:-1]
        order = np.argsort(-np.abs(contrib))[:k]
        return [(self.columns[i], float(contrib[i])) for i in order]

    # --- persistence -----------------------------------------------------------------------

    def save(self, folder: str | Path, *, extra_card: Mapping[str, Any] | None = None) -> Path:
        """Write ``model_<i>.txt`` (LightGBM text) and ``card.json`` atomically."""
        self._check_fitted()
        folder = Path(folder)
        card = {**self.card_, **(extra_card or {})}
        with atomic_output_dir(folder, overwrite=True) as tmp:
            for i, booster in enumerate(self.boosters_):
                booster.save_model(str(tmp / f"model_{i}.txt"))
            for i, booster in enumerate(self.level_boosters_):
                booster.save_model(str(tmp / f"level_{i}.txt"))
            if getattr(self, "domain_", None) is not None:
                self.domain_.save(tmp / DOMAIN_FILE)
            (tmp / CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        self.card_ = card
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> MergePredictor:
        folder = Path(folder)
        try:
            card = json.loads((folder / CARD).read_text())
        except FileNotFoundError:
            raise InputNotFoundError(
                f"No predictor card at {str(folder / CARD)!r}.",
                "pass a folder written by MergePredictor.save (e.g. models/default).",
            ) from None
        except ValueError as exc:
            raise PredictorError(
                f"Predictor card {str(folder / CARD)!r} is not JSON ({exc}).",
                "restore the folder from the shipped predictor or retrain (simmerge train).",
            ) from exc
        expected = list(cls.expected_columns())
        if card.get("format_version") not in READABLE_FORMATS or card.get("features") != expected:
            got = card.get("features") or []
            diff = sorted(set(got) ^ set(expected))[:5]
            raise PredictorError(
                f"Predictor in {str(folder)!r} was trained on other features than this simmerge "
                f"computes ({len(got)} vs {len(expected)} columns; differing: {diff or 'order'}).",
                "retrain it with `simmerge train` or use a predictor saved by this version.",
            )
        try:
            n = int(card["n_models"])
            settings = {
                "num_boost_round": int(card["num_boost_round"]),
                "params": {
                    k: v for k, v in card["params"].items() if cls.default_params().get(k) != v
                },
                "seed": int(card["seed"]),
                "decompose": bool(card.get("decompose", False)),
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PredictorError(
                f"Predictor card {str(folder / CARD)!r} lacks or garbles a setting ({exc!r}).",
                "retrain it with `simmerge train` or restore the folder.",
            ) from None
        model = cls(n_models=n, **settings)
        model.boosters_ = _load_boosters(folder, "model", n)
        model.level_boosters_ = _load_boosters(folder, "level", n) if settings["decompose"] else []
        model.card_ = card
        model.interval_ = IntervalCalibration.from_card(card.get("interval"))
        domain = folder / DOMAIN_FILE
        model.domain_ = TrainingDomain.load(domain) if domain.is_file() else None
        return model


def _load_boosters(folder: Path, stem: str, n: int) -> list[Any]:
    import lightgbm as lgb

    boosters = []
    for i in range(n):
        path = folder / f"{stem}_{i}.txt"
        if not path.is_file():
            raise PredictorError(
                f"Predictor in {str(folder)!r} lacks {path.name} (its card lists {n} models).",
                "restore the folder or retrain.",
            )
        boosters.append(lgb.Booster(model_file=str(path)))
    return boosters


def _row_pairs(rows: Any) -> list[tuple[str, str]] | None:
    """Each row's two models, as (catalog/a, catalog/b), when ``rows`` is a frame that has them
    (the training frame); None otherwise."""
    cols = getattr(rows, "columns", ())
    if not {"a", "b"} <= set(cols):
        return None
    cat = rows["catalog"].astype(str) if "catalog" in cols else ""
    a, b = (cat + "/" + rows[c].astype(str) for c in ("a", "b"))
    return list(zip(a, b, strict=True))


def _group_codes(rows: Any, groups: Sequence[Any] | None, n: int) -> np.ndarray:
    """Integer group id per row, from ``groups`` or a DataFrame's :data:`GROUP_KEYS`."""
    import pandas as pd

    if groups is None:
        missing = [k for k in GROUP_KEYS if k not in getattr(rows, "columns", ())]
        if missing:
            raise ConfigError(
                f"A decomposed MergePredictor needs each row's (pair, task) group, but the rows "
                f"lack {missing}.",
                "pass groups=..., rows with columns catalog/a/b/task (the training frame), or "
                "MergePredictor(decompose=False).",
            )
        groups = list(zip(*(rows[k] for k in GROUP_KEYS), strict=True))
    if len(groups) != n:
        raise ConfigError(f"fit() got {n} rows but {len(groups)} group ids.", "pass one per row.")
    return pd.factorize(pd.Series(list(groups)), use_na_sentinel=False)[0]


def _versions() -> dict[str, str]:
    import lightgbm
    import sklearn

    from simmerge import __version__

    return {
        "simmerge": __version__,
        "lightgbm": lightgbm.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
