#!/usr/bin/env bash
# Regenerate the tiny-zoo training data (features/zoo-large, features/zoo-default) and the
# tiny-zoo predictor (models/tiny-zoo, the plan model's step predictor; models/default is the
# real-model one, scripts/regenerate_real_predictor.sh): build the large and the default zoo, collect every (ordered expert pair x
# candidate) outcome, compute the pair features, evaluate the selector on held-out models and
# tasks of the large zoo (the default zoo's rows are training-only), and fit the predictor.
# Every step is cached or resumable: rerun the script after an interruption.
# About an hour on 2 CPU cores (see features/DATASHEET.md for measured times).
set -euo pipefail
cd "$(dirname "$0")/.."
ZOO=${ZOO:-runs/zoo-large}
# the main command's default zoo (reused when already built with the same recipe)
ZOO_DEFAULT=${ZOO_DEFAULT:-runs/zoo}
PY=${PY:-.venv/bin/python}
SIMMERGE=${SIMMERGE:-.venv/bin/simmerge}
OMP_NUM_THREADS=1 "$SIMMERGE" zoo build --size large --out "$ZOO"
# one single-threaded collector per core, each on its own shard of the pairs, one store
SHARDS=${SHARDS:-2}
pids=()
for ((k = 0; k < SHARDS; k++)); do
    OMP_NUM_THREADS=1 "$PY" scripts/collect_outcomes.py "$ZOO/catalog.yaml" \
        --store "$ZOO/outcomes.sqlite" --shard "$k/$SHARDS" --quiet &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
"$PY" scripts/collect_outcomes.py "$ZOO/catalog.yaml" --store "$ZOO/outcomes.sqlite" --quiet
"$PY" scripts/build_training_data.py "$ZOO/catalog.yaml" --store "$ZOO/outcomes.sqlite" \
    --out features/zoo-large
OMP_NUM_THREADS=1 "$SIMMERGE" zoo build --size default --out "$ZOO_DEFAULT"
"$PY" scripts/collect_outcomes.py "$ZOO_DEFAULT/catalog.yaml" \
    --store "$ZOO_DEFAULT/outcomes.sqlite" --quiet
"$PY" scripts/build_training_data.py "$ZOO_DEFAULT/catalog.yaml" \
    --store "$ZOO_DEFAULT/outcomes.sqlite" --out features/zoo-default
# the selector is evaluated, and the shipped predictor fitted, without the default zoo's rows:
# the main command's demo (which runs on the default zoo) then shows models it never saw, and
# as extra training data the default zoo lowered the held-out-model figures (README)
"$PY" scripts/evaluate_selector.py --data zoo-large
"$SIMMERGE" train --data zoo-large --out models/tiny-zoo
