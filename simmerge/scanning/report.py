"""The scan report: one self-contained HTML page (no CDN, no script) plus its figures as PNGs.

:func:`write_report` reads a scan folder's ``ranking.json`` and ``features.parquet`` and draws

* a **mergeability heatmap**: the predicted normalized score of each pair's predicted best
  merge, rows and columns in the order of the clustering below;
* a **clustering of the catalog** (average linkage) by the symmetric Jensen-Shannon divergence
  of the experts' next-token distributions on the general probes (all probe sets when there is
  no general one): experts that behave alike sit together;
* the **ranked merge table** (every pair's best candidate with its calibrated interval,
  whether the pair lies inside the predictor's training data, and the multi-way plans),
  with the ids ``simmerge export`` takes;
* **predicted vs actual** for every verified outcome of the catalog in an outcome store
  (``simmerge verify --store``), when there are any;
* the **top feature contributions**: mean |LightGBM pred_contrib| of the features that drove
  each pair's chosen merge.

Figures are rendered with matplotlib (extra ``simmerge[plots]``) into PNG files next to the page
and embedded in it as data URIs, so the page alone can be mailed or archived. Without
matplotlib the page still carries the tables. Everything is written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from simmerge.catalog import Catalog
from simmerge.infra.cache import cache_key
from simmerge.infra.files import atomic_write_bytes, atomic_write_text

_KEY_RE = re.compile(rb'<meta name="simmerge-scan-key" content="([0-9a-f]+)"')


def report_key(ranking_key: str, catalog: Catalog, store: str | Path | None) -> str:
    """The report's resume key: its ranking plus the verified outcomes it plots."""
    return cache_key({"ranking": ranking_key, "outcomes": _verified(store, catalog.name)})


def html_key(path: Path) -> str | None:
    """The key a report page was written with, or None."""
    try:
        with open(path, "rb") as f:
            m = _KEY_RE.search(f.read(4096))
    except OSError:
        return None
    return m.group(1).decode() if m else None


def _verified(store: str | Path | None, catalog: str) -> list[dict[str, Any]]:
    if store is None or not Path(store).is_file():
        return []
    from simmerge.outcomes.store import OutcomeStore

    with OutcomeStore(store) as db:
        rows = db.to_records(catalog)
    keep = ("model_a", "model_b", "candidate", "task", "normalized")
    out = [{k: r[k] for k in keep} for r in rows]
    return sorted(out, key=lambda r: tuple(str(v) for v in r.values()))


# --- data for the figures ----------------------------------------------------------------------


def pair_matrix(ranking: dict[str, Any], names: list[str]) -> np.ndarray:
    """Predicted best normalized score per pair (symmetric, NaN on the diagonal and where a pair
    was not ranked)."""
    idx = {n: i for i, n in enumerate(names)}
    m = np.full((len(names), len(names)), np.nan)
    for p in ranking["pairs"]:
        i, j = (idx[n] for n in p["models"])
        m[i, j] = m[j, i] = p["best"]["predicted"]
    return m


def divergence_matrix(features: Any, names: list[str]) -> np.ndarray:
    """Symmetric mean JS divergence between experts (general probe rows where present)."""
    rows = features[features["task"] == ""]
    if rows.empty:
        rows = features
    mean = rows.groupby(["a", "b"])["js_mean"].mean()
    idx = {n: i for i, n in enumerate(names)}
    d = np.zeros((len(names), len(names)))
    for (a, b), v in mean.items():
        if a in idx and b in idx:
            d[idx[a], idx[b]] += v / 2
            d[idx[b], idx[a]] += v / 2
    np.fill_diagonal(d, 0.0)
    return np.nan_to_num(np.maximum(d, 0.0))


