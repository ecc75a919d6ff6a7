#!/usr/bin/env python3
"""bench/search/tpe_check.py: search/search_tpe.c's log l(x) - log g(x)
against Hyperopt's own estimators, on the same histories.

    bench/search/tpe_check.py --build build [--cases 40] [--seed 1]

Run it with any python3: it uses var/hyperopt-venv (creating it, with
hyperopt, numpy and scipy from PyPI, when missing, and saying so) and
re-runs itself there.  Needs <build>/bench/search_tpe_check (ninja -C build).

Each case is a random space with one dimension of each kind (choice,
uniform, quniform, loguniform, qloguniform), a random history of 21 to 80
trials (values half spread over the space, half clustered; some losses not
finite; in some cases losses rounded so that they tie) and, per dimension,
1,000 points of its domain.  Some cases use another gamma or prior_weight.
Hyperopt's side is built as hyperopt.tpe.build_posterior builds it for one
hyperparameter: ap_split_trials, then the dimension's adaptive Parzen
sampler (ap_uniform_sampler, ..., ap_randint_sampler: Hyperopt's hp.choice
is a randint) for below and above, whose pyll graph is evaluated with the
sampler's *_lpdf (GMM1_lpdf, LGMM1_lpdf, randint_via_categorical_lpdf) in
place of the draw, exactly as build_posterior swaps them.  The C side is
bench/search_tpe_check on the same JSON.

Hyperopt orders tied losses and tied values (q kinds) with np.argsort's
default kind, which is not stable and, with numpy 2's SIMD sorts, depends
on the CPU; search_tpe.c breaks ties by trial order, which is Hyperopt under
a stable argsort.  So Hyperopt runs twice: with np.argsort made stable
inside hyperopt.tpe (the figure checked against 1e-6), and as shipped (for
information: how far numpy's tie order moves Hyperopt itself).

Prints the worst |difference| per kind and overall; exits 1 when the
stable-order figure is above 1e-6.  A benchmark check, not a CI test.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / "var" / "hyperopt-venv"
TARGET = 1e-6
KINDS = ["choice", "uniform", "quniform", "loguniform", "qloguniform"]


def ensure_venv():
    """Re-runs this script with var/hyperopt-venv's python, creating it first."""
    py = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not py.exists():
        print(f"tpe_check: creating {VENV} with hyperopt, numpy, scipy (pip, from PyPI)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    probe = subprocess.run([str(py), "-c", "import hyperopt, numpy, scipy"], capture_output=True)
    if probe.returncode != 0:
        print(f"tpe_check: installing hyperopt, numpy, scipy into {VENV}", file=sys.stderr)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "hyperopt", "numpy", "scipy"], check=True)
    os.execv(str(py), [str(py), str(Path(__file__).resolve())] + sys.argv[1:])


ensure_venv()

import numpy as np  # noqa: E402
from hyperopt import __version__ as hyperopt_version  # noqa: E402
from hyperopt import pyll, tpe  # noqa: E402
from hyperopt.pyll import scope  # noqa: E402


class StableArgsortNumpy(types.ModuleType):
    """numpy, but with argsort stable by default: Hyperopt under a defined tie order."""

    def __init__(self):
        super().__init__("numpy_stable_argsort")

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def argsort(a, *args, **kwargs):
        if not args:
            kwargs.setdefault("kind", "stable")
        return np.argsort(a, *args, **kwargs)


# ---- random cases ----

def quantize(x, q):
    return np.round(x / q) * q


def random_dims(rng):
    """One dimension of each kind, named so that sorting keeps KINDS' order."""
    dims = {}
    dims["a_choice"] = {"choice": list(range(int(rng.integers(2, 9))))}
    lo = float(rng.uniform(-10, 10))
    dims["b_uniform"] = {"uniform": [lo, lo + float(10 ** rng.uniform(-2, 2))]}
    lo = float(rng.uniform(-10, 10))
    width = float(10 ** rng.uniform(-1, 2))
    dims["c_quniform"] = {"quniform": [lo, lo + width, width / float(rng.integers(2, 60))]}
    lo = float(10 ** rng.uniform(-6, 0))
    dims["d_loguniform"] = {"loguniform": [lo, lo * float(10 ** rng.uniform(0.5, 5))]}
    lo = float(10 ** rng.uniform(-1, 1))
    hi = lo * float(10 ** rng.uniform(0.5, 2.5))
    q = hi / float(rng.integers(5, 100))
    if rng.uniform() < 0.3:
        lo = q * float(rng.uniform(0.05, 0.45))  # values round down to 0: the bounds' treatment
    dims["e_qloguniform"] = {"qloguniform": [lo, hi, q]}
    return dims


