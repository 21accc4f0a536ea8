"""Budgeted verification (successive halving over the ranking) on the default tiny zoo:
full-fidelity scores equal collection's, partial scores are the prefix of the fixed shuffle,
the budget holds, and only fully measured candidates reach the store."""

from __future__ import annotations

import pytest

GRID = ("linear", "task_arithmetic[lambda=0.5]", "task_arithmetic[lambda=1]", "ties[density=0.5]")


@pytest.fixture(scope="module")
def zoo(tiny_zoo, tmp_path_factory):
    """The default tiny zoo (its experts score well above zero) and one pair's ranking."""
    from simmerge.catalog import Catalog
    from simmerge.merging.grid import OperatorConfig
    from simmerge.pairwise.rank import rank_merges
    from simmerge.signals.profiles import FeatureOptions

    catalog = Catalog.load(tiny_zoo / "catalog.yaml")
    options = FeatureOptions(cache_dir=tmp_path_factory.mktemp("budget-cache"))
    ranked = rank_merges(
        catalog,
        ["reverse_a", "sort_a"],
        top=None,
        grid=tuple(OperatorConfig.from_id(i) for i in GRID),
        options=options,
    )
    return {"catalog": catalog, "ranked": ranked, "options": options, "path": tiny_zoo}


def test_example_order_is_a_fixed_shuffle_of_the_eval_set(zoo):
    from simmerge.evaluation.scorer import MergeScorer

    one, two = MergeScorer(zoo["catalog"]), MergeScorer(zoo["catalog"])
    for task in ("reverse", "sort"):
        order = one.example_order(task)
        assert sorted(order) == list(range(len(one.tasks[task].examples)))
        assert order == two.example_order(task)
        assert order != tuple(sorted(order))  # 100 examples: not left in file order


def test_a_budget_that_covers_everything_measures_what_collection_measured(zoo, tmp_path):
    from simmerge.outcomes.store import OutcomeStore
    from simmerge.pairwise.budgeted import verify_budgeted
    from simmerge.pairwise.verify import verify

    catalog, ranked = zoo["catalog"], zoo["ranked"]
    store = tmp_path / "b.sqlite"
    report = verify_budgeted(catalog, ranked, 100_000, store=store)
    full = {v.candidate: v for v in verify(catalog, ranked, k=len(ranked)).verified}
    # linear and task arithmetic at 1/2 are one merge of two experts: 3 distinct candidates
    assert len(report.scored) == 3 == len(full) and report.skipped
    assert all(s.full for s in report.scored)
    for s in report.scored:
        assert s.measured == pytest.approx(full[s.candidate].actual)
    assert max(v.actual for v in full.values()) > 0.2  # scores worth comparing
    assert report.winner == max(report.scored, key=lambda s: (s.measured, -s.rank)).candidate
    assert report.spent <= report.budget
    with OutcomeStore(store) as db:
        assert len(db) == 3 * 2  # every candidate fully measured, 2 tasks each


def test_a_small_budget_scores_prefixes_of_the_shuffle_and_records_nothing_partial(zoo, tmp_path):
    from dataclasses import replace

    from simmerge.evaluation.harness import evaluate
    from simmerge.evaluation.scorer import MergeScorer, normalized, reference_score
    from simmerge.merging import merge
    from simmerge.outcomes.store import OutcomeStore
    from simmerge.pairwise.budgeted import verify_budgeted

    catalog, ranked = zoo["catalog"], zoo["ranked"]
    scorer = MergeScorer(catalog)
    store = tmp_path / "small.sqlite"
    report = verify_budgeted(catalog, ranked, 120, store=store, scorer=scorer)
    assert report.spent <= 120
    assert [r.candidates for r in report.rungs] == [3, 2]  # 3 distinct merges, then 2
    assert report.rungs[-1].examples < 100  # not one candidate saw the whole eval set
    assert len(report.survivors[1]) == 2
    assert not any(s.full for s in report.scored)
    assert any(s.measured > 0 for s in report.scored)
    with OutcomeStore(store) as db:
        assert len(db) == 0
    refs = scorer.expert_scores(report.tasks)
    a, b = (catalog.model(n) for n in report.models)
    for s in report.scored:
        config = next(c for c in ranked if c.candidate == s.candidate).config
        state = merge(config.plan(str(catalog.base.path), str(a.path), str(b.path)))
        per_task = []
        for t in report.tasks:
            task = scorer.tasks[t]
            keep = scorer.example_order(t)[: s.examples]
            part = replace(task, examples=tuple(task.examples[i] for i in keep))
            raw = evaluate(state, part, reference_dir=catalog.base.path).score
            per_task.append(normalized(raw, reference_score(catalog, refs, t, report.models)))
        assert s.measured == pytest.approx(sum(per_task) / len(per_task))


def test_verify_cli_refuses_both_k_and_budget(zoo, capsys):
    from simmerge.cli import main
    from simmerge.cli.main import EXIT_BAD_INPUT

    argv = ["verify", str(zoo["path"] / "catalog.yaml"), "--models", "reverse_a,sort_a"]
    argv += ["--k", "2", "--budget", "40"]
    assert main(argv) == EXIT_BAD_INPUT
    assert "--k or --budget" in capsys.readouterr().err


def test_verify_cli_with_a_budget_prints_the_halving(zoo, capsys):
    import json

    from simmerge.cli import main

    argv = ["verify", str(zoo["path"] / "catalog.yaml"), "--models", "reverse_a,sort_a"]
    argv += ["--budget", "400", "--cache-dir", str(zoo["options"].cache_dir)]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["spent"] <= 400 and out["winner"] in {s["candidate"] for s in out["scored"]}
    assert main(argv) == 0
    assert "budgeted verification of reverse_a + sort_a" in capsys.readouterr().out


def test_the_halving_leans_on_predictions_only_inside_the_predictors_domain(zoo):
    from dataclasses import replace

    from simmerge.pairwise.budgeted import prior_of

    ranked = zoo["ranked"]
    inside = [replace(c, in_distribution=True) for c in ranked]
    assert prior_of(inside) == {c.candidate: c.predicted for c in ranked}
    outside = [*inside[:-1], replace(inside[-1], in_distribution=False)]
    assert prior_of(outside) is None