def cluster_order(d: np.ndarray) -> tuple[list[int], Any]:
    """Leaf order of an average-linkage clustering of distance matrix ``d`` (and the linkage)."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    if len(d) < 3:
        return list(range(len(d))), None
    z = linkage(squareform(d, checks=False), method="average")
    return [int(i) for i in leaves_list(z)], z


def verified_points(ranking: dict[str, Any], verified: list[dict]) -> list[tuple[float, float]]:
    """(predicted, actual) normalized score for each verified outcome the scan has a
    prediction for (same pair in either order, same candidate and task)."""
    preds = {}
    for p in ranking["pairs"]:
        a, b = p["models"]
        preds[(a, b)] = preds[(b, a)] = p["predictions"]
    out = []
    for r in verified:
        per_task = preds.get((r["model_a"], r["model_b"]), {}).get(r["candidate"], {})
        if r["task"] in per_task:
            out.append((float(per_task[r["task"]]), float(r["normalized"])))
    return out


def feature_importance(ranking: dict[str, Any], k: int = 12) -> list[tuple[str, float]]:
    """Mean |contribution| over the pairs of the features behind each pair's chosen merge
    (a feature outside a pair's top list counts 0 there)."""
    total: dict[str, float] = defaultdict(float)
    for p in ranking["pairs"]:
        for f in p["best"]["top_features"]:
            total[f["feature"]] += abs(f["contribution"])
    n = max(len(ranking["pairs"]), 1)
    return sorted(((f, v / n) for f, v in total.items()), key=lambda x: -x[1])[:k]


# --- figures -------------------------------------------------------------------------------


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _figures(ranking: dict, features: Any, verified: list[dict]) -> dict[str, bytes]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    names = list(ranking["catalog"]["experts"])
    order, z = cluster_order(divergence_matrix(features, names))
    ordered = [names[i] for i in order]
    figs: dict[str, bytes] = {}

    m = pair_matrix(ranking, ordered)
    size = 2.5 + 0.45 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    finite = m[np.isfinite(m)]
    low = min(0.5, math.floor(float(finite.min()) * 10) / 10) if finite.size else 0.0
    im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis", vmin=low, vmax=1.0)
    ax.set_xticks(range(len(ordered)), ordered, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(ordered)), ordered, fontsize=8)
    if len(names) <= 12:
        for i in range(len(ordered)):
            for j in range(len(ordered)):
                if not math.isnan(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] < 0.6 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, label="predicted normalized score of the best merge")
    ax.set_title("Mergeability (predicted, no merge run)")
    figs["heatmap"] = _png(fig)

    if z is not None:
        from scipy.cluster.hierarchy import dendrogram

        fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(names) + 2), 3.6))
        dendrogram(z, labels=names, ax=ax, leaf_rotation=60, leaf_font_size=8)
        ax.set_ylabel("JS divergence (average linkage)")
        ax.set_title("Catalog clustered by functional similarity")
        figs["clusters"] = _png(fig)

    points = verified_points(ranking, verified)
    if points:
        p = np.array(points)
        fig, ax = plt.subplots(figsize=(4.6, 4.4))
        ax.scatter(p[:, 0], p[:, 1], s=14, alpha=0.7)
        lo = float(min(p.min(), 0.0))
        ax.plot([lo, 1.05], [lo, 1.05], "k--", lw=0.8)
        mae = float(np.abs(p[:, 0] - p[:, 1]).mean())
        ax.set_xlabel("predicted normalized score")
        ax.set_ylabel("actual normalized score")
        ax.set_title(f"Verified outcomes: n={len(p)}, MAE {mae:.3f}")
        figs["scatter"] = _png(fig)

    imp = feature_importance(ranking)
    if imp:
        fig, ax = plt.subplots(figsize=(6.0, 0.3 * len(imp) + 1.2))
        ax.barh([f for f, _ in imp][::-1], [v for _, v in imp][::-1], color="#4c72b0")
        ax.set_xlabel("mean |contribution| to the chosen merge's prediction")
        ax.set_title("Top feature contributions")
        figs["features"] = _png(fig)
    return figs