def kind_of(spec):
    return next(iter(spec))


def draw_values(spec, rng, size, center=None):
    """Values of a dimension: spread (like search_space_sample) or around center."""
    kind = kind_of(spec)
    a = spec[kind]
    if kind == "choice":
        k = len(a)
        if center is None:
            return rng.integers(0, k, size).astype(float)
        near = rng.uniform(size=size) < 0.7
        return np.where(near, center, rng.integers(0, k, size)).astype(float)
    lo, hi = a[0], a[1]
    log = kind in ("loguniform", "qloguniform")
    ml, mh = (math.log(lo), math.log(hi)) if log else (lo, hi)
    if center is None:
        m = rng.uniform(ml, mh, size)
    else:
        m = np.clip(rng.normal(center, 0.05 * (mh - ml), size), ml, mh)
    v = np.exp(m) if log else m
    return quantize(v, a[2]) if kind in ("quniform", "qloguniform") else v


def domain_points(spec, rng, n):
    """n points of the dimension's domain, its bounds' neighbourhood included."""
    v = draw_values(spec, rng, n)
    kind = kind_of(spec)
    if kind in ("uniform", "loguniform"):
        v[0], v[1] = spec[kind][0], spec[kind][1]
    return v


def make_case(seed, n):
    rng = np.random.default_rng(seed)
    space = random_dims(rng)
    names = sorted(space)
    centers = {}
    for name in names:
        spec = space[name]
        kind = kind_of(spec)
        if kind == "choice":
            centers[name] = float(rng.integers(0, len(spec["choice"])))
        else:
            lo, hi = spec[kind][0], spec[kind][1]
            log = kind in ("loguniform", "qloguniform")
            ml, mh = (math.log(lo), math.log(hi)) if log else (lo, hi)
            centers[name] = float(rng.uniform(ml, mh))
    clustered = rng.uniform(size=n) < 0.5
    cols = {}
    for name in names:
        spread = draw_values(space[name], rng, n)
        near = draw_values(space[name], rng, n, centers[name])
        cols[name] = np.where(clustered, near, spread)
    losses = rng.normal(size=n) + np.where(clustered, -1.0, 0.0)
    if rng.uniform() < 0.3:
        losses = np.round(losses, 1)  # ties between finite losses
    losses[rng.uniform(size=n) < 0.06] = np.inf  # not finite: the worst
    opts = {"gamma": 0.25, "prior_weight": 1.0, "lf": 25}
    if rng.uniform() < 0.3:
        opts["gamma"] = float(rng.choice([0.1, 0.5, 1.0, 4.0]))
    if rng.uniform() < 0.3:
        opts["prior_weight"] = float(rng.choice([0.3, 2.0, 5.0]))
    xs = {name: domain_points(space[name], rng, 1000) for name in names}
    return {"space": space, "names": names, "cols": cols, "losses": losses, "opts": opts, "xs": xs}


# ---- Hyperopt's side ----

def hyperopt_args(spec):
    """The adaptive Parzen sampler's name and its prior's arguments, as
    Hyperopt's hp.* would write this dimension (log kinds: log bounds)."""
    kind = kind_of(spec)
    a = spec[kind]
    if kind == "choice":
        return "randint", [len(a)]
    if kind == "uniform":
        return "uniform", [a[0], a[1]]
    if kind == "quniform":
        return "quniform", [a[0], a[1], a[2]]
    if kind == "loguniform":
        return "loguniform", [math.log(a[0]), math.log(a[1])]
    return "qloguniform", [math.log(a[0]), math.log(a[1]), a[2]]


def hyperopt_log_ratio(spec, vals, losses, xs, opts):
    tids = np.arange(len(vals))
    below, above = tpe.ap_split_trials(tids, vals, tids, losses, opts["gamma"])
    name, args = hyperopt_args(spec)
    sampler = tpe.adaptive_parzen_samplers[name]
    if name == "randint":
        below, above, xs = below.astype(int), above.astype(int), xs.astype(int)
        extra = {"LF": opts["lf"]}
    else:
        extra = {}  # the continuous samplers always forget with DEFAULT_LF (25)
    llik = []
    for obs in (below, above):
        post = sampler(obs, opts["prior_weight"], *args, **extra)
        lpdf = getattr(scope, post.name + "_lpdf")
        kwargs = {k: v for k, v in post.named_args if k not in ("rng", "size")}
        llik.append(np.asarray(pyll.rec_eval(lpdf(*([xs] + post.pos_args), **kwargs)), dtype=float))
    return llik[0] - llik[1]


