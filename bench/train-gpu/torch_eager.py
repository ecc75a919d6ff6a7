#!/usr/bin/env python3
"""The PyTorch half of the GPU training benchmark.

Usage: python3 bench/train-gpu/torch_eager.py [--device cuda:0|cpu] [--seconds S]
           [--rows a,b] [--tf32 0|1] [--batch B] [--image H] [--warmup N]
           [--channels-last auto|on|off]

For each row and precision, trains the model of tests/golden/gen_golden.py
(imported, so both halves of the benchmark train the very same networks as
docs/models.md defines them) with Adam (lr 1e-3) on one fixed random batch,
eagerly, and prints one JSON line:
  {"row", "precision", "samples_per_s", "peak_mib", "batch", "steps",
   "seconds", "device", "format", "finite"}
the same fields as bench/train_gpu.c prints, plus "format" (the memory
format the CNN ran in).

Rows (bench/train_gpu.c has the same): resnet50 and vgg16 on 3xHxH (H 112),
1000 classes, batch 32 and 256; confA with dense input (nn.Linear on the
multi-hot vector) and with sparse input (embedding_bag(mode='sum') + bias on
39 indices a row, dense gradients), batch 256.

Precision: "fp32" sets torch.backends.cuda.matmul.allow_tf32 and
torch.backends.cudnn.allow_tf32 to False (cuDNN's default is True), "tf32"
sets both to True.  torch.backends.cudnn.benchmark is on.

A step is what a training loop does per batch: the batch copied from pinned
host memory to the device (non_blocking, as a DataLoader with pin_memory
feeds it; the engine stages its batch from the host every step too),
zero_grad, forward, the mean cross-entropy, backward, Adam step.  No value
is read back inside the timed region: after the warm-up steps and a
device synchronisation, whole steps are queued for about S seconds and the
clock stops after the next synchronisation.  Peak memory is
torch.cuda.max_memory_allocated over the warm-up and timed steps.

Memory format (--channels-last auto, the default): for the CNNs, a few
forward and backward passes are timed in both NCHW and channels-last before
the optimiser exists, and the faster format is kept for the row (the model
and the pinned host batch are converted once; the batch arrives on the
device already in that layout).  on / off force one.
"""

import argparse
import json
import os
import sys
import time
import types
import warnings

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "golden"))
try:
    import msgpack  # noqa: F401  (gen_golden writes golden files with it; the models need none of it)
except ImportError:
    sys.modules["msgpack"] = types.ModuleType("msgpack")
import gen_golden  # noqa: E402

DIM, NNZ = 7306, 39
CONFA = {"hidden": [1000, 500], "classes": 2}


def rows(image):
    img = {"input": [3, image, image], "classes": 1000}
    return [
        ("resnet50-b32", dict(img, arch="resnet50"), 32),
        ("resnet50-b256", dict(img, arch="resnet50"), 256),
        ("vgg16-b32", dict(img, arch="vgg16"), 32),
        ("vgg16-b256", dict(img, arch="vgg16"), 256),
        ("confA-dense", dict(CONFA, arch="mlp", input=[DIM]), 256),
        ("confA-sparse", dict(CONFA, arch="mlp", sparse={"dim": DIM, "nnz": NNZ}), 256),
    ]


ROW_NAMES = [r[0] for r in rows(112)]


def set_tf32(on):
    """Both switches of the issue, each precision row setting both."""
    on = bool(on)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.backends.cuda.matmul.allow_tf32 = on
            torch.backends.cudnn.allow_tf32 = on
        except (AttributeError, RuntimeError):  # a release that has only the fp32_precision switches
            mode = "tf32" if on else "ieee"
            torch.backends.cuda.matmul.fp32_precision = mode
            torch.backends.cudnn.conv.fp32_precision = mode


