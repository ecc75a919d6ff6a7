#!/usr/bin/env python3
"""bench/search/ray_asha.py: the Ray Tune side of bench/search/run.

    bench/search/ray_asha.py --data DATASET_DIR --trials N --epochs E
        [--grace 1] [--eta 3] [--seed 7] [--target 0.90] [--concurrency 2]
        [--storage DIR]
    bench/search/ray_asha.py --setup-only

Run it with any python3: it uses var/ray-venv (creating it, with ray[tune]
from PyPI, when missing, and saying so) and re-runs itself there.  The venv
sees Debian's python3-torch (--system-site-packages), so both sides of the
bench train on the CPU builds this machine already has; numpy stays below 2
(and pyarrow below 20, the last that takes numpy 1) because Debian's torch
1.13 is built against numpy 1.

Ray Tune's ASHAScheduler (time_attr training_iteration = epochs, metric
valid_top1, mode max, grace_period, reduction_factor eta, max_t E, one
bracket) over N trials drawn by Tune's random search (BasicVariantGenerator,
random_state seed) from the space bench/search/run gives the engine: lr
loguniform [1e-4, 1e-2], batch choice [32, 64, 128, 256], dropout uniform
[0, 0.5]; Adam; at most --concurrency trials at once, 1 CPU and 1 torch
thread each.

The data are the shards cds-etl wrote for the engine's sweeps (DATASET_DIR/
train/shard-K and valid/shard-K, x.npy uint8 rows of 28x28x1 and y.npy),
read from disk by every trial: the same training rows and the same
validation split as the engine's, normalised as the sweep's "normalize"
says.  One epoch is one pass over all training rows (both shards), in a
fresh order each epoch, as one MOP epoch visits both shards.  The model is
the engine's cnn (nn/nn_model_build.c build_cnn; tests/golden/gen_golden.py's
CNN, repeated here because Ray pickles __main__'s classes by value into its
workers, which do not have tests/golden on their path) with PyTorch's default
initialisation, seeded by the sweep's seed (1), as every model of a sweep is.

Prints one JSON line on stdout: {"method": "ray-asha", "trials", "stopped",
"epochs_trained", "best_top1", "best_config", "time_to_target_s" (from the
start of Tuner.fit to the first reported epoch at or above --target; null if
none), "wall_s" (Tuner.fit), "ray_init_s", "ray", "torch", "curves": [[trial,
epoch, valid_top1, seconds since fit began], ...]}.  Not a test.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / "var" / "ray-venv"
PIP_PACKAGES = ["ray[tune]", "numpy<2", "pyarrow<20"]
PROBE = "import ray, ray.tune, torch, numpy; torch.from_numpy(numpy.zeros(1, numpy.float32))"


def ensure_venv():
    """Re-runs this script with var/ray-venv's python, creating it first."""
    py = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not py.exists():
        print(f"ray_asha: creating {VENV} (system site packages: Debian's torch) with ray[tune] from PyPI",
              file=sys.stderr)
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(VENV)], check=True)
    if subprocess.run([str(py), "-c", PROBE], capture_output=True).returncode != 0:
        print(f"ray_asha: installing {' '.join(PIP_PACKAGES)} into {VENV}", file=sys.stderr)
        subprocess.run([str(py), "-m", "pip", "install", "-q"] + PIP_PACKAGES, check=True)
        probe = subprocess.run([str(py), "-c", PROBE], capture_output=True, text=True)
        if probe.returncode != 0:
            last = (probe.stderr.strip().splitlines() or ["?"])[-1]
            sys.exit(f"ray_asha: {VENV} cannot import ray.tune and torch after the install: {last}")
    os.execv(str(py), [str(py), str(Path(__file__).resolve())] + sys.argv[1:])


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--setup-only", action="store_true", help="create var/ray-venv if needed and exit")
    ap.add_argument("--data", help="the cds-etl dataset directory (train/ and valid/)")
    ap.add_argument("--trials", type=int, default=29)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--grace", type=int, default=1)
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7, help="Tune's random search seed")
    ap.add_argument("--model-seed", type=int, default=1, help="every trial's initialisation seed (the sweep's seed)")
    ap.add_argument("--target", type=float, default=0.90)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--storage", help="Ray Tune's storage_path (default: under Ray's temporary directory, removed)")
    return ap.parse_args()


# ---- what runs in Ray's trial processes --------------------------------------------
# Everything a trial needs is defined at module level of __main__ so that
# cloudpickle ships it by value.

NORM_SCALE, NORM_MEAN, NORM_STD = 0.00392156862745098, 0.286, 0.353