def hyperopt_side(case, stable):
    saved = tpe.np
    if stable:
        tpe.np = StableArgsortNumpy()
    try:
        with np.errstate(all="ignore"):
            return {n: hyperopt_log_ratio(case["space"][n], case["cols"][n], case["losses"], case["xs"][n],
                                          case["opts"]) for n in case["names"]}
    finally:
        tpe.np = saved


# ---- the C side ----

def c_side(build, cases):
    docs = []
    for case in cases:
        points = [{n: float(case["cols"][n][i]) for n in case["names"]} for i in range(len(case["losses"]))]
        losses = [float(x) if math.isfinite(x) else None for x in case["losses"]]
        for n in case["names"]:
            docs.append({"space": case["space"], "points": points, "losses": losses, "dim": n,
                         "xs": [float(x) for x in case["xs"][n]], "opts": case["opts"]})
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"cases": docs}, f)
        path = f.name
    try:
        out = subprocess.run([str(build / "bench" / "search_tpe_check"), path], capture_output=True, text=True)
    finally:
        os.unlink(path)
    if out.returncode != 0:
        sys.exit(f"tpe_check: search_tpe_check failed: {out.stderr.strip()}")
    lines = out.stdout.splitlines()
    res, k = [], 0
    for case in cases:
        res.append({})
        for n in case["names"]:
            res[-1][n] = np.array([float(t) for t in lines[k].split()])
            k += 1
    return res


def abs_diff(c, h):
    """|c - h|, with equal infinities (or both NaN) counting as 0."""
    d = np.abs(c - h)
    same = (c == h) | (np.isnan(c) & np.isnan(h))
    d[same] = 0.0
    d[np.isnan(d)] = np.inf
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=str(ROOT / "build"), help="meson build directory (default build)")
    ap.add_argument("--cases", type=int, default=40, help="random cases (default 40)")
    ap.add_argument("--seed", type=int, default=1, help="first case's seed (default 1)")
    a = ap.parse_args()
    build = Path(a.build)
    if not build.is_absolute():
        build = Path.cwd() / build
    if not (build / "bench" / "search_tpe_check").exists():
        sys.exit(f"tpe_check: {build}/bench/search_tpe_check not built (ninja -C {a.build})")
    ns = [21 + (i * 59) // max(1, a.cases - 1) for i in range(a.cases)]
    cases = [make_case(a.seed + i, n) for i, n in enumerate(ns)]
    c = c_side(build, cases)
    worst = {k: [0.0, 0.0, 0] for k in KINDS}  # stable, as shipped, cases moved by numpy's tie order
    scale = {k: 0.0 for k in KINDS}
    for case, cres in zip(cases, c):
        hs, hd = hyperopt_side(case, True), hyperopt_side(case, False)
        for n in case["names"]:
            kind = kind_of(case["space"][n])
            ds, dd = abs_diff(cres[n], hs[n]), abs_diff(cres[n], hd[n])
            worst[kind][0] = max(worst[kind][0], float(ds.max()))
            worst[kind][1] = max(worst[kind][1], float(dd.max()))
            worst[kind][2] += int(dd.max() > TARGET)
            finite = hs[n][np.isfinite(hs[n])]
            if finite.size:
                scale[kind] = max(scale[kind], float(np.abs(finite).max()))
    print(f"tpe_check: hyperopt {hyperopt_version}, numpy {np.__version__}; {a.cases} cases, n = {ns[0]}..{ns[-1]} "
          f"trials, seeds {a.seed}..{a.seed + a.cases - 1}, 1000 points per dimension")
    print(f"{'kind':<12} {'worst |C - hyperopt|':>22} {'as shipped':>12} {'cases moved by tie order':>25} "
          f"{'max |ratio|':>12}")
    for k in KINDS:
        s, d, moved = worst[k]
        print(f"{k:<12} {s:>22.3e} {d:>12.3e} {moved:>18d}/{a.cases:<6d} {scale[k]:>12.3g}")
    overall = max(w[0] for w in worst.values())
    verdict = "within" if overall <= TARGET else "ABOVE"
    print(f"overall worst |C - hyperopt (stable argsort)| = {overall:.3e}: {verdict} the {TARGET:g} target")
    return 0 if overall <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
