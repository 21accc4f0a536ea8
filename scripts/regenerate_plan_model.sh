#!/usr/bin/env bash
# Regenerate the multi-way plan model (models/multiway), its training tables
# (features/multiway) and its evaluation: build the default zoo recipe with seeds 0 to 4,
# merge and evaluate every plan of each zoo's bounded multi-way space
# (scripts/evaluate_multiway.py: two shard processes sharing one resumable score cache per
# zoo), write the training tables (with the experts' single-model skills, simmerge.evaluation.skills),
# then for each zoo fit a plan model on the *other four* and evaluate the planner with it
# (leave one zoo out). The one fitted on seeds 1 to 4 is shipped as models/multiway-tiny-zoo
# (the default zoo, seed 0, stays unseen): the plan model of the transfer rows on real
# catalogs. The default plan model, models/multiway, is fitted on these tables plus real ones
# by scripts/regenerate_multiway_smol.sh (run it after this script).
# Every step is cached or resumable: rerun the script after an interruption. The tables hold
# the step predictions of the 2-way predictor models/tiny-zoo (the tiny-zoo-trained one, which
# the plan model's card names as its step_predictor): rerun after changing that predictor.
# About two hours on 2 CPU cores (measured times in features/DATASHEET.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SIMMERGE=${SIMMERGE:-.venv/bin/simmerge}
export OMP_NUM_THREADS=1
zoo_dir() { if [ "$1" = 0 ]; then echo runs/zoo; else echo "runs/zoo-s$1"; fi; }
zoo_name() { if [ "$1" = 0 ]; then echo tiny-zoo; else echo "tiny-zoo-s$1"; fi; }
SEEDS=(0 1 2 3 4)
for seed in "${SEEDS[@]}"; do
    zoo=$(zoo_dir "$seed")
    name=$(zoo_name "$seed")
    "$SIMMERGE" zoo build --seed "$seed" --out "$zoo"
    cache=runs/multiway/$name.jsonl
    pids=()
    for k in 0 1; do
        "$PY" scripts/evaluate_multiway.py "$zoo/catalog.yaml" --cache "$cache" --shard "$k/2" \
            --modes fast --rankers analytic --predictor models/tiny-zoo --quiet &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    "$PY" scripts/evaluate_multiway.py "$zoo/catalog.yaml" --cache "$cache" --modes fast \
        --rankers analytic --predictor models/tiny-zoo --quiet \
        --data-out "features/multiway/$name.parquet" \
        --json "runs/multiway/analytic_$name.json"
done
for seed in "${SEEDS[@]}"; do
    name=$(zoo_name "$seed")
    train=()
    for other in "${SEEDS[@]}"; do
        [ "$other" = "$seed" ] || train+=("features/multiway/$(zoo_name "$other").parquet")
    done
    model=runs/multiway/plan-model-without-$name
    [ "$seed" = 0 ] && model=models/multiway-tiny-zoo
    "$PY" scripts/train_plan_model.py "${train[@]}" --out "$model" \
        --test "features/multiway/$name.parquet"
    "$PY" scripts/evaluate_multiway.py "$(zoo_dir "$seed")/catalog.yaml" \
        --cache "runs/multiway/$name.jsonl" --plan-model "$model" --predictor models/tiny-zoo \
        --quiet
done
"$PY" scripts/pool_multiway.py
"$PY" scripts/explore_plan_model_variants.py
# the plan model's design was chosen on seeds 0-2: check it on the two zoos built afterwards
"$PY" scripts/explore_plan_model_variants.py --zoos tiny-zoo,tiny-zoo-s1,tiny-zoo-s2 \
    --holdout tiny-zoo-s3,tiny-zoo-s4
