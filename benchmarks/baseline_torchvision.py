"""The obvious baseline for the accuracy benchmark: torchvision ImageFolder + DataLoader + timm.

The script a competent user writes before reaching for fastvip. It trains a timm model from scratch
on ``DATA/train/<class>/*`` and reports validation top-1 on ``DATA/val/<class>/*`` after every epoch:
SGD (momentum 0.9, Nesterov, weight decay 5e-4), one linear warm-up epoch then cosine to zero,
cross-entropy with label smoothing 0.1, RandomResizedCrop + flip for training, resize + centre crop
for evaluation, bf16 autocast and channels-last on a GPU.

    python benchmarks/baseline_torchvision.py --data data/tiny-vipriors-src --minutes 15 \\
        --json baseline.json --submission baseline.csv

``DATA`` is a ``fastvip split`` output; for the tiny-vipriors proxy, from Tiny ImageNet
(``tiny-imagenet-200``): ``fastvip split tiny-imagenet-200 data/tiny-vipriors-src --per-class 50
--seed 0 --test-labels data/tiny-vipriors-test-labels.csv`` (the labels file scores the
submission: ``fastvip score baseline.csv data/tiny-vipriors-test-labels.csv``).

``--minutes M`` is a wall-time budget: the first epoch (training + validation) is timed and the run
gets as many epochs as fit in M minutes; the warm-up takes exactly that first epoch, so the cosine
schedule spans the epochs actually run. ``--submission`` predicts ``DATA/test`` (``test/imgs/img_<i>.JPEG``)
into the VIPriors CSV that ``fastvip score`` reads: ``Image IDs,Predictions``, the id being the file
name (as ``fastvip pack`` stores it), the class index in sorted-folder order.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import time
from pathlib import Path

import timm
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class TestImages(Dataset):
    """Unlabelled images anywhere under ``root``, in natural order; yields (image, index)."""

    def __init__(self, root: Path, transform):
        natural = lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]
        self.files = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS), key=natural)
        self.transform = transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB")), i


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="folder with train/ and val/ class folders (and test/)")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="wall-time budget for training + validation")
    budget.add_argument("--epochs", type=int, help="fixed number of epochs")
    p.add_argument("--model", default="resnet18", help="timm model name (from scratch)")
    p.add_argument("--res", type=int, default=64, help="training crop size")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.2, help="peak learning rate at --batch-size")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader worker processes")
    p.add_argument("--limit-batches", type=int, default=0, help="train/val batches per epoch (smoke tests); 0 = all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--submission", help="write a VIPriors submission CSV for DATA/test")
    p.add_argument("--json", help="write the result object here")
    args = p.parse_args()
    if (args.minutes is not None and args.minutes <= 0) or (args.epochs is not None and args.epochs < 1):
        p.error("--minutes must be > 0 and --epochs >= 1")
    return args


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to 0 at step ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


@torch.no_grad()
def predict(model, loader, device, amp, limit=0):
    """Yield (predicted classes, second item of the batch) over ``loader``."""
    model.eval()
    for b, (x, y) in enumerate(loader):
        if limit and b >= limit:
            break
        x = x.to(device, non_blocking=True, memory_format=torch.channels_last if amp else torch.contiguous_format)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            yield model(x).argmax(1).cpu(), y


def main():
    args = parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.type == "cuda"
    data = Path(args.data)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(args.res, scale=(0.35, 1.0)),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                   transforms.Normalize(MEAN, STD)])
    eval_tf = transforms.Compose([transforms.Resize(round(args.res / 0.875)), transforms.CenterCrop(args.res),
                                  transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    train_set = datasets.ImageFolder(data / "train", train_tf)
    val_set = datasets.ImageFolder(data / "val", eval_tf)
    if val_set.classes != train_set.classes:
        raise SystemExit("error: train/ and val/ have different class folders")
    loader_kw = {"batch_size": args.batch_size, "num_workers": args.workers, "pin_memory": amp,
                 "persistent_workers": args.workers > 0}
    train_loader = DataLoader(train_set, shuffle=True, drop_last=True,
                              generator=torch.Generator().manual_seed(args.seed), **loader_kw)
    val_loader = DataLoader(val_set, shuffle=False, **loader_kw)

    model = timm.create_model(args.model, num_classes=len(train_set.classes)).to(device)
    if amp:
        model = model.to(memory_format=torch.channels_last)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=args.weight_decay)
    steps = min(len(train_loader), args.limit_batches or len(train_loader))
    # --minutes: the epoch count is known after epoch 1, which is the warm-up; the cosine spans the rest
    plan = {"epochs": args.epochs or 1}
    warmup = steps if args.minutes or args.epochs >= 5 else max(1, steps * args.epochs // 5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, steps * plan["epochs"]))

    history, ends, train_images, train_s = [], [], 0, 0.0
    t0 = time.perf_counter()
    epoch = 0
    while epoch < plan["epochs"]:
        model.train()
        t_train, loss_sum = time.perf_counter(), 0.0
        for b, (x, y) in enumerate(train_loader):
            if b >= steps:
                break
            x = x.to(device, non_blocking=True, memory_format=torch.channels_last if amp else torch.contiguous_format)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = criterion(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item()
            train_images += len(x)
        train_s += time.perf_counter() - t_train
        pairs = list(predict(model, val_loader, device, amp, args.limit_batches))
        top1 = 100.0 * sum(int((p == y).sum()) for p, y in pairs) / max(1, sum(len(y) for _, y in pairs))
        history.append(top1)
        ends.append(time.time())  # wall clock, for time-to-accuracy curves
        epoch += 1
        if args.minutes and epoch == 1:
            plan["epochs"] = max(1, int(args.minutes * 60 // (time.perf_counter() - t0)))
            print(f"epoch 1 took {time.perf_counter() - t0:.1f} s: {plan['epochs']} epochs fit in "
                  f"{args.minutes:g} min", flush=True)
        print(f"epoch {epoch}/{plan['epochs']} loss {loss_sum / steps:.3f} val_top1 {top1:.2f}% "
              f"lr {opt.param_groups[0]['lr']:.4f} {train_images / train_s:,.0f} img/s "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    wall_s = time.perf_counter() - t0

    result = {"model": args.model, "epochs": plan["epochs"], "minutes": args.minutes, "val_top1": history[-1],
              "wall_s": round(wall_s, 2), "img_per_s": round(train_images / train_s, 1),
              "val_top1_per_epoch": history, "epoch_end_time": ends, "batch_size": args.batch_size, "lr": args.lr, "res": args.res,
              "val_n": len(val_set), "device": str(device), "threads": args.threads, "workers": args.workers,
              "limit_batches": args.limit_batches}
    print(f"final val_top1 {history[-1]:.2f}% after {plan['epochs']} epochs, {wall_s:.0f} s, "
          f"{result['img_per_s']:,.0f} img/s training")
    if args.submission:
        test_set = TestImages(data / "test", eval_tf)
        if not len(test_set):
            raise SystemExit(f"error: no test images under {data / 'test'}")
        rows = [(test_set.files[i].name, int(p)) for ps, idx in
                predict(model, DataLoader(test_set, **loader_kw), device, amp) for p, i in zip(ps, idx)]
        tmp = Path(f"{args.submission}.tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows([("Image IDs", "Predictions"), *rows])
        os.replace(tmp, args.submission)
        print(f"wrote {args.submission} ({len(rows)} rows)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
