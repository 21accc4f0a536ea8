"""Which predictor to use: an object, a saved folder, or a shipped name."""

from __future__ import annotations

from pathlib import Path

from simmerge.infra.resources import data_dir
from simmerge.learn.predictor import MergePredictor

DEFAULT_PREDICTOR = "default"


def load_predictor(predictor: MergePredictor | str | Path | None) -> MergePredictor:
    """A predictor object, a saved folder, or a shipped name (``models/<name>``)."""
    if isinstance(predictor, MergePredictor):
        return predictor
    name = predictor or DEFAULT_PREDICTOR
    path = Path(name)
    if not (path / "card.json").is_file():
        path = data_dir("models") / str(name)
    return MergePredictor.load(path)
