"""Run under torchrun by tests/test_distributed.py: each process saves what its loaders yield."""
import sys

import torch
import torch.distributed as dist

from fastvip.loaders import build_loader

train, val, out = sys.argv[1:4]
dist.init_process_group("gloo")
rank = dist.get_rank()
cpu = torch.device("cpu")
result = {}
for kind in ("ffcv", "dali", "resident"):
    common = dict(image_size=16, device=cpu, seed=5, workers=1)
    loader = build_loader(kind, train, train=True, batch_size=16, **common)
    loader.set_epoch(1)
    result[f"{kind}_train"] = [(x.clone(), y.clone()) for x, y in loader]
    pk = build_loader(kind, train, train=True, batch_size=16, pk=4, **common)
    pk.set_epoch(1)
    result[f"{kind}_pk"] = [y.clone() for _, y in pk]
    ev = build_loader(kind, val, train=False, batch_size=16, **common)
    result[f"{kind}_val"] = torch.cat([y.clone() for _, y in ev]), ev.num_samples
    if kind == "resident":  # where each process keeps the pixels
        result["resident_store"] = loader.store, ev.store
torch.save(result, f"{out}/rank{rank}.pt")
dist.destroy_process_group()
