"""Human-readable output of the commands (``--json`` prints the records' ``to_dict`` instead).

Presentation only: every function takes a record a stage returned and gives text; none
computes anything a JSON reader would miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simmerge.multiway.search import PlannedMerge
    from simmerge.multiway.verify import PlanVerifyReport
    from simmerge.pairwise.budgeted import BudgetedReport
    from simmerge.pairwise.rank import ConfigVerdict, RankedCandidate
    from simmerge.pairwise.verify import VerifyReport
    from simmerge.scanning.pipeline import ScanResult


def format_ranking(candidates: Sequence[RankedCandidate]) -> str:
    if not candidates:
        return "(no candidates)"
    a, b = candidates[0].models
    level = candidates[0].interval_level
    band = f"{level:.0%} interval" if level else "± (spread)"
    lines = [
        f"merges of {a} + {b} on {', '.join(candidates[0].tasks)} (predicted normalized score)",
        f"{'#':>3} {'candidate':<38} {'pred':>6} {band:>16}  top features",
    ]
    for c in candidates:
        feats = ", ".join(f"{f} {v:+.3f}" for f, v in c.top_features[:3])
        name = c.candidate + (" *" if c.best_fixed else "")
        lines.append(f"{c.rank:>3} {name:<38} {c.predicted:>6.3f} {interval_text(c):>16}  {feats}")
    lines.append("* the best single candidate of the predictor's training data (anchor)")
    lines += out_of_distribution_note(candidates[0])
    return "\n".join(lines)


def interval_text(c: RankedCandidate | dict) -> str:
    """``[low, high]`` of a ranked candidate (or its JSON record); ``± spread`` without one."""
    get = c.get if isinstance(c, dict) else lambda k: getattr(c, k)
    interval = get("interval")
    if interval is None:
        return f"± {get('uncertainty'):.3f}"
    return f"[{interval[0]:.2f}, {interval[1]:.2f}]"


def out_of_distribution_note(candidate: RankedCandidate) -> list[str]:
    """What to do when the pair is unlike the predictor's training data (nothing otherwise)."""
    if candidate.in_distribution is not False:
        return []
    unusual = ", ".join(f"{f} ({v:.1f} IQR out)" for f, v in candidate.unusual) or "no one column"
    return [
        f"! {' + '.join(candidate.models)} is unlike the pairs the predictor was trained on "
        f"(distance {candidate.domain_score:.2f} > {candidate.domain_threshold:.2f}; most "
        f"unusual: {unusual}).",
        "  The predictions are extrapolations (the intervals are widened, and may still be too "
        "narrow) and the anchor is kept first. Verify the top k "
        "(simmerge verify --k 3 --store DB) and refit with `simmerge train --store DB "
        "--catalog ...`, or let the bandit learn (simmerge bandit).",
    ]


def format_config_verdicts(verdicts: Sequence[ConfigVerdict]) -> str:
    lines = ["your configs:"]
    for v in verdicts:
        if v.candidate is None:
            lines.append(f"  {v.path}: not predictable -- {v.reason}")
        elif v.rank is None:
            lines.append(f"  {v.path}: {v.candidate} (not ranked)")
        else:
            lines.append(f"  {v.path}: {v.candidate}, rank {v.rank}, predicted {v.predicted:.3f}")
    return "\n".join(lines)


def format_verify(report: VerifyReport) -> str:
    title = f"verified merges of {' + '.join(report.models)} on {', '.join(report.tasks)}"
    rows = [(v.rank, v.candidate, v.predicted, v.actual) for v in report.verified]
    text = format_verified(title, "candidate", 38, rows)
    if report.skipped:
        same = ", ".join(f"{c} (= {o})" for c, o in report.skipped)
        text += f"\nnot verified, the same merge as a better-ranked candidate: {same}"
    if report.in_distribution is False:
        text += (
            "\n! the pair is unlike the predictor's training pairs: the predictions above were "
            "extrapolations. Refit with `simmerge train --store DB --catalog ...` on these "
            "outcomes, or let the bandit learn."
        )
    return text


