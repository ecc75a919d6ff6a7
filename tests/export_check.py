#!/usr/bin/python3
"""Checks jobctl export's safetensors files (tests/test_export.sh).

usage: export_check.py DIR NAME...

For each NAME: DIR/NAME.safetensors read by hand (Debian has no
safetensors package: 8 bytes of header length, a JSON header, raw data),
against DIR/NAME.ckpt read with tests/ckpt_reader.py: the same tensors
under the same names, bit for bit, every batch-norm layer's
num_batches_tracked (int64) equal to the checkpoint's step count, nothing
else, and data that the header's offsets tile exactly.  Where torch is
installed: the module tests/golden/gen_golden.py builds for DIR/NAME.json
takes the file with load_state_dict(strict=True) and, in evaluation mode,
gives the engine's logits (DIR/NAME.logits on DIR/NAME.x) within 1e-5 of
their largest magnitude.  Prints one line per check: PASS, FAIL or SKIP and
what was checked."""
import json
import os
import struct
import sys

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import ckpt_reader  # noqa: E402

DTYPES = {"F32": "<f4", "I64": "<i8"}


def read_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    meta = header.pop("__metadata__", {})
    tensors, spans = {}, []
    for name, e in header.items():
        b, end = e["data_offsets"]
        spans.append((b, end))
        tensors[name] = np.frombuffer(data[b:end], DTYPES[e["dtype"]]).reshape(e["shape"])
    spans.sort()
    tiled = spans[0][0] == 0 and spans[-1][1] == len(data) and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    return tensors, meta, tiled, header, (8 + n) % 8 == 0


def check(d, name):
    out = []
    st, meta, tiled, header, aligned = read_safetensors(os.path.join(d, name + ".safetensors"))
    ck, ct = ckpt_reader.load(os.path.join(d, name + ".ckpt"))
    params = {t["name"] for t in ck["params"]}
    same = all(n in st and st[n].shape == ct[n].shape and st[n].tobytes() == ct[n].tobytes() for n in params)
    bns = {n[: -len(".running_var")] for n in params if n.endswith(".running_var")}
    counters = {n for n in st if n.endswith(".num_batches_tracked")}
    counted = counters == {b + ".num_batches_tracked" for b in bns} and all(
        header[c]["dtype"] == "I64" and st[c].shape == () and int(st[c]) == ck["step"] for c in counters)
    extra = set(st) - params - counters
    out.append((same and not extra, "%s: the %d tensors of the checkpoint, bit for bit, under its names%s" % (
        name, len(params), " (extra: %s)" % sorted(extra) if extra else "")))
    out.append((counted, "%s: num_batches_tracked for each of its %d batch-norm layers, int64, = the step count %d" % (
        name, len(bns), ck["step"])))
    out.append((tiled and aligned and meta.get("format") == "pt" and json.loads(meta.get("cds_model", "{}")) ==
                json.load(open(os.path.join(d, name + ".json"))),
                "%s: offsets tile the data, the data starts on 8 bytes, metadata format pt and the model spec" % name))
    try:
        import torch
    except ImportError:
        out.append((None, "%s: torch load_state_dict and logits # SKIP torch is not installed" % name))
        return out
    sys.path.insert(0, os.path.join(here, "golden"))
    import gen_golden
    spec = json.load(open(os.path.join(d, name + ".json")))
    torch.manual_seed(0)
    model = gen_golden.build(spec)
    sd = {k: torch.from_numpy(v.copy()) for k, v in st.items()}
    try:
        model.load_state_dict(sd, strict=True)
        loaded = True
    except RuntimeError as e:
        out.append((False, "%s: load_state_dict(strict=True): %s" % (name, str(e).splitlines()[0])))
        return out
    model.eval()
    want = np.fromfile(os.path.join(d, name + ".logits"), "<f4").reshape(4, spec["classes"])
    if "sparse" in spec:
        x = torch.from_numpy(np.fromfile(os.path.join(d, name + ".x"), "<i4").reshape(4, spec["sparse"]["nnz"]))
    else:
        x = torch.from_numpy(np.fromfile(os.path.join(d, name + ".x"), "<f4").reshape([4] + spec["input"]))
    with torch.no_grad():
        got = model(x).numpy()
    gap = float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))
    out.append((loaded and gap <= 1e-5, "%s: torch's %s loads it strictly and gives the engine's logits: worst %.2g "
                "of their largest magnitude (tolerance 1e-5)" % (name, type(model).__name__, gap)))
    return out


def main():
    d = sys.argv[1]
    for name in sys.argv[2:]:
        for good, what in check(d, name):
            print(("SKIP" if good is None else "PASS" if good else "FAIL"), what)


if __name__ == "__main__":
    main()