# --- page ----------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em}
td,th{padding:.25em .6em;border-bottom:1px solid #eee;text-align:left}th{background:#f5f5f5}
td.n{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:.9em}img{max-width:100%}.note{color:#666;font-size:.9em}
.warn{color:#a40}
"""


def _img(figs: dict[str, bytes], name: str, alt: str) -> str:
    if name not in figs:
        return ""
    data = base64.b64encode(figs[name]).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else "–"


def _pair_table(ranking: dict, limit: int = 50) -> str:
    """The ``limit`` pairs with the best predicted merge (all of them are in ranking.json)."""
    pairs = sorted(ranking["pairs"], key=lambda p: -p["best"]["predicted"])
    note = (
        f'<p class="note">The {limit} best of {len(pairs)} pairs; ranking.json lists all.</p>'
        if len(pairs) > limit
        else ""
    )
    pairs = pairs[:limit]
    outside = sum(p["best"].get("in_distribution") is False for p in ranking["pairs"])
    if outside:
        note += (
            f'<p class="warn">{outside} of {len(ranking["pairs"])} pairs are unlike the pairs '
            "the predictor was trained on (<em>no</em> under seen?): their predictions are "
            "extrapolations, their intervals are widened, and the anchor is ranked first. "
            "Verify their top picks (<code>simmerge verify --k 3 --store DB</code>) and refit "
            "(<code>simmerge train --store DB --catalog ...</code>), or let the bandit learn."
            "</p>"
        )
    head = (
        "<tr><th>#</th><th>pair</th><th>tasks</th><th>best merge (predicted)</th>"
        "<th>pred.</th><th>interval</th><th>seen?</th><th>runner-up</th><th>plan id</th></tr>"
    )
    rows = []
    for i, p in enumerate(pairs, 1):
        best, cands = p["best"], p["candidates"]
        second = cands[1]["candidate"] if len(cands) > 1 else "–"
        rows.append(
            f"<tr><td class=n>{i}</td><td>{html.escape(' + '.join(p['models']))}</td>"
            f"<td>{html.escape(', '.join(p['tasks']))}</td>"
            f"<td><code>{html.escape(best['candidate'])}</code></td>"
            f"<td class=n>{_fmt(best['predicted'])}</td><td class=n>{_interval(best)}</td>"
            f"<td>{_seen(best)}</td><td><code>{html.escape(second)}</code></td>"
            f"<td><code>{html.escape(best['plan_id'])}</code></td></tr>"
        )
    return f"{note}<table>{head}{''.join(rows)}</table>{_interval_note(ranking)}"


def _interval_note(ranking: dict) -> str:
    cal = (ranking.get("predictor") or {}).get("interval")
    if not cal:
        return '<p class="note">± is the ensemble spread (no calibrated interval).</p>'
    measured = cal.get("measured") or {}
    cov = measured.get("coverage")
    got = f", {cov:.0%} measured" if isinstance(cov, (int, float)) else ""
    return (
        f"<p class=\"note\">interval: the predictor's {cal['level']:.0%} interval for the merge's "
        f"score ({cal['split']}{got}); on a pair it has not seen (seen? no) it is widened and "
        "its coverage is not guaranteed.</p>"
    )


def _interval(c: dict) -> str:
    """The calibrated interval of a ranked candidate, or its ensemble spread without one."""
    iv = c.get("interval")
    if iv is None:
        return f"± {_fmt(c.get('uncertainty'))}"
    return f"{iv[0]:.2f} – {iv[1]:.2f}"


def _seen(c: dict) -> str:
    """Whether the pair lies inside the predictor's training data."""
    flag = c.get("in_distribution")
    if flag is None:
        return "–"
    return "yes" if flag else '<span class="warn">no</span>'


def _plan_table(ranking: dict) -> str:
    if not ranking["plans"]:
        note = ranking.get("plans_note") or "no plans"
        return f'<p class="note">No multi-way plans: {html.escape(note)}.</p>'
    head = (
        "<tr><th>#</th><th>plan</th><th>pred.</th><th>±</th><th>seen?</th><th>per task</th>"
        "<th>plan id</th></tr>"
    )
    rows = []
    for p in ranking["plans"]:
        per_task = ", ".join(f"{t} {v:.2f}" for t, v in p["per_task"].items())
        rows.append(
            f"<tr><td class=n>{p['rank']}</td><td><code>{html.escape(p['plan'])}</code></td>"
            f"<td class=n>{_fmt(p['predicted'])}</td><td class=n>{_fmt(p['uncertainty'])}</td>"
            f"<td>{_seen(p)}</td><td>{html.escape(per_task)}</td><td><code>{html.escape(p['plan_id'])}</code></td>"
            "</tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def render_html(ranking: dict, figs: dict[str, bytes], n_verified: int, key: str) -> str:
    cat = ranking["catalog"]
    title = f"simmerge scan: {cat['name']}"
    tasks = ", ".join(ranking["plan_tasks"]) or "–"
    scatter = (
        _img(figs, "scatter", "predicted vs actual")
        if "scatter" in figs
        else '<p class="note">No verified outcomes for this catalog yet: run <code>simmerge '
        "verify CATALOG --models a,b --store S</code> and re-run the scan with "
        "<code>--store S</code>.</p>"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta name="simmerge-scan-key" content="{html.escape(key)}">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{len(cat["experts"])} experts over base '
        f"<code>{html.escape(cat['base'])}</code>; {len(ranking['pairs'])} pairs ranked by the "
        "predictor from similarity features alone (no merge run); simmerge "
        f"{html.escape(ranking['simmerge'])}. Scores are normalized: merge score / the task "
        "expert's score, averaged over the pair's tasks.</p>",
        "<h2>Mergeability heatmap</h2>",
        _img(figs, "heatmap", "mergeability heatmap"),
        "<h2>Catalog clusters</h2>",
        _img(figs, "clusters", "clustering of the catalog")
        or '<p class="note">Fewer than three experts: nothing to cluster.</p>',
        "<h2>Ranked merges</h2>",
        _pair_table(ranking),
        f"<h2>Multi-way plans for {html.escape(tasks)}</h2>",
        _plan_table(ranking),
        f"<h2>Predicted vs actual ({n_verified} verified outcome rows)</h2>",
        scatter,
        "<h2>Top feature contributions</h2>",
        _img(figs, "features", "feature contributions"),
        '<p class="note">Export a merge: <code>simmerge export PLAN_ID --scan DIR --format '
        "mergekit --out merge.yaml</code>.</p>",
        "</body></html>",
    ]
    if not figs:
        parts.insert(5, '<p class="note">Figures need matplotlib: pip install '
                        "'simmerge[plots]'.</p>")  # fmt: skip
    return "\n".join(p for p in parts if p)


def write_report(
    scan_dir: str | Path,
    *,
    store: str | Path | None = None,
    key: str | None = None,
) -> Path:
    """Write ``report.html`` and ``report_<figure>.png`` into a scan folder (see module docs)."""
    import pandas as pd

    from simmerge.scanning.layout import FEATURES_FILE, REPORT_FILE, load_ranking

    folder = Path(scan_dir)
    ranking = load_ranking(folder)
    features = pd.read_parquet(folder / FEATURES_FILE)
    verified = _verified(store, ranking["catalog"]["name"])
    figs = _figures(ranking, features, verified)
    for name, png in figs.items():
        atomic_write_bytes(folder / f"report_{name}.png", png)
    page = render_html(ranking, figs, len(verified), key or ranking.get("key", "0"))
    out = folder / REPORT_FILE
    atomic_write_text(out, page)
    return out