def random_batch(row, spec, batch, gen):
    """The row's batch on the host: normal images, or 39 distinct indices a
    row (a randperm prefix) and, for the dense confA row, their multi-hot
    vectors."""
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


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def pick_format(model, x_host, y_host, dev, choice):
    """The memory format the CNN trains in: forced, or the faster of NCHW
    and channels-last over a few timed forward and backward passes."""
    if choice == "on":
        return torch.channels_last
    if choice == "off":
        return torch.contiguous_format
    best, best_t = torch.contiguous_format, None
    for fmt in (torch.contiguous_format, torch.channels_last):
        model.to(memory_format=fmt)
        xh = x_host.contiguous(memory_format=fmt)
        if dev.type == "cuda":
            xh = xh.pin_memory()
        y = y_host.to(dev)
        times = []
        for i in range(5):  # 2 warm-up passes (cuDNN's autotuning), 3 timed
            sync(dev)
            t = time.perf_counter()
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(xh.to(dev, non_blocking=True)), y).backward()
            sync(dev)
            if i >= 2:
                times.append(time.perf_counter() - t)
        t = min(times)
        if best_t is None or t < best_t:
            best, best_t = fmt, t
    model.zero_grad(set_to_none=True)
    model.to(memory_format=best)
    return best


def measure(row, spec, batch, tf32, dev, args):
    set_tf32(tf32)
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(2)
    model = gen_golden.build(spec).to(dev).train()
    x_host, y_host = random_batch(row, spec, batch, gen)
    fmt = torch.contiguous_format
    if spec["arch"] != "mlp":
        fmt = pick_format(model, x_host, y_host, dev, args.channels_last)
        x_host = x_host.contiguous(memory_format=fmt)
    if dev.type == "cuda":
        x_host, y_host = x_host.pin_memory(), y_host.pin_memory()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def step():
        opt.zero_grad(set_to_none=True)
        x = x_host.to(dev, non_blocking=True)
        y = y_host.to(dev, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    sync(dev)
    steps, t0 = 0, time.perf_counter()
    while True:
        loss = step()
        steps += 1
        if time.perf_counter() - t0 >= args.seconds:
            break
    finite = bool(torch.isfinite(loss).item())  # waits for the device: every queued step is done
    sync(dev)
    elapsed = time.perf_counter() - t0
    peak = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None
    out = {"row": row, "precision": "tf32" if tf32 else "fp32", "samples_per_s": round(steps * batch / elapsed, 1),
           "peak_mib": peak, "batch": batch, "steps": steps, "seconds": round(elapsed, 3), "device": str(dev),
           "format": None if spec["arch"] == "mlp" else "channels_last" if fmt == torch.channels_last else "nchw", "finite": finite}
    del model, opt, x_host, y_host
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rows", default=",".join(ROW_NAMES), help="comma-separated subset of " + ", ".join(ROW_NAMES))
    ap.add_argument("--tf32", type=int, choices=(0, 1), help="one precision only (default: fp32 and tf32)")
    ap.add_argument("--batch", type=int, default=0, help="every row's batch (hand runs only)")
    ap.add_argument("--image", type=int, default=112, help="image side of the CNN rows")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto")
    args = ap.parse_args()
    wanted = args.rows.split(",")
    unknown = set(wanted) - set(ROW_NAMES)
    if unknown:
        ap.error("unknown rows: " + ", ".join(sorted(unknown)) + " (the rows: " + ", ".join(ROW_NAMES) + ")")
    if not (args.seconds > 0 and args.warmup >= 1 and args.batch >= 0 and args.image >= 32):
        ap.error("--seconds must be above 0, --warmup at least 1, --batch 0 or more, --image at least 32")
    try:
        dev = torch.device(args.device)
    except RuntimeError:
        ap.error("--device: '%s' is not a device: use cuda:N or cpu" % args.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            print("torch_eager.py: device %s: torch %s sees no CUDA device: run on a GPU machine, or use --device cpu"
                  % (args.device, torch.__version__), file=sys.stderr)
            return 3
        if dev.index is None:
            dev = torch.device("cuda", 0)
        torch.cuda.set_device(dev)
    torch.backends.cudnn.benchmark = True
    rc = 0
    for row, spec, batch in rows(args.image):
        if row not in wanted:
            continue
        for tf32 in (0, 1):
            if args.tf32 is not None and args.tf32 != tf32:
                continue
            try:
                print(json.dumps(measure(row, spec, args.batch or batch, tf32, dev, args)), flush=True)
            except RuntimeError as e:  # out of memory and the like: this row fails, the others run
                print("torch_eager.py: %s (%s): %s" % (row, "tf32" if tf32 else "fp32", str(e).splitlines()[0]),
                      file=sys.stderr)
                rc = 1
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
    return rc


if __name__ == "__main__":
    sys.exit(main())
