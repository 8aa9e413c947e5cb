"""Write scikit-learn's digits as a VIPriors-shaped JPEG tree (no downloads).

OUT/train/digit_<k>/*.JPEG, OUT/val/digit_<k>/*.JPEG, OUT/test/imgs/img_<i>.JPEG,
and OUT/test_labels.csv (the submission format) kept apart from the images.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--per-class", type=int, default=60, help="train and val images per class")
    ap.add_argument("--size", type=int, default=32, help="side of the written images")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    test = []
    for k in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == k))
        parts = {"train": idx[:args.per_class], "val": idx[args.per_class:2 * args.per_class]}
        for split, members in parts.items():
            folder = out / split / f"digit_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in members:
                _save(digits.images[i], folder / f"digit_{k}_{i}.JPEG", args.size)
        test += [(i, k) for i in idx[2 * args.per_class:]]
    order = rng.permutation(len(test))
    (out / "test" / "imgs").mkdir(parents=True, exist_ok=True)
    with open(out / "test_labels.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("Image IDs", "Predictions"))
        for n, j in enumerate(order):
            i, k = test[j]
            _save(digits.images[i], out / "test" / "imgs" / f"img_{n}.JPEG", args.size)
            w.writerow((f"img_{n}.JPEG", k))
    print(f"wrote {out}: 10 classes, {args.per_class} train + {args.per_class} val per class, "
          f"{len(test)} test images")


def _save(image8x8: np.ndarray, path: Path, size: int) -> None:
    gray = (image8x8 / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(gray, "L").resize((size, size), Image.BICUBIC).convert("RGB")
    img.save(path, quality=95)


if __name__ == "__main__":
    main()
