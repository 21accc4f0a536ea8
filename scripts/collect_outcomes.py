"""Collect merge outcomes for a catalog: every ordered expert pair x every candidate.

    python scripts/collect_outcomes.py CATALOG --store outcomes.sqlite [--candidates IDS]

Same as ``simmerge collect``. Resumable: rerun the same command after a crash or Ctrl-C and
only the missing (pair, candidate) jobs run. The training data in ``features/`` was made with
this script on the large zoo (see ``features/DATASHEET.md``).
"""

from __future__ import annotations

import sys

from simmerge.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["collect", *sys.argv[1:]]))