def format_budgeted(report: BudgetedReport) -> str:
    """Successive halving's result: each scored candidate with how far it got."""
    lines = [
        f"budgeted verification of {' + '.join(report.models)} on {', '.join(report.tasks)}: "
        f"{report.spent} of {report.budget} example evaluations, {report.merges} merges, "
        "rungs " + " -> ".join(f"{r.candidates}x{r.examples}" for r in report.rungs),
        (
            f"rungs compared measured scores shrunk toward the prediction (worth "
            f"{report.prior_examples:g} examples per task)"
            if report.prior_examples
            else "rungs compared measured scores alone"
        ),
        f"{'rank':>4} {'candidate':<38} {'predicted':>9} {'measured':>8} {'examples':>8}",
    ]
    for s in report.scored:
        note = "" if s.full else " (part of the eval set)"
        lines.append(
            f"{s.rank:>4} {s.candidate:<38} {s.predicted:>9.3f} {s.measured:>8.3f} "
            f"{s.examples:>8}{note}"
        )
    best = report.best
    lines.append(
        f"pick: {best.candidate} (measured {best.measured:.3f} on {best.examples} examples per "
        "task" + ("" if best.full else ", a sample: verify it with --k 1 for its full score") + ")"
    )
    if report.skipped:
        same = ", ".join(f"{c} (= {o})" for c, o in report.skipped)
        lines.append(f"not scored, the same merge as a better-ranked candidate: {same}")
    if report.in_distribution is False:
        lines.append(
            "! the pair is unlike the predictor's training pairs: the order the halving started "
            "from was an extrapolation; with a small budget, prefer a larger one."
        )
    return "\n".join(lines)


def format_verified(
    title: str, label: str, width: int, rows: list[tuple[int, str, float, float]]
) -> str:
    """A table of verified (rank, name, predicted, actual) rows and the best of them (2-way
    candidates and multi-way plans alike)."""
    lines = [title, f"{'rank':>4} {label:<{width}} {'predicted':>9} {'actual':>7} {'error':>7}"]
    for rank, name, predicted, actual in rows:
        error = predicted - actual
        lines.append(f"{rank:>4} {name:<{width}} {predicted:>9.3f} {actual:>7.3f} {error:>+7.3f}")
    _, best, _, actual = max(rows, key=lambda r: r[3])
    lines.append(f"best verified: {best} (actual {actual:.3f})")
    return "\n".join(lines)


def format_plans(plans: Sequence[PlannedMerge]) -> str:
    if not plans:
        return "(no plans)"
    tasks = list(plans[0].per_task)
    lines = [
        f"multi-way plans for {', '.join(tasks)} ({plans[0].mode} mode, {plans[0].ranked_by} "
        "scores; predicted mean kept fraction of each task's expert)",
        f"{'#':>3} {'pred':>6} {'±':>6}  " + " ".join(f"{t[:8]:>8}" for t in tasks) + "  plan",
    ]
    for p in plans:
        cells = " ".join(f"{p.per_task[t]:>8.3f}" for t in tasks)
        flag = "  (unseen)" if p.in_distribution is False else ""
        lines.append(
            f"{p.rank:>3} {p.predicted:>6.3f} {p.uncertainty:>6.3f}  {cells}  {p.plan.id}{flag}"
        )
    outside = sum(p.in_distribution is False for p in plans)
    if outside:
        lines.append(
            f"! {outside} of {len(plans)} plans are unlike the plans the plan model was trained "
            "on (unseen): their predictions are extrapolations. Verify the top k (simmerge plan "
            "... --verify --k 3) before you trust the order."
        )
    return "\n".join(lines)


def format_plan_verify(report: PlanVerifyReport) -> str:
    rows = [(v.rank, v.candidate, v.predicted, v.actual) for v in report.verified]
    return format_verified(
        f"verified multi-way plans for {', '.join(report.tasks)}", "plan", 60, rows
    )


