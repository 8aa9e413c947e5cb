#!/usr/bin/env bash
# make demo: digits -> pack -> run -> predict -> score, all through the fastvip CLI.
set -euo pipefail
OUT=${1:-demo_out}
rm -rf "$OUT/run"
python tools/make_digits.py "$OUT/images"
for split in train val test; do
    fastvip pack "$OUT/images/$split" "$OUT/$split.beton" --force --quiet
done
fastvip run recipes/demo_digits.py --out "$OUT/run" \
    --set train_data="$OUT/train.beton" val_data="$OUT/val.beton"
fastvip predict "$OUT/run" "$OUT/test.beton" --submission "$OUT/submission.csv"
echo "demo: test-set score of $OUT/submission.csv"
fastvip score "$OUT/submission.csv" "$OUT/images/test_labels.csv"
