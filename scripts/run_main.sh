#!/usr/bin/env bash
# Set up the environment and run the main job on the embedded default catalog (the tiny zoo):
# build the zoo (cached in runs/zoo; ~5 min the first time on 2 CPU cores), then merge and
# evaluate a few expert pairs with every operator. Extra arguments go to `simmerge demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/simmerge demo --zoo runs/zoo --json runs/demo.json "$@"
