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
their largest magnitude.  And DIR/NAME.onnx: onnx.checker's full check
(Debian's python3-onnx, opset 17, shape inference included) where onnx is
installed, and the graph run by the small numpy interpreter below (only
the operators nn/nn_export_onnx.c emits), against the engine's logits
within 1e-5 of their largest magnitude.  Prints one line per check: PASS,
FAIL or SKIP and what was checked."""
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


# ---- ONNX ---------------------------------------------------------------

def _attrs(node):
    out = {}
    for a in node["attribute"]:
        out[a["name"]] = a["value"]
    return out


def _conv(x, w, b, stride, pad):
    n, c, h, wd = x.shape
    oc, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    cols = np.empty((n, c, kh, kw, oh, ow), np.float64)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
    y = np.einsum("nckluv,ockl->nouv", cols, w.astype(np.float64))
    return y + (b.reshape(1, -1, 1, 1) if b is not None else 0)


def _maxpool(x, k, stride, pad):
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    y = np.full((n, c, oh, ow), -np.inf)
    for i in range(k):
        for j in range(k):
            y = np.maximum(y, xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride])
    return y


def run_onnx(graph, x):
    """Evaluates the graph (a dict: nodes with op, inputs, outputs, attrs;
    initializers) in float64 on input x."""
    env = dict(graph["init"])
    env["input"] = x
    for nd in graph["nodes"]:
        a, i = nd["attrs"], [env[k] if k else None for k in nd["inputs"]]
        op = nd["op"]
        if op == "Gemm":
            y = i[0] @ (i[1].T if a.get("transB") else i[1]) + (i[2] if len(i) > 2 else 0)
        elif op == "Conv":
            y = _conv(i[0], i[1], i[2] if len(i) > 2 else None, a["strides"][0], a["pads"][0])
        elif op == "BatchNormalization":
            sh = (1, -1, 1, 1) if i[0].ndim == 4 else (1, -1)
            y = (i[0] - i[3].reshape(sh)) / np.sqrt(i[4].reshape(sh) + a["epsilon"]) * i[1].reshape(sh) + i[2].reshape(sh)
        elif op == "Relu":
            y = np.maximum(i[0], 0)
        elif op == "Add":
            y = i[0] + i[1]
        elif op == "MaxPool":
            y = _maxpool(i[0], a["kernel_shape"][0], a["strides"][0], a["pads"][0])
        elif op == "GlobalAveragePool":
            y = i[0].mean(axis=(2, 3), keepdims=True)
        elif op == "Flatten":
            y = i[0].reshape(i[0].shape[0], -1)
        elif op == "Gather":
            y = i[0][i[1].astype(np.int64)]
        elif op == "ReduceSum":
            y = i[0].sum(axis=tuple(int(v) for v in i[1]), keepdims=bool(a.get("keepdims", 1)))
        elif op == "Identity":
            y = i[0]
        else:
            raise ValueError("an operator the interpreter does not know: " + op)
        env[nd["outputs"][0]] = y
    return env["logits"]


def check_onnx(d, name):
    out = []
    path = os.path.join(d, name + ".onnx")
    spec = json.load(open(os.path.join(d, name + ".json")))
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return [(None, "%s: the ONNX file # SKIP python3-onnx is not installed" % name)]
    model = onnx.load(path)
    try:
        onnx.checker.check_model(model, full_check=True)
        good = True
    except Exception as e:  # noqa: BLE001 (the checker's own exception types vary by version)
        good, why = False, str(e).splitlines()[0]
    opset = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    out.append((good and opset == [17], "%s: onnx.checker's full check passes, opset %s%s" % (
        name, opset, "" if good else ": " + why)))
    graph = {"init": {t.name: numpy_helper.to_array(t).astype(np.float64 if t.data_type == 1 else np.int64)
                      for t in model.graph.initializer},
             "nodes": [{"op": nd.op_type, "inputs": list(nd.input), "outputs": list(nd.output),
                        "attrs": {a.name: onnx.helper.get_attribute_value(a) for a in nd.attribute}}
                       for nd in model.graph.node]}
    want = np.fromfile(os.path.join(d, name + ".logits"), "<f4").reshape(4, spec["classes"])
    if "sparse" in spec:
        x = np.fromfile(os.path.join(d, name + ".x"), "<i4").reshape(4, spec["sparse"]["nnz"])
    else:
        x = np.fromfile(os.path.join(d, name + ".x"), "<f4").reshape([4] + spec["input"]).astype(np.float64)
    got = run_onnx(graph, x)
    gap = float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))
    ops = sorted({nd["op"] for nd in graph["nodes"]})
    out.append((gap <= 1e-5, "%s: its graph (%d nodes: %s), run by numpy, gives the engine's logits: worst %.2g of "
                "their largest magnitude (tolerance 1e-5)" % (name, len(graph["nodes"]), " ".join(ops), gap)))
    return out


def main():
    d = sys.argv[1]
    for name in sys.argv[2:]:
        for good, what in check(d, name) + check_onnx(d, name):
            print(("SKIP" if good is None else "PASS" if good else "FAIL"), what)


if __name__ == "__main__":
    main()
