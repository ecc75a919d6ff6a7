#!/usr/bin/env python3
"""The exported ONNX models run by onnxruntime (tests/test_export.sh runs it
with var/ort-venv's python, where a user made it: PyPI's onnxruntime).

usage: export_ort.py DIR NAME...   prints PASS/FAIL lines as export_check.py"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort

d = sys.argv[1]
for name in sys.argv[2:]:
    spec = json.load(open(os.path.join(d, name + ".json")))
    want = np.fromfile(os.path.join(d, name + ".logits"), "<f4").reshape(4, spec["classes"])
    if "sparse" in spec:
        x = np.fromfile(os.path.join(d, name + ".x"), "<i4").reshape(4, spec["sparse"]["nnz"])
    else:
        x = np.fromfile(os.path.join(d, name + ".x"), "<f4").reshape([4] + spec["input"])
    s = ort.InferenceSession(os.path.join(d, name + ".onnx"), providers=["CPUExecutionProvider"])
    got = s.run(["logits"], {"input": x})[0]
    gap = float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))
    print("PASS" if gap <= 1e-5 else "FAIL", "%s: onnxruntime %s runs it and gives the engine's logits: worst %.2g of "
          "their largest magnitude (tolerance 1e-5)" % (name, ort.__version__, gap))
