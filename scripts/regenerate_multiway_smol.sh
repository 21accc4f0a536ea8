#!/usr/bin/env bash
# Real multi-way plan outcomes on the SmolLM2 catalogs (features/multiway/smol-*.parquet) and
# the plan model's rows on them: every plan of the bounded space (2-3 experts, every order,
# task arithmetic lambda 0.7 or TIES 0.5 per step, one-shot merges) of each target task set,
# merged and evaluated on its tasks.
#   smol-small: all 4 sets of 3 of its 4 tasks (20 plans each);
#   smol-large: 6 sets of 3 of its 12 tasks (68 plans each), a seeded sample among the 54 of
#               220 sets whose bounded space has at most 68 plans (tasks with at most two
#               experts: a set over tasks with more experts has 160-840 plans).
# Then the tiny-zoo plan model without retraining (models/multiway-tiny-zoo) on each, and a
# plan model fitted on the tiny zoos plus the *other* real catalogs (leave one real catalog
# out) on each. The one without smol-small, the main job's catalog, is the default plan model
# models/multiway. Run scripts/regenerate_plan_model.sh and scripts/regenerate_gemma_transfer.sh
# first (the tiny zoos' and Gemma's tables). Shard processes share one resumable score cache
# per catalog: rerun the script after an interruption. Builds the catalogs first if they are
# missing (smol-large: most of an hour on 2 CPU cores); the measurements take about two and a
# half hours more on 2 cores (features/DATASHEET.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SIMMERGE=${SIMMERGE:-.venv/bin/simmerge}
export OMP_NUM_THREADS=1
"$SIMMERGE" zoo build --recipe smol --size large --out runs/smol-large --quiet
"$SIMMERGE" zoo build --recipe smol --size small --out runs/smol-small --quiet
declare -A SPACE=([smol-small]="--sample 0" [smol-large]="--max-space 68 --sample 6")
common=(--modes fast --predictor models/tiny-zoo --quiet)
for name in smol-large smol-small; do
    # shellcheck disable=SC2086  # SPACE holds several arguments
    space=(${SPACE[$name]})
    cache=runs/multiway/$name.jsonl
    pids=()
    for k in 0 1; do
        "$PY" scripts/evaluate_multiway.py "runs/$name/catalog.yaml" "${space[@]}" \
            --cache "$cache" --shard "$k/2" --rankers analytic "${common[@]}" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    # the table, and the tiny-zoo plan model on real plans: transfer rows
    "$PY" scripts/evaluate_multiway.py "runs/$name/catalog.yaml" "${space[@]}" --cache "$cache" \
        --rankers analytic,model --plan-model multiway-tiny-zoo "${common[@]}" \
        --data-out "features/multiway/$name.parquet" \
        --json "scripts/results/evaluate_multiway_$name.json"
done
# leave one real catalog out: the plan model fitted on every tiny zoo and the other real tables
tiny=(features/multiway/tiny-zoo.parquet features/multiway/tiny-zoo-s{1,2,3,4}.parquet)
for name in smol-small smol-large; do
    # shellcheck disable=SC2086
    space=(${SPACE[$name]})
    others=()
    for table in features/multiway/{gemma-small,smol-small,smol-large}.parquet; do
        [ "$table" = "features/multiway/$name.parquet" ] || others+=("$table")
    done
    model=runs/multiway/plan-model-without-$name
    [ "$name" = smol-small ] && model=models/multiway
    "$PY" scripts/train_plan_model.py "${tiny[@]}" "${others[@]}" --out "$model" \
        --test "features/multiway/$name.parquet"
    "$PY" scripts/evaluate_multiway.py "runs/$name/catalog.yaml" "${space[@]}" \
        --cache "runs/multiway/$name.jsonl" --rankers model --plan-model "$model" \
        "${common[@]}" --json "scripts/results/evaluate_multiway_${name}_real-plan-model.json"
done
# both catalogs' task sets pooled: the tiny-zoo plan model, then the leave-one-real-catalog-out one
R=scripts/results/evaluate_multiway
"$PY" scripts/pool_multiway.py "${R}_smol-small.json" "${R}_smol-large.json" \
    --json "${R}_smol_pooled.json"
"$PY" scripts/pool_multiway.py "${R}_smol-small_real-plan-model.json" \
    "${R}_smol-large_real-plan-model.json" --json "${R}_smol_real-plan-model_pooled.json"
