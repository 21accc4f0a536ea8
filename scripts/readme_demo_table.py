"""The README's Quickstart table, from a demo report (``simmerge demo --report``).

    python scripts/readme_demo_table.py runs/demo.json --save scripts/results/demo_smol-small.json
    python scripts/readme_demo_table.py scripts/results/demo_smol-small.json --write-readme

Prints a Markdown table of the demo's ranked and verified merges (predicted vs measured, the
predictor's best fixed merge beside them) and its multi-way plan. ``--save`` keeps the report
under ``scripts/results/`` (the README's numbers come from that file); ``--write-readme``
replaces the block between the ``demo-table`` markers of README.md with the table. The test
suite checks that the README's block is what this script makes of the saved report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- demo-table:begin -->", "<!-- demo-table:end -->"


def table(report: dict[str, Any]) -> str:
    lines = [
        "| pair | rank | candidate | predicted | measured |",
        "|---|---:|---|---:|---:|",
    ]
    for p in report["pairs"]:
        for c in p["top"]:
            pair = f"{p['a']} + {p['b']}" if c["rank"] == 1 else ""
            lines.append(
                f"| {pair} | {c['rank']} | `{c['candidate']}` | "
                f"{c['predicted']:.2f} ± {c['uncertainty']:.2f} | {c['actual']:.2f} |"
            )
        if p.get("best_fixed") and p["best_fixed"] not in {c["candidate"] for c in p["top"]}:
            lines.append(f"| | best fixed | `{p['best_fixed']}` | | {p['best_fixed_actual']:.2f} |")
    mw = report.get("multiway")
    if mw:
        top = mw["plans"][0]
        lines.append(
            f"| {' + '.join(mw['tasks'])} (multi-way) | 1 | `{top['plan']}` | "
            f"{top['predicted']:.2f} | {mw['actual']:.2f} |"
        )
    errors = [abs(c["predicted"] - c["actual"]) for p in report["pairs"] for c in p["top"]]
    lines += [
        "",
        f"Mean absolute error of the verified predictions: {sum(errors) / len(errors):.2f}. "
        f"Catalog `{report['catalog']}`; predictor trained on "
        f"{', '.join(report.get('predictor_training') or ['?'])}.",
    ]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def readme_block(text: str) -> str:
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("report", help="a demo report (simmerge demo --report PATH)")
    p.add_argument("--save", default=None, help="copy the report here (scripts/results/...)")
    p.add_argument("--write-readme", action="store_true", help="update README.md's table")
    args = p.parse_args(argv)
    report = json.loads(Path(args.report).read_text())
    if args.save:
        shutil.copyfile(args.report, args.save)
    block = table(report)
    print(block)
    if args.write_readme:
        readme = ROOT / "README.md"
        readme.write_text(replace_block(readme.read_text(), block))
    return 0


if __name__ == "__main__":
    sys.exit(main())
