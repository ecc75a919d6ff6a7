#!/usr/bin/python3
"""The PyTorch side of bench/modes: DDP (gloo) on the same shards.

Usage: /usr/bin/python3 bench/modes/torch_ddp.py --data DATASET_DIR --configs JSON --epochs E

Two processes (torch.multiprocessing, backend gloo on 127.0.0.1, one thread
each, as the workers of the other side) train each configuration of
--configs (a JSON list of {"model": ..., "train": ...} specs, the sweep's
own) one after another, for E epochs: rank r reads the train shard r that
cds-etl wrote (x.npy, y.npy), in a fresh random order each epoch, b/2 rows
a step, as many steps on both ranks (the longer shard's rows; the shorter
wraps), under torch.nn.parallel.DistributedDataParallel (its gradient
buckets overlap backward, as ours do).  The model is tests/golden/
gen_golden.py's build of the same spec, so both sides train the very same
network; the optimiser is Adam or SGD as the spec says.  Inputs are
normalised as the spec's "normalize" says (Fashion-MNIST) or passed as
int32 indices (confA's sparse first layer).  Prints one JSON line per
configuration: {"config": i, "samples_per_s": ..., "seconds": ...,
"rows": ...}, training time only (the timer starts after the first step of
each configuration, which pays for the model's set-up).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "golden"))
import gen_golden  # noqa: E402


def load_shard(data, rank, spec):
    d = os.path.join(data, "train", "shard-%d" % rank)
    x = np.load(os.path.join(d, "x.npy"))
    y = torch.from_numpy(np.load(os.path.join(d, "y.npy")).astype(np.int64))
    m = spec["model"]
    if "sparse" in m:
        return torch.from_numpy(x.astype(np.int32)), y
    norm = spec["train"].get("normalize", {})
    xf = torch.from_numpy(x.astype(np.float32)) * float(norm.get("scale", 1.0))
    if "mean" in norm:
        xf = (xf - norm["mean"][0]) / norm["std"][0]
    shape = m["input"]
    if len(shape) == 3:  # rows come channels last (H, W, C)
        xf = xf.reshape(-1, shape[1], shape[2], shape[0]).permute(0, 3, 1, 2).contiguous()
    return xf, y


def optimiser(model, train):
    if train.get("optimizer", "adam") == "adam":
        return torch.optim.Adam(model.parameters(), lr=train["lr"])
    return torch.optim.SGD(model.parameters(), lr=train["lr"], momentum=train.get("momentum", 0.0))


def run(rank, args, configs, port, out):
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    for i, spec in enumerate(configs):
        torch.manual_seed(spec["train"].get("seed", 1))
        x, y = load_shard(args.data, rank, spec)
        n = torch.tensor([len(y)])
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
        longest, local = int(n), spec["train"]["batch"] // 2
        model = torch.nn.parallel.DistributedDataParallel(gen_golden.build(spec["model"]).train())
        opt = optimiser(model, spec["train"])
        rows, t0 = 0, None
        for epoch in range(args.epochs):
            g = torch.Generator().manual_seed(1000 * epoch + rank)
            order = torch.cat([torch.randperm(len(y), generator=g) for _ in range((longest + len(y) - 1) // len(y))])
            order = order[:longest]
            for s in range(0, longest, local):
                b = order[s:s + local]
                opt.zero_grad()
                F.cross_entropy(model(x[b]), y[b]).backward()
                opt.step()
                if t0 is None:
                    t0 = time.perf_counter()
                else:
                    rows += len(b)
        dist.barrier()
        seconds = time.perf_counter() - t0
        total = torch.tensor([rows])
        dist.all_reduce(total)
        if rank == 0:
            out.put({"config": i, "samples_per_s": round(int(total) / seconds, 1), "seconds": round(seconds, 3),
                     "rows": int(total)})
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--data", required=True)
    ap.add_argument("--configs", required=True)
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--port", type=int, default=29533)
    args = ap.parse_args()
    configs = json.load(open(args.configs))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=run, args=(r, args, configs, args.port, out)) for r in range(2)]
    for p in procs:
        p.start()
    for _ in configs:
        print(json.dumps(out.get()), flush=True)
    for p in procs:
        p.join()
    sys.exit(max(p.exitcode for p in procs))


if __name__ == "__main__":
    main()
