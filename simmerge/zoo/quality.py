"""The zoo's quality floor (issue: "Embedded default"), measured from an outcome store.

For every unordered expert pair (a, b) and candidate: the share of a's skill the merge keeps
(mean normalized score over a's tasks) and the same for b. A pair *passes* when its best
candidate keeps at least half of both; operators *disagree* on a pair when the mean kept share
of its candidates spans at least 0.1.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from simmerge.catalog import Catalog
from simmerge.outcomes.store import OutcomeStore


def kept_shares(catalog: Catalog, store: OutcomeStore) -> dict[tuple[str, str], dict]:
    """(a, b) -> candidate -> (share of a kept, share of b kept), a before b in catalog order."""
    norm = {
        (o.model_a, o.model_b, o.candidate, o.task): o.normalized
        for o in store.outcomes(catalog.name)
    }
    pairs = {}
    for a, b in itertools.combinations(catalog.experts, 2):
        cands = sorted({c for (x, y, c, _) in norm if (x, y) == (a.name, b.name)})
        pairs[(a.name, b.name)] = {
            c: tuple(
                sum(norm[(a.name, b.name, c, t)] for t in m.tasks) / len(m.tasks) for m in (a, b)
            )
            for c in cands
        }
    return pairs


def quality_report(catalog: Catalog, store: OutcomeStore) -> dict[str, Any]:
    pairs = kept_shares(catalog, store)
    best = {p: max(kept, key=lambda c: min(kept[c])) for p, kept in pairs.items() if kept}
    spread = {
        p: max(sum(v) / 2 for v in kept.values()) - min(sum(v) / 2 for v in kept.values())
        for p, kept in pairs.items()
        if kept
    }
    return {
        "pairs": len(best),
        "best_keeps_half_of_both": sum(min(pairs[p][c]) >= 0.5 for p, c in best.items()),
        "operators_disagree": sum(v >= 0.1 for v in spread.values()),
        "best_operator_counts": dict(Counter(c.split("[")[0] for c in best.values())),
        "best": {
            f"{a}+{b}": {"candidate": c, "kept": pairs[(a, b)][c]} for (a, b), c in best.items()
        },
        # per pair and candidate: the mean of the two kept shares
        "mean_kept": {
            f"{a}+{b}": {c: sum(v) / 2 for c, v in kept.items()} for (a, b), kept in pairs.items()
        },
    }
