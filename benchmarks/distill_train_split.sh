#!/usr/bin/env bash
# Issue #41's train-split figure: three teachers, their ensemble, and one student distilled from
# them, all on recipes/tiny_vipriors_tuned.py's 14-epoch schedule (the shorter schedule the issue
# allows), trained on the train split and scored on all of val at the last epoch.
#   bash benchmarks/distill_train_split.sh [OUT]      (default OUT: runs/distill_train)
# The plain single model is teacher s0: the student has its model, seed and schedule, and differs
# only by the distillation term (w 0.9, T 1, the three teachers on the student's own batches).
# Every run goes through `fastvip run --resume`: a finished one is left as it is, a cut-off one resumes.
set -euo pipefail
OUT=${1:-runs/distill_train}
FASTVIP=${FASTVIP:-fastvip}
RECIPE=recipes/tiny_vipriors_tuned.py
DATA="train_data=data/tiny-vipriors/train.beton val_data=data/tiny-vipriors/val.beton"

run() {  # run DIR SETS...: --resume finishes a cut-off run, leaves a finished one as it is, starts a new one
    local dir=$1; shift
    $FASTVIP run $RECIPE --out "$dir" --quiet --set $DATA "$@" --resume
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
