"""Export a merge chosen by a scan as a config another tool runs (today: mergekit).

A scan's ``ranking.json`` names every ranked merge by a plan id: a 2-way candidate's
:attr:`~simmerge.merging.MergePlan.plan_id` and a multi-way plan's
:attr:`~simmerge.multiway.search.MultiwayPlan.plan_id` (``mw-…``). :func:`export_plan` turns one
into

* one mergekit config (``mergekit-yaml merge.yaml OUT``) for a 2-way merge or a one-shot
  N-way merge;
* for a chain of 2-way merges, a multi-document mergekit config for ``mergekit-multimerge``:
  step i is a document named ``step_i`` whose first model is ``step_{i-1}``; the last
  document has no name and is the final model
  (``mergekit-multimerge merge.yaml --out-path OUT -I INTERMEDIATES``).

Settings mergekit does not know (simmerge's DARE/DELLA seed) are left out, so the random drops
of a DARE merge are mergekit's own draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from simmerge.catalog import Catalog
from simmerge.errors import ConfigError
from simmerge.infra.files import atomic_write_text
from simmerge.merging.grid import OperatorConfig

FORMATS = ("mergekit",)


def find_plan(ranking: dict[str, Any], plan_id: str) -> dict[str, Any]:
    """The ranking entry for ``plan_id``: ``{"kind": "pair", "models", "candidate"}`` or
    ``{"kind": "multiway", "members", "steps", "oneshot"}``."""
    found: dict[str, dict[str, Any]] = {}
    for pair in ranking.get("pairs", []):
        for c in pair["candidates"]:
            found.setdefault(
                c["plan_id"],
                {"kind": "pair", "models": c["models"], "candidate": c["candidate"]},
            )
    for p in ranking.get("plans", []):
        found.setdefault(
            p["plan_id"],
            {"kind": "multiway", "members": p["members"], "steps": p["steps"],
             "oneshot": p["oneshot"]},
        )  # fmt: skip
    if plan_id in found:
        return found[plan_id]
    close = sorted(i for i in found if i.startswith(plan_id[:4]))[:5]
    raise ConfigError(
        f"No ranked merge has plan id {plan_id!r} in this scan.",
        "pick a plan id from ranking.json or report.html"
        + (f" (similar ids: {', '.join(close)})" if close else "")
        + "; only the candidates a scan keeps (--top) can be exported.",
    )


def mergekit_documents(entry: dict[str, Any], catalog: Catalog) -> list[dict[str, Any]]:
    """The mergekit config document(s) for a ranking entry (see the module docs)."""
    if entry["kind"] == "pair":
        a, b = (str(catalog.model(n).path) for n in entry["models"])
        plan = OperatorConfig.from_id(entry["candidate"]).plan(str(catalog.base.path), a, b)
        return [plan.to_mergekit_dict(include_simmerge=False)]
    from simmerge.multiway.search import MultiwayPlan, mergekit_configs

    plan = MultiwayPlan(tuple(entry["members"]), tuple(entry["steps"]), bool(entry["oneshot"]))
    docs = mergekit_configs(plan, catalog, prefix="step")
    # intermediates are named after the folder the next step reads; the final one is unnamed
    return [{"name": f"step_{i + 1}", **d} for i, d in enumerate(docs[:-1])] + docs[-1:]


def export_plan(
    ranking: dict[str, Any],
    plan_id: str,
    catalog: Catalog,
    *,
    fmt: str = "mergekit",
    out: str | Path | None = None,
) -> str:
    """YAML text of ``plan_id`` in ``fmt``; also written (atomically) to ``out`` if given."""
    if fmt not in FORMATS:
        raise ConfigError(f"Unknown export format {fmt!r}.", f"use one of: {', '.join(FORMATS)}.")
    docs = mergekit_documents(find_plan(ranking, plan_id), catalog)
    text = yaml.safe_dump_all(docs, sort_keys=False, explicit_start=len(docs) > 1)
    if out is not None:
        atomic_write_text(Path(out), text)
    return text
