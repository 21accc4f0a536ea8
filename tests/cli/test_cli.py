"""The command line's one convention (simmerge/cli/main.py): every command takes ``--json`` and
``--quiet`` and documents every option; ``--json`` puts exactly one JSON document on stdout;
exit status 2 is a usage error, 3 bad input, 130 an interruption (with how to resume), 1 a bug.
"""

from __future__ import annotations

import argparse
import json

import pytest

from simmerge.cli.main import EXIT_BAD_INPUT, EXIT_BUG, EXIT_INTERRUPTED, build_parser, main


def leaf_commands(parser: argparse.ArgumentParser, prefix=()):
    """(command words, parser) of every runnable command, subcommands included."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for name, sub in subs[0].choices.items():
        yield from leaf_commands(sub, (*prefix, name))


LEAVES = list(leaf_commands(build_parser()))


def test_the_command_list_is_what_the_docs_promise():
    names = {" ".join(words) for words, _ in LEAVES}
    assert names == {
        "merge", "eval", "zoo build", "zoo fetch-base", "demo", "features", "collect", "train",
        "rank", "verify", "plan", "bandit select", "bandit update", "bandit add-arm",
        "bandit remove-arm", "scan", "export",
    }  # fmt: skip


@pytest.mark.parametrize("words, parser", LEAVES, ids=[" ".join(w) for w, _ in LEAVES])
def test_every_command_takes_json_and_quiet_and_documents_every_option(words, parser):
    flags = {s for a in parser._actions for s in a.option_strings}
    assert {"--json", "--quiet"} <= flags
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help != argparse.SUPPRESS, (words, action.dest)
    json_action = next(a for a in parser._actions if "--json" in a.option_strings)
    assert json_action.nargs == 0  # a flag, never a file path


def test_plan_search_flags_come_from_the_one_settings_model():
    """`plan` and `scan` take the multi-way flags of PlanSearch, with its defaults, and the
    scan's settings and plan_merge default to the same values."""
    import inspect
    from dataclasses import fields

    from simmerge.multiway.search import plan_merge
    from simmerge.multiway.settings import PlanSearch
    from simmerge.scanning.pipeline import ScanSettings

    for argv in (["plan", "c.yaml", "--tasks", "t"], ["scan", "c.yaml", "--out", "o"]):
        args = build_parser().parse_args(argv)
        for f in fields(PlanSearch):
            assert getattr(args, f.name) == f.default, (argv[0], f.name)
    defaults = inspect.signature(plan_merge).parameters
    for f in fields(PlanSearch):
        assert getattr(ScanSettings(), f.name) == f.default == defaults[f.name].default


def test_comma_lists_are_parsed_once_and_empty_items_are_usage_errors(capsys):
    args = build_parser().parse_args(["rank", "c.yaml", "--models", " a , b"])
    assert args.models == ("a", "b")
    with pytest.raises(SystemExit) as exc:
        main(["rank", "c.yaml", "--models", "a,,b"])
    assert exc.value.code == 2 and "empty item" in capsys.readouterr().err


def test_bad_input_exits_3_with_one_line_and_no_traceback(tmp_path, capsys):
    assert main(["rank", str(tmp_path / "missing.yaml"), "--models", "a,b"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("simmerge: error: ") and "Fix:" in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_ctrl_c_in_a_resumable_command_exits_130_and_says_how_to_resume(
    tmp_path, capsys, monkeypatch
):
    import simmerge.catalog
    import simmerge.outcomes.collection

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(simmerge.catalog.Catalog, "load", classmethod(lambda cls, path: None))
    monkeypatch.setattr(simmerge.outcomes.collection, "expert_pairs", lambda c, m: [])
    monkeypatch.setattr(simmerge.outcomes.collection, "collect_outcomes", interrupted)
    store = tmp_path / "o.sqlite"
    assert main(["collect", "c.yaml", "--store", str(store)]) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "interrupted" in err and str(store) in err and "run the same command again" in err
    assert "Traceback" not in err


def test_an_unexpected_exception_exits_1_with_its_traceback(capsys, monkeypatch):
    import simmerge.catalog

    def broken(cls, path):
        raise RuntimeError("boom")

    monkeypatch.setattr(simmerge.catalog.Catalog, "load", classmethod(broken))
    assert main(["rank", "c.yaml", "--models", "a,b"]) == EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom" in err and "a bug" in err


def test_json_output_is_one_document_on_stdout(trained, tmp_path, capsys):
    """Cheap commands end to end: stdout parses as one JSON document of the documented shape
    (progress, when there is any, went to stderr)."""
    from simmerge.online.bandit import MergeBandit

    state = tmp_path / "bandit.json"
    MergeBandit(arms=("linear", "ties[density=0.5]")).save(state)
    assert main(["bandit", "add-arm", "--state", str(state), "slerp[t=0.3]", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["added"] == "slerp[t=0.3]" and "slerp[t=0.3]" in out["arms"]
    assert main(["bandit", "remove-arm", "--state", str(state), "linear", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["arms"]) == {"ties[density=0.5]", "slerp[t=0.3]"}

    store = tmp_path / "o.sqlite"
    argv = ["collect", str(trained["catalog_path"]), "--store", str(store)]
    argv += ["--candidates", "linear", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["merged"] >= 1 and out["store"] == str(store) and out["store_rows"] == out["rows"]

    feats = tmp_path / "f.parquet"
    argv = ["features", str(trained["catalog_path"]), "--out", str(feats), "--json", "--quiet"]
    argv += ["--cache-dir", str(trained["options"].cache_dir)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["out"] == str(feats) and out["rows"] > 0 and feats.is_file()
    assert captured.err == ""  # --quiet: no progress bars


def test_budgeted_verify_refuses_an_executor_before_any_work(capsys):
    argv = ["verify", "missing.yaml", "--models", "a,b", "--budget", "100", "--executor", "ray"]
    assert main(argv) == EXIT_BAD_INPUT  # before the catalog is even read
    assert "--budget runs in this process" in capsys.readouterr().err
