#!/usr/bin/env bash
# Regenerate the second family's outcome table (features/gemma-small) and its transfer rows:
# build the small Gemma 3 270M catalog (simmerge zoo build --recipe gemma: 4 experts), collect
# every (ordered expert pair x candidate of the default grid) outcome, compute the pair
# features, and evaluate the shipped predictors on it without retraining (the SmolLM2-trained
# models/default and the tiny-zoo one), then the same for multi-way plans (the shipped plan
# model). Every step is cached or resumable: rerun the script after an interruption. About
# two hours on 2 CPU cores (features/DATASHEET.md); on a GPU machine, pass DEVICE=cuda.
set -euo pipefail
cd "$(dirname "$0")/.."
ZOO=${ZOO:-runs/gemma-small}
PY=${PY:-.venv/bin/python}
SIMMERGE=${SIMMERGE:-.venv/bin/simmerge}
DEVICE=${DEVICE:-cpu}
"$SIMMERGE" zoo build --recipe gemma --out "$ZOO" --device "$DEVICE"
export OMP_NUM_THREADS=1  # the build uses every core; the collectors one each
# one single-threaded collector per core, each on its own shard of the pairs, one store
SHARDS=${SHARDS:-2}
pids=()
for ((k = 0; k < SHARDS; k++)); do
    "$SIMMERGE" collect "$ZOO/catalog.yaml" --store "$ZOO/outcomes.sqlite" --shard "$k/$SHARDS" \
        --device "$DEVICE" --quiet &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
"$SIMMERGE" collect "$ZOO/catalog.yaml" --store "$ZOO/outcomes.sqlite" --device "$DEVICE" --quiet
"$PY" scripts/build_training_data.py "$ZOO/catalog.yaml" --store "$ZOO/outcomes.sqlite" \
    --out features/gemma-small
for predictor in default tiny-zoo; do
    "$PY" scripts/evaluate_transfer.py --predictor "models/$predictor" --data features/gemma-small
done
# multi-way: every plan of the bounded space of each 3-task set (plans of <= 3 experts), two
# shard processes on one resumable score cache, then the report with the tiny-zoo plan model
# (models/multiway-tiny-zoo, by scripts/regenerate_plan_model.sh; its step predictor
# models/tiny-zoo) and its table. The default plan model (models/multiway) is fitted on this
# table too, so it is no transfer row here (scripts/regenerate_multiway_smol.sh)
cache=runs/multiway/gemma-small.jsonl
pids=()
for k in 0 1; do
    "$PY" scripts/evaluate_multiway.py "$ZOO/catalog.yaml" --sample 0 --cache "$cache" \
        --shard "$k/2" --modes fast --rankers analytic --predictor models/tiny-zoo --quiet &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
"$PY" scripts/evaluate_multiway.py "$ZOO/catalog.yaml" --sample 0 --cache "$cache" --modes fast \
    --rankers analytic,model --plan-model multiway-tiny-zoo --predictor models/tiny-zoo --quiet \
    --data-out features/multiway/gemma-small.parquet \
    --json scripts/results/evaluate_multiway_gemma-small.json
