#!/usr/bin/env bash
# Set up the environment and run the main job on the embedded default catalog (the tiny zoo):
# build the zoo (cached in runs/zoo; ~5 min the first time on 2 CPU cores), then for a few
# expert pairs rank the candidate merges with the shipped predictor and verify the top 3;
# finally scan the whole zoo (runs/scan: features, ranking, report.html with the demo's
# measured merges plotted against their predictions). Extra arguments go to `simmerge demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/simmerge demo --zoo runs/zoo --json runs/demo.json --store runs/demo-outcomes.sqlite "$@"
.venv/bin/simmerge scan runs/zoo/catalog.yaml --out runs/scan --store runs/demo-outcomes.sqlite
