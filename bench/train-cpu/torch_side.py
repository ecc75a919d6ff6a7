#!/usr/bin/python3
"""The PyTorch half of the CPU training benchmark.

Usage: /usr/bin/python3 bench/train-cpu/torch_side.py --threads T --seconds S [--rows a,b]

For each row, trains the model of tests/golden/gen_golden.py (imported, so
both halves of the benchmark train the very same networks) with Adam (lr
1e-3) on one fixed random batch of the right shape, and prints one JSON line:
  {"row": ..., "samples_per_s": ..., "threads": T, "batch": B, "steps": n, "seconds": t}
Denormals are flushed to zero (torch.set_flush_denormal(True)), as the
engine's kernels run: both sides do the same arithmetic.
A step is what a training loop does per batch: zero_grad, forward, the mean
cross-entropy loss (no l2 term), backward, optimiser step.  After a warm-up
(which also lets Adam allocate its state) steps are timed back to back for
about S seconds; the rate counts whole steps only.

Rows:
  confA-dense   mlp 7306 -> 1000 -> 500 -> 2, fc0 an nn.Linear on a dense
                float multi-hot tensor (39 ones a row), batch 256
  confA-sparse  the same mlp with fc0 = embedding_bag(mode='sum') + bias on
                39 int32 indices a row (dense gradients, PyTorch's default),
                batch 256
  confA-sparse-lazy  the same with embedding_bag(sparse=True): fc0.weight
                gets a sparse gradient and torch.optim.SparseAdam, every
                other parameter Adam (both lr 1e-3), batch 256
  cnn           the small cnn on 1x28x28, 10 classes, batch 64
  resnet18      resnet18 (torchvision v1.5 layout) on 3x32x32, width 1,
                10 classes, batch 32
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "golden"))
import gen_golden  # noqa: E402

CONFA = {"hidden": [1000, 500], "classes": 2}
DIM, NNZ = 7306, 39

ROWS = [
    ("confA-dense", dict(CONFA, arch="mlp", input=[DIM]), 256),
    ("confA-sparse", dict(CONFA, arch="mlp", sparse={"dim": DIM, "nnz": NNZ}), 256),
    ("confA-sparse-lazy", dict(CONFA, arch="mlp", sparse={"dim": DIM, "nnz": NNZ}), 256),
    ("cnn", {"arch": "cnn", "input": [1, 28, 28], "classes": 10}, 64),
    ("resnet18", {"arch": "resnet18", "input": [3, 32, 32], "classes": 10, "width": 1.0}, 32),
]


def random_batch(row, spec, batch, gen):
    """The batch each row trains on; the dense confA row gets the multi-hot
    vectors of the same kind of indices the sparse row gets."""
    if row.startswith("confA"):
        idx = torch.stack([torch.randperm(DIM, generator=gen)[:NNZ] for _ in range(batch)])
        if "sparse" in spec:
            x = idx.to(torch.int32)
        else:
            x = torch.zeros(batch, DIM)
            x.scatter_(1, idx, 1.0)
    else:
        x = torch.randn([batch] + spec["input"], generator=gen)
    y = torch.randint(0, spec["classes"], (batch,), generator=gen)
    return x, y


def measure(row, spec, batch, threads, seconds):
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(2)
    model = gen_golden.build(spec).train()
    if row.endswith("-lazy"):
        model.fc0.sparse_grad = True
        emb = model.fc0.weight
        opts = [torch.optim.SparseAdam([emb], lr=1e-3),
                torch.optim.Adam([p for p in model.parameters() if p is not emb], lr=1e-3)]
    else:
        opts = [torch.optim.Adam(model.parameters(), lr=1e-3)]
    x, y = random_batch(row, spec, batch, gen)

    def step():
        for opt in opts:
            opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        for opt in opts:
            opt.step()

    warm_until = time.perf_counter() + min(2.0, max(0.5, seconds / 5))
    warm = 0
    while warm < 3 or time.perf_counter() < warm_until:
        step()
        warm += 1
    steps, t0 = 0, time.perf_counter()
    while True:
        step()
        steps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    return {"row": row, "samples_per_s": round(steps * batch / elapsed, 1), "threads": threads,
            "batch": batch, "steps": steps, "seconds": round(elapsed, 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--rows", default=",".join(r[0] for r in ROWS),
                    help="comma-separated subset of " + ", ".join(r[0] for r in ROWS))
    args = ap.parse_args()
    wanted = args.rows.split(",")
    unknown = set(wanted) - {r[0] for r in ROWS}
    if unknown:
        ap.error("unknown rows: " + ", ".join(sorted(unknown)))
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    for row, spec, batch in ROWS:
        if row in wanted:
            print(json.dumps(measure(row, spec, batch, args.threads, args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
