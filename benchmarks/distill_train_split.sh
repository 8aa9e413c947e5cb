#!/usr/bin/env bash
# Issue #41's train-split figure: three teachers, their ensemble, and one student distilled from
# them, all on recipes/tiny_vipriors_tuned.py's 14-epoch schedule (the shorter schedule the issue
# allows), trained on the train split and scored on all of val at the last epoch.
#   bash benchmarks/distill_train_split.sh [OUT]      (default OUT: runs/distill_train)
# The plain single model is teacher s0: the student has its model, seed and schedule, and differs
# only by the distillation term (w 0.9, T 1, the three teachers on the student's own batches).
# A finished run is skipped; a cut-off one resumes.
set -euo pipefail
OUT=${1:-runs/distill_train}
FASTVIP=${FASTVIP:-fastvip}
PYTHON=${PYTHON:-python}
RECIPE=recipes/tiny_vipriors_tuned.py
DATA="train_data=data/tiny-vipriors/train.beton val_data=data/tiny-vipriors/val.beton"

run() {  # run DIR SETS...: train unless DIR holds a finished run
    local dir=$1; shift
    if [[ -f $dir/metrics.jsonl ]] && $PYTHON - "$dir" <<'PY'
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
done = [r["epoch"] for r in map(json.loads, d.joinpath("metrics.jsonl").read_text().splitlines())
        if r.get("event") == "epoch"]
sys.exit(0 if done and done[-1] >= json.loads(d.joinpath("recipe.json").read_text())["epochs"] else 1)
PY
    then echo "$dir: done"; return; fi
    local resume=()
    [[ -f $dir/last.pt ]] && resume=(--resume)
    $FASTVIP run $RECIPE --out "$dir" --quiet --set $DATA "$@" "${resume[@]}"
}

for s in 0 1 2; do run "$OUT/teacher_s$s" seed=$s; done
teachers="$OUT/teacher_s0/last.pt,$OUT/teacher_s1/last.pt,$OUT/teacher_s2/last.pt"  # last epoch
run "$OUT/student_s0" seed=0 teachers=$teachers distill_weight=0.9 distill_temperature=1.0

# val top-1 of the last epoch's weights: each teacher, their probability average, the student
for s in 0 1 2; do
    $FASTVIP predict "$OUT/teacher_s$s" data/tiny-vipriors/val.beton --weights last --quiet \
        --out "$OUT/val_teacher_s$s.npz"
done
$FASTVIP ensemble "$OUT"/val_teacher_s{0,1,2}.npz --submission "$OUT/val_ensemble.csv" --quiet
$FASTVIP predict "$OUT/student_s0" data/tiny-vipriors/val.beton --weights last --quiet \
    --out "$OUT/val_student_s0.npz"