def format_scan(result: ScanResult) -> str:
    lines = [f"scan -> {result.out_dir}"]
    from simmerge.scanning.pipeline import STAGES

    for stage in (*STAGES[:4], "ranking_pairs", "ranking_plans", *STAGES[4:]):
        if stage in result.seconds:
            lines.append(f"  {stage:<14} {result.seconds[stage]:8.2f} s")
        elif stage in result.skipped:
            lines.append(f"  {stage:<14} {'(done)':>8}")
    outputs: Sequence[Path | None] = (result.features, result.ranking, result.report)
    lines += [f"  wrote {p.name}" for p in outputs if p is not None]
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    lines = ["experts (own task):", f"{'expert':>14} {'task':>12} {'expert':>7} {'base':>6}"]
    for e in report["experts"]:
        lines.append(
            f"{e['name']:>14} {e['task']:>12} {e['expert_score']:>7.2f} {e['base_score']:>6.2f}"
        )
    for task, scores in (report.get("general") or {}).items():
        lines.append(
            f"general ability ({task}, token accuracy on the base's own continuations): "
            + ", ".join(f"{n} {v:.2f}" for n, v in scores.items())
        )
    k = report["k"]
    general = any(c.get("kept_general") for p in report["pairs"] for c in p["top"])
    lines += [
        "",
        f"ranked merges, top {k} verified (normalized score = merge score / expert score, "
        "mean over the pair's tasks):",
        f"{'pair':>26} {'#':>2} {'candidate':<38} {'pred':>6} {'±':>5} {'actual':>6}"
        + (f" {'general kept':>12}" if general else ""),
    ]
    for p in report["pairs"]:
        for c in p["top"]:
            pair = f"{p['a']} + {p['b']}" if c["rank"] == 1 else ""
            kept = c.get("kept_general") or {}
            lines.append(
                f"{pair:>26} {c['rank']:>2} {c['candidate']:<38} {c['predicted']:>6.2f} "
                f"{c['uncertainty']:>5.2f} {c['actual']:>6.2f}"
                + (f" {sum(kept.values()) / len(kept):>12.2f}" if kept else "")
            )
    if report.get("exhaustive"):
        lines += [
            "",
            f"best of the top {k} ({k} merges) vs best of the whole grid (exhaustive):",
            f"{'pair':>26} {'chosen':<38} {'actual':>6} {'exhaustive best':<38} {'actual':>6} "
            f"{'its rank':>8}",
        ]
        for p in report["pairs"]:
            lines.append(
                f"{p['a'] + ' + ' + p['b']:>26} {p['chosen']:<38} {p['chosen_actual']:>6.2f} "
                f"{p['oracle']:<38} {p['oracle_actual']:>6.2f} {p['oracle_predicted_rank']:>8}"
            )
    fixed = [p for p in report["pairs"] if p.get("best_fixed")]
    if fixed:
        lines += [
            "",
            f"best of the top {k} vs always making the predictor's best fixed merge "
            f"({fixed[0]['best_fixed']}, best on its training data):",
            f"{'pair':>26} {'chosen':<38} {'actual':>6} {'best fixed':>10}",
        ]
        for p in fixed:
            lines.append(
                f"{p['a'] + ' + ' + p['b']:>26} {p['chosen']:<38} {p['chosen_actual']:>6.2f} "
                f"{p['best_fixed_actual']:>10.2f}"
            )
    if report.get("predictor_training"):
        lines.append(f"(predictor trained on: {', '.join(report['predictor_training'])})")
    mw = report.get("multiway")
    if mw:
        top = mw["plans"][0]
        lines += [
            "",
            f"multi-way merge for {', '.join(mw['tasks'])} (top {len(mw['verified'])} plans "
            "merged and evaluated; normalized by the best expert of each task):",
            f"  top plan: {top['plan']}",
            "  "
            + "  ".join(
                f"{t}: predicted {top['per_task'][t]:.2f}, actual {mw['actual_per_task'][t]:.2f}"
                for t in mw["tasks"]
            ),
            f"  mean: predicted {top['predicted']:.2f}, actual {mw['actual']:.2f}",
        ]
        for v in mw["verified"]:
            lines.append(
                f"  rank {v['rank']}: predicted {v['predicted']:.2f}, actual {v['actual']:.2f}  "
                f"{v['candidate']}"
            )
        lines.append(f"  best verified: {mw['best_verified']}")
    return "\n".join(lines)
