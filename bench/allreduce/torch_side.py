"""bench/allreduce/torch_side.py: torch.distributed's Gloo all-reduce at W
ranks on this machine, the anchor of bench/allreduce (Debian's python3-torch
links the same Gloo as the communicator).

    torch_side.py --ranks W --sizes-mb 1,4,... --seconds S --port P

The same loop as bench/allreduce_gloo.c: per size, WARMUP calls, one
timed call that sets the count (broadcast from rank 0), a barrier, then
back-to-back all-reduces (sum) of float32 timed on rank 0.  One JSON line
per size with the bus bandwidth, bytes * 2(W-1)/W / time per call."""
import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WARMUP = 5  # calls before timing a size, as bench/allreduce_gloo.c


def rank_main(rank, args):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(args.port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=args.ranks)
    W = args.ranks
    for mb in [int(s) for s in args.sizes_mb.split(",")]:
        n = mb * (1 << 20) // 4
        buf = (torch.arange(n, dtype=torch.int64) & 7).to(torch.float32)
        for _ in range(WARMUP):
            dist.all_reduce(buf)
        iters = torch.zeros(1)
        t0 = time.monotonic()
        dist.all_reduce(buf)
        one = time.monotonic() - t0
        if rank == 0:
            iters[0] = min(1000, max(3, args.seconds / one if one > 0 else 100))
        dist.broadcast(iters, 0)
        dist.barrier()
        k = int(iters[0])
        t0 = time.monotonic()
        for _ in range(k):
            dist.all_reduce(buf)
        t = (time.monotonic() - t0) / k
        if rank == 0:
            print(json.dumps({"side": "torch", "mb": mb, "ranks": W, "calls": k, "seconds_per_call": round(t, 6),
                              "bus_gb_per_s": round(n * 4 * 2.0 * (W - 1) / W / t / 1e9, 3)}), flush=True)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--sizes-mb", default="1,4,16,64,256")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    mp.spawn(rank_main, args=(args,), nprocs=args.ranks, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
