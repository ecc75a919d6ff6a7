#!/usr/bin/python3
"""bench/predict's anchor: the scoring script a PyTorch user would write.

usage: torch_side.py SPEC.json MODEL.safetensors TABLE OUT_TABLE THREADS BATCH

Reads TABLE's (id, pixels bytea) through psql's COPY, normalises the bytes
as the spec's train.normalize says, runs the torch module of
tests/golden/gen_golden.py (the engine's models) loaded from jobctl
export's safetensors in evaluation mode, batch by batch, and writes
OUT_TABLE(id, class, prob) through psql's COPY FROM STDIN in one
transaction.  Prints one JSON line: rows, and the seconds of reading,
scoring, writing and in all (from the start to the commit)."""
import json
import os
import struct
import subprocess
import sys
import time

import numpy as np
import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "tests", "golden"))
import gen_golden  # noqa: E402


def read_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    header.pop("__metadata__", None)
    data = raw[8 + n:]
    dt = {"F32": np.float32, "I64": np.int64}
    return {k: torch.from_numpy(np.frombuffer(data[e["data_offsets"][0]:e["data_offsets"][1]], dt[e["dtype"]])
                                .reshape(e["shape"]).copy()) for k, e in header.items()}


def main():
    spec_path, st_path, table, out, threads, batch = sys.argv[1:7]
    spec = json.load(open(spec_path))
    model_spec, norm = spec["model"], spec.get("train", {}).get("normalize", {})
    torch.set_num_threads(int(threads))
    t0 = time.monotonic()
    text = subprocess.run(["psql", "-XAtc", "COPY (SELECT id, encode(pixels, 'hex') FROM %s) TO STDOUT" % table],
                          capture_output=True, text=True, check=True).stdout
    rows = [line.split("\t") for line in text.splitlines()]
    ids = np.array([int(r[0]) for r in rows], dtype=np.int64)
    raw = np.frombuffer(bytes.fromhex("".join(r[1] for r in rows)), dtype=np.uint8).reshape(len(rows), -1)
    t1 = time.monotonic()
    x = (raw.astype(np.float32) * np.float32(norm.get("scale", 1.0)) - np.float32(norm.get("mean", [0.0])[0])) \
        / np.float32(norm.get("std", [1.0])[0])
    x = torch.from_numpy(x.reshape([len(rows)] + model_spec["input"]))
    torch.manual_seed(0)
    model = gen_golden.build(model_spec)
    model.load_state_dict(read_safetensors(st_path), strict=True)
    model.eval()
    classes, probs = [], []
    with torch.no_grad():
        for i in range(0, len(rows), int(batch)):
            p = torch.softmax(model(x[i:i + int(batch)]).double(), dim=1)
            best = p.max(dim=1)
            classes.append(best.indices.numpy())
            probs.append(best.values.numpy())
    cls, prob = np.concatenate(classes), np.concatenate(probs)
    t2 = time.monotonic()
    csv = "".join("%d,%d,%.17g\n" % (i, c, q) for i, c, q in zip(ids, cls, prob))
    subprocess.run(["psql", "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1",
                    "-c", "CREATE TABLE %s (id bigint, class integer, prob double precision)" % out,
                    "-c", "COPY %s FROM STDIN (FORMAT csv)" % out], input=csv, text=True, check=True)
    t3 = time.monotonic()
    print(json.dumps({"rows": len(rows), "read_s": t1 - t0, "score_s": t2 - t1, "write_s": t3 - t2,
                      "total_s": t3 - t0}))


if __name__ == "__main__":
    main()