def load_split(data, split):
    import numpy as np
    import torch

    xs, ys = [], []
    k = 0
    while os.path.isdir(os.path.join(data, split, f"shard-{k}")):
        d = os.path.join(data, split, f"shard-{k}")
        xs.append(np.load(os.path.join(d, "x.npy")))
        ys.append(np.load(os.path.join(d, "y.npy")))
        k += 1
    if not xs:
        raise SystemExit(f"ray_asha: no {split}/shard-0 under {data}")
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32)).reshape(-1, 28, 28, 1).permute(0, 3, 1, 2)
    x = ((x * NORM_SCALE - NORM_MEAN) / NORM_STD).contiguous()
    return x, torch.from_numpy(np.concatenate(ys).astype(np.int64))


def make_cnn(dropout):
    """docs/models.md's cnn at width 1 for 1x28x28 and 10 classes."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
            self.fc1 = nn.Linear(64 * 7 * 7, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
            x = F.relu(self.fc1(torch.flatten(x, 1)))
            if dropout > 0:
                x = F.dropout(x, dropout, self.training)
            return self.fc2(x)

    return CNN()


def trainable(config):
    import torch
    import torch.nn.functional as F
    from ray import tune

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as the engine computes (docs/models.md, "Denormals")
    x, y = load_split(config["data"], "train")
    vx, vy = load_split(config["data"], "valid")
    torch.manual_seed(config["model_seed"])
    model = make_cnn(config["dropout"])
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    batch = int(config["batch"])
    for epoch in range(1, config["epochs"] + 1):
        model.train()
        g = torch.Generator().manual_seed(1000 * config["model_seed"] + epoch)
        order = torch.randperm(len(y), generator=g)
        for s in range(0, len(y), batch):
            idx = order[s:s + batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for s in range(0, len(vy), 1024):
                correct += int((model(vx[s:s + 1024]).argmax(1) == vy[s:s + 1024]).sum())
        tune.report({"valid_top1": correct / len(vy), "epoch": epoch, "wall": time.time()})


# ---- the driver ---------------------------------------------------------------------

def main():
    args = parse_args()
    if args.setup_only:
        return
    if not args.data:
        sys.exit("ray_asha: --data DATASET_DIR is required")
    import ray

    data = str(Path(args.data).resolve())
    # Ray's session files (logs, sockets) go to a directory of our own, removed
    # at the end, instead of piling up in /tmp/ray; short, for the socket paths.
    ray_tmp = tempfile.mkdtemp(prefix="cds-ray.", dir="/tmp")
    try:
        run_tune(args, data, ray_tmp)
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def run_tune(args, data, ray_tmp):
    import ray
    import torch
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    t = time.time()
    ray.init(num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 << 20, logging_level="ERROR", _temp_dir=ray_tmp)
    ray_init_s = time.time() - t
    space = {"lr": tune.loguniform(1e-4, 1e-2), "batch": tune.choice([32, 64, 128, 256]),
             "dropout": tune.uniform(0.0, 0.5),
             "data": data, "epochs": args.epochs, "model_seed": args.model_seed}
    asha = ASHAScheduler(time_attr="training_iteration", metric="valid_top1", mode="max", max_t=args.epochs,
                         grace_period=args.grace, reduction_factor=args.eta, brackets=1)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(num_samples=args.trials, scheduler=asha,
                                    search_alg=BasicVariantGenerator(random_state=args.seed),
                                    max_concurrent_trials=args.concurrency),
        run_config=tune.RunConfig(storage_path=args.storage or os.path.join(ray_tmp, "tune"), name="ray_asha",
                                  verbose=0),
    )
    t0 = time.time()
    grid = tuner.fit()
    wall = time.time() - t0
    curves, trials, stopped, epochs, best = [], 0, 0, 0, (-1.0, None)
    for i, r in enumerate(grid):
        df = r.metrics_dataframe
        if r.error is not None or df is None or len(df) == 0:
            continue
        trials += 1
        n = int(df["training_iteration"].max())
        epochs += n
        stopped += n < args.epochs
        for _, row in df.iterrows():
            curves.append([i, int(row["epoch"]), float(row["valid_top1"]), round(float(row["wall"]) - t0, 3)])
            if row["valid_top1"] > best[0]:
                cfg = r.config
                best = (float(row["valid_top1"]), {"lr": cfg["lr"], "batch": cfg["batch"], "dropout": cfg["dropout"]})
    hits = [c[3] for c in curves if c[2] >= args.target]
    failed = sum(1 for r in grid if r.error is not None)
    print(json.dumps({"method": "ray-asha", "trials": trials, "failed": failed, "stopped": stopped,
                      "epochs_trained": epochs, "best_top1": best[0] if best[1] else None,
                      "best_config": best[1], "time_to_target_s": min(hits) if hits else None,
                      "wall_s": round(wall, 3), "ray_init_s": round(ray_init_s, 3),
                      "ray": ray.__version__, "torch": torch.__version__, "curves": sorted(curves, key=lambda c: c[3])}))


if __name__ == "__main__":
    ensure_venv()
    main()
