#!/usr/bin/env bash
# Regenerate the real-model training data (features/smol-large) and the shipped predictor
# (models/default): build the large SmolLM2 catalog (simmerge zoo build --recipe smol --size
# large: 19 experts fine-tuned from SmolLM2-135M-Instruct), collect every (ordered expert pair x
# candidate) outcome, compute the pair features, evaluate the selector on held-out models and
# tasks, and fit the predictor. Every step is cached or resumable: rerun the script after an
# interruption. Many hours on 2 CPU cores (measured times in features/DATASHEET.md); on a GPU
# machine, pass DEVICE=cuda.
set -euo pipefail
cd "$(dirname "$0")/.."
ZOO=${ZOO:-runs/smol-large}
PY=${PY:-.venv/bin/python}
SIMMERGE=${SIMMERGE:-.venv/bin/simmerge}
DEVICE=${DEVICE:-cpu}
# the predictor's training sets: the real catalog alone (better held-out gap closure than with
# the tiny zoo added, docs/results/real.md), or TRAIN=smol-large,zoo-large
TRAIN=${TRAIN:-smol-large}
export OMP_NUM_THREADS=1
"$SIMMERGE" zoo build --recipe smol --size large --out "$ZOO" --device "$DEVICE"
# resume from the shipped table (SEED=0 measures everything again): the collectors skip what
# the store holds; scripts/seed_store.py first checks the rebuilt zoo's eval files and hash.
# Some experts train slightly differently on another CPU kind (features/DATASHEET.md): the
# table records the weight digests of the build it was measured on, and --drop-differing drops
# the experts whose digests differ from this build's, so that their pairs are measured again
# here and no table mixes two builds' rows of one expert.
if [ "${SEED:-1}" = 1 ] && [ -f features/smol-large/outcomes.parquet ]; then
    "$PY" scripts/seed_store.py features/smol-large --catalog "$ZOO/catalog.yaml" \
        --store "$ZOO/outcomes.sqlite" --drop-differing
fi
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
    --out features/smol-large
"$PY" scripts/evaluate_selector.py --data smol-large --distinct-top-k --no-remeasured
"$PY" scripts/evaluate_selector.py --data smol-large --extra zoo-large --distinct-top-k \
    --no-remeasured --json scripts/results/evaluate_selector_smol-large+zoo-large.json
"$SIMMERGE" train --data "$TRAIN" --out models/default
