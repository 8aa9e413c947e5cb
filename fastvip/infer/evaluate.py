"""Forward passes over an eval loader: accuracy for validation, probabilities for predict."""
from __future__ import annotations

from typing import Iterator

import torch

from fastvip.methods.augment import normalize
from fastvip.distributed import all_reduce_sum
from fastvip.methods.model import autocast


@torch.no_grad()
def logits_batches(model, loader, device, amp, channels_last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(float32 logits, labels)`` per batch, in the loader's (file) order."""
    model.eval()
    for images, labels in loader:
        with autocast(device, amp):
            logits = model(normalize(images, channels_last=channels_last))
        yield logits.float(), labels


def evaluate(model, loader, device, amp, channels_last: bool) -> dict:
    """Top-1 / top-5 accuracy (in %) over every sample of ``loader`` exactly once.

    Under torchrun each process evaluates its own (uneven) shard and the counts are
    summed over processes, so every validation sample counts exactly once."""
    correct1 = torch.zeros((), dtype=torch.long, device=device)
    correct5 = torch.zeros((), dtype=torch.long, device=device)
    seen = torch.zeros((), dtype=torch.long, device=device)
    for logits, labels in logits_batches(model, loader, device, amp, channels_last):
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == labels[:, None]
        correct1 += hits[:, 0].sum()
        correct5 += hits.any(dim=1).sum()
        seen += labels.numel()
    counts = all_reduce_sum(torch.stack([correct1, correct5, seen]).float()).tolist()
    c1, c5, n = counts[0], counts[1], int(counts[2])
    if n == 0:
        return {"top1": float("nan"), "top5": float("nan"), "n": 0}
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "n": n}
