#!/usr/bin/python3
"""Golden reference files for the C training engine, computed with PyTorch.

Usage: /usr/bin/python3 tests/golden/gen_golden.py OUTDIR

Every architecture of docs/models.md is defined here as a torch.nn module
whose named_parameters() names, order and shapes are asserted against a list
built independently from the prose of docs/models.md, so a C engine that
follows the document and matches these files also matches PyTorch.  The
output is deterministic (fixed seeds, one thread, float32); the file format
is described in tests/golden/README.md.  bench/train-cpu/torch_side.py
imports this module so the benchmark trains the very same models.
"""

import json
import math
import os
import sys

import msgpack
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def ch(c, width):
    """docs/models.md: ch(c) = max(1, floor(c·width + 0.5))."""
    return max(1, int(math.floor(c * width + 0.5)))


# ---------------------------------------------------------------- models

class SparseLinear(nn.Module):
    """A sparse mlp's fc0: weight [dim, out] as nn.EmbeddingBag stores it.

    F.embedding_bag(mode='sum') adds one weight row per index, so a repeated
    index counts twice: the dense equivalent is the count vector (the
    multi-hot vector when the indices of a row are distinct)."""

    def __init__(self, dim, out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, out))
        self.bias = nn.Parameter(torch.empty(out))
        self.sparse_grad = False  # True: weight.grad is a sparse tensor (for SparseAdam)
        nn.init.normal_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, idx):
        return F.embedding_bag(idx.long(), self.weight, mode="sum", sparse=self.sparse_grad) + self.bias


class MLP(nn.Module):
    def __init__(self, spec):
        super().__init__()
        width = spec.get("width", 1.0)
        self.dropout = spec.get("dropout", 0.0)
        sizes = [ch(h, width) for h in spec["hidden"]] + [spec["classes"]]
        self.n_layers = len(sizes)
        if "sparse" in spec:
            self.fc0 = SparseLinear(spec["sparse"]["dim"], sizes[0])
        else:
            self.fc0 = nn.Linear(spec["input"][0], sizes[0])
        for i in range(1, len(sizes)):
            setattr(self, "fc%d" % i, nn.Linear(sizes[i - 1], sizes[i]))

    def forward(self, x):
        for i in range(self.n_layers):
            x = getattr(self, "fc%d" % i)(x)
            if i + 1 < self.n_layers:
                x = F.relu(x)
                if self.dropout > 0:
                    x = F.dropout(x, self.dropout, self.training)
        return x


class CNN(nn.Module):
    def __init__(self, spec):
        super().__init__()
        width = spec.get("width", 1.0)
        c, h, w = spec["input"]
        assert h % 4 == 0 and w % 4 == 0, "cnn needs H and W divisible by 4"
        self.dropout = spec.get("dropout", 0.0)
        c1, c2, f1 = ch(32, width), ch(64, width), ch(128, width)
        self.conv1 = nn.Conv2d(c, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc1 = nn.Linear(c2 * (h // 4) * (w // 4), f1)
        self.fc2 = nn.Linear(f1, spec["classes"])

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        if self.dropout > 0:
            x = F.dropout(x, self.dropout, self.training)
        return self.fc2(x)


def _bn(c, spec):
    return nn.BatchNorm2d(c, eps=spec.get("bn_eps", 1e-5), momentum=spec.get("bn_momentum", 0.1))


def _shortcut(cin, cout, stride, spec):
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _bn(cout, spec))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride, spec):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _bn(planes, spec)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = _bn(planes, spec)
        self.downsample = _shortcut(cin, planes, stride, spec)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x if self.downsample is None else self.downsample(x)
        return F.relu(out + sc)


class Bottleneck(nn.Module):
    """torchvision v1.5: the stride sits on the 3×3 convolution."""
    expansion = 4

    def __init__(self, cin, planes, stride, spec):
        super().__init__()
        cout = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = _bn(planes, spec)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _bn(planes, spec)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = _bn(cout, spec)
        self.downsample = _shortcut(cin, cout, stride, spec)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        sc = x if self.downsample is None else self.downsample(x)
        return F.relu(out + sc)


RESNET_BLOCKS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class ResNet(nn.Module):
    def __init__(self, spec):
        super().__init__()
        width = spec.get("width", 1.0)
        block, counts = RESNET_BLOCKS[spec["arch"]]
        stem = ch(64, width)
        self.conv1 = nn.Conv2d(spec["input"][0], stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = _bn(stem, spec)
        cin = stem
        for li, (planes, stride, n) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2), counts)):
            p = ch(planes, width)
            blocks = []
            for b in range(n):
                blocks.append(block(cin, p, stride if b == 0 else 1, spec))
                cin = p * block.expansion
            setattr(self, "layer%d" % (li + 1), nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, spec["classes"])

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self, "layer%d" % i)(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


VGG_BLOCKS = {
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
}


class VGG(nn.Module):
    """Keras VGG16 (include_top=True) with PyTorch layouts; every 2×2 pool
    floors odd sizes (Keras 'valid'), so 112 → 3 after five blocks."""

    def __init__(self, spec):
        super().__init__()
        width = spec.get("width", 1.0)
        c, h, w = spec["input"]
        self.convs = []
        for b, block in enumerate(VGG_BLOCKS[spec["arch"]], 1):
            names = []
            for i, cout in enumerate(block, 1):
                cout = ch(cout, width)
                name = "block%d_conv%d" % (b, i)
                setattr(self, name, nn.Conv2d(c, cout, 3, padding=1))
                names.append(name)
                c = cout
            self.convs.append(names)
            h, w = h // 2, w // 2
        assert h >= 1 and w >= 1, "vgg input too small for five 2×2 pools"
        f = ch(4096, width)
        self.fc1 = nn.Linear(c * h * w, f)
        self.fc2 = nn.Linear(f, f)
        self.predictions = nn.Linear(f, spec["classes"])

    def forward(self, x):
        for names in self.convs:
            for name in names:
                x = F.relu(getattr(self, name)(x))
            x = F.max_pool2d(x, 2, 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.predictions(x)


def build(spec):
    arch = spec["arch"]
    if arch == "mlp":
        return MLP(spec)
    if arch == "cnn":
        return CNN(spec)
    if arch in RESNET_BLOCKS:
        return ResNet(spec)
    if arch in VGG_BLOCKS:
        return VGG(spec)
    raise ValueError("unknown arch " + arch)


def l2_weights(model):
    """The weights the l2 term covers: convolutions and linears (the sparse
    fc0 included), never biases or batch normalisation."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, SparseLinear))]


def loss_fn(model, logits, y, l2):
    loss = F.cross_entropy(logits, y.long())
    if l2 != 0:
        loss = loss + l2 * sum((w * w).sum() for w in l2_weights(model))
    return loss


def loss64(model, logits, y, l2):
    """The same loss in float64 from the float32 logits and weights: the
    reference value a float32 engine is compared with."""
    loss = F.cross_entropy(logits.detach().double(), y.long())
    reg = sum((w.detach().double() ** 2).sum() for w in l2_weights(model))
    return float(loss + l2 * reg)


def buffers_of(model):
    """Running statistics only (num_batches_tracked is not part of the spec)."""
    return [(n, b) for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))]


# ------------------------------------- names and shapes from docs/models.md

def expected_params(spec):
    """[(name, shape)] as docs/models.md describes them, written without the
    torch modules so that the two descriptions check each other."""
    arch, width, k = spec["arch"], spec.get("width", 1.0), spec["classes"]
    out = []

    def lin(name, i, o):
        out.extend([(name + ".weight", (o, i)), (name + ".bias", (o,))])

    def conv(name, i, o, kk, bias):
        out.append((name + ".weight", (o, i, kk, kk)))
        if bias:
            out.append((name + ".bias", (o,)))

    def bn(name, c):
        out.extend([(name + ".weight", (c,)), (name + ".bias", (c,))])

    if arch == "mlp":
        sizes = [ch(h, width) for h in spec["hidden"]] + [k]
        if "sparse" in spec:
            out.extend([("fc0.weight", (spec["sparse"]["dim"], sizes[0])), ("fc0.bias", (sizes[0],))])
        else:
            lin("fc0", spec["input"][0], sizes[0])
        for i in range(1, len(sizes)):
            lin("fc%d" % i, sizes[i - 1], sizes[i])
    elif arch == "cnn":
        c, h, w = spec["input"]
        conv("conv1", c, ch(32, width), 3, True)
        conv("conv2", ch(32, width), ch(64, width), 3, True)
        lin("fc1", ch(64, width) * (h // 4) * (w // 4), ch(128, width))
        lin("fc2", ch(128, width), k)
    elif arch.startswith("resnet"):
        bottleneck = arch == "resnet50"
        counts = [2, 2, 2, 2] if arch == "resnet18" else [3, 4, 6, 3]
        cin = ch(64, width)
        conv("conv1", spec["input"][0], cin, 7, False)
        bn("bn1", cin)
        for li, (planes, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2))):
            p = ch(planes, width)
            for b in range(counts[li]):
                s = stride if b == 0 else 1
                pre = "layer%d.%d." % (li + 1, b)
                if bottleneck:
                    cout = 4 * p
                    conv(pre + "conv1", cin, p, 1, False)
                    bn(pre + "bn1", p)
                    conv(pre + "conv2", p, p, 3, False)
                    bn(pre + "bn2", p)
                    conv(pre + "conv3", p, cout, 1, False)
                    bn(pre + "bn3", cout)
                else:
                    cout = p
                    conv(pre + "conv1", cin, p, 3, False)
                    bn(pre + "bn1", p)
                    conv(pre + "conv2", p, p, 3, False)
                    bn(pre + "bn2", p)
                if s != 1 or cin != cout:
                    conv(pre + "downsample.0", cin, cout, 1, False)
                    bn(pre + "downsample.1", cout)
                cin = cout
        lin("fc", cin, k)
    else:
        c, h, w = spec["input"]
        for b, block in enumerate(VGG_BLOCKS[arch], 1):
            for i, cout in enumerate(block, 1):
                conv("block%d_conv%d" % (b, i), c, ch(cout, width), 3, True)
                c = ch(cout, width)
            h, w = h // 2, w // 2
        f = ch(4096, width)
        lin("fc1", c * h * w, f)
        lin("fc2", f, f)
        lin("predictions", f, k)
    return out


def check_names(model, spec):
    got = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    want = expected_params(spec)
    assert got == want, "parameter names/shapes differ from docs/models.md:\n%s\n%s" % (got, want)
    bufs = [n for n, _ in buffers_of(model)]
    want_bufs = []
    for n, _ in want:
        if n.endswith(".weight") and any(n == m + ".weight" for m, mod in model.named_modules()
                                         if isinstance(mod, nn.BatchNorm2d)):
            want_bufs += [n[:-7] + ".running_mean", n[:-7] + ".running_var"]
    assert bufs == want_bufs, (bufs, want_bufs)


# --------------------------------------------------------------- encoding

def tensor(name, t):
    a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    if a.dtype in (np.float32, np.float64):
        a, dtype = a.astype("<f4"), "float32"
    else:
        a, dtype = a.astype("<i4"), "int32"
    return {"name": name, "dtype": dtype, "shape": list(a.shape), "data": np.ascontiguousarray(a).tobytes()}


def params_list(model):
    return [tensor(n, p) for n, p in model.named_parameters()]


def buffers_list(model):
    return [tensor(n, b) for n, b in buffers_of(model)]


def grads_list(model):
    return [tensor(n, p.grad) for n, p in model.named_parameters()]


def write(outdir, case, obj):
    path = os.path.join(outdir, case + ".msgpack")
    with open(path, "wb") as f:
        f.write(msgpack.packb(obj, use_bin_type=True))
    return path


# ------------------------------------------------------------------ cases

def init_model(spec, seed, dtype=torch.float32):
    """Weights that keep activations O(1) through narrow deep nets (He normal
    for convolutions and linears, small random biases) and batch norms whose
    affine parameters and running statistics are not the identity, so an
    engine that skipped gamma/beta or ignored the running statistics fails."""
    torch.manual_seed(seed)
    model = build(spec)
    check_names(model, spec)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    m.bias.uniform_(-0.1, 0.1)
            elif isinstance(m, SparseLinear):
                m.weight.normal_(0.0, math.sqrt(2.0 / spec["sparse"]["nnz"]))
                m.bias.uniform_(-0.1, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        # A small last layer keeps the first losses near log(classes), so
        # SGD at lr 0.05 does not blow up in the optimiser cases.
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        last.weight.mul_(0.1)
    return model.to(dtype)


def settle_running_stats(model, spec, seed):
    """Running statistics that an eval-mode forward can live with: the
    cumulative average over four training-mode batches (the random ones of
    init_model make a deep net's eval logits explode)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(4):
            model(make_batch(spec, 8, seed + i, next(model.parameters()).dtype)[0])
    for m in bns:
        m.momentum = spec.get("bn_momentum", 0.1)


def make_batch(spec, n, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    if "sparse" in spec:
        dim, nnz = spec["sparse"]["dim"], spec["sparse"]["nnz"]
        x = torch.stack([torch.randperm(dim, generator=g)[:nnz] for _ in range(n)])
        x[1, nnz - 1] = x[1, 0]  # a repeated index: it must count twice
        x = x.to(torch.int32)
    else:
        x = torch.randn([n] + list(spec["input"]), generator=g).to(dtype)
    y = torch.randint(0, spec["classes"], (n,), generator=g).to(torch.int32)
    return x, y


def check_sparse_is_dense(model, spec, x, logits):
    """fc0 on indices == a dense linear on the count vector (docs/models.md)."""
    dense = torch.zeros(x.shape[0], spec["sparse"]["dim"], dtype=logits.dtype)
    for i, row in enumerate(x.long()):
        for j in row:
            dense[i, j] += 1.0
    assert dense.max() == 2.0, "the batch must hold a repeated index"
    with torch.no_grad():
        h = dense @ model.fc0.weight + model.fc0.bias
        for i in range(1, model.n_layers):
            h = getattr(model, "fc%d" % i)(F.relu(h))
    assert torch.allclose(h, logits, rtol=1e-5, atol=1e-5)


def check_first_step(train, before, model, grads):
    """The first update equals the formula of docs/models.md (torch 1.13's
    SGD and Adam, t = 1), so the files pin the documented optimiser."""
    lr = train["lr"]
    for (name, w0), (_, w1), g in zip(before, model.named_parameters(), grads):
        if train["optimizer"] == "sgd":
            want = w0 - lr * g  # buf = mu*0 + g
        else:
            b1, b2, eps = train["beta1"], train["beta2"], train["eps"]
            m_hat = (1 - b1) * g / (1 - b1)
            v_hat = (1 - b2) * g * g / (1 - b2)
            want = w0 - lr * m_hat / (v_hat.sqrt() + eps)
        assert torch.allclose(w1.detach(), want, rtol=1e-5, atol=1e-6), name


def fwdbwd_case(case, spec, n, l2, seed, dtype=torch.float32):
    model = init_model(spec, seed, dtype)
    model.train()
    x, y = make_batch(spec, n, seed + 1, dtype)
    params, bufs = params_list(model), buffers_list(model)
    logits = model(x)
    if "sparse" in spec:
        check_sparse_is_dense(model, spec, x, logits)
    loss = loss_fn(model, logits, y, l2)
    loss.backward()
    return {
        "case": case, "kind": "fwdbwd", "model": json.dumps(spec), "train": "", "l2": float(l2),
        "x": tensor("x", x), "y": tensor("y", y), "params": params, "buffers": bufs,
        "logits": tensor("logits", logits), "loss": loss64(model, logits, y, l2),
        "grads": grads_list(model), "buffers_after": buffers_list(model),
    }, float(loss)


def infer_case(case, spec, n, seed, dtype=torch.float32):
    model = init_model(spec, seed, dtype)
    settle_running_stats(model, spec, seed + 10)
    model.eval()
    x, y = make_batch(spec, n, seed + 1, dtype)
    with torch.no_grad():
        logits = model(x)
    return {
        "case": case, "kind": "infer", "model": json.dumps(spec), "train": "", "l2": 0.0,
        "x": tensor("x", x), "y": tensor("y", y), "params": params_list(model),
        "buffers": buffers_list(model), "logits": tensor("logits", logits),
        "loss": loss64(model, logits, y, 0.0),
    }, float(F.cross_entropy(logits, y.long()))


def optim_case(case, spec, train, n, steps, seed, dtype=torch.float32):
    model = init_model(spec, seed, dtype)
    model.train()
    x, y = make_batch(spec, n, seed + 1, dtype)
    params, bufs = params_list(model), buffers_list(model)
    if train["optimizer"] == "sgd":
        # dampening 0, no nesterov, weight_decay 0: l2 lives in the loss.
        opt = torch.optim.SGD(model.parameters(), lr=train["lr"], momentum=train["momentum"])
    else:
        opt = torch.optim.Adam(model.parameters(), lr=train["lr"],
                               betas=(train["beta1"], train["beta2"]), eps=train["eps"])
    losses = []
    for step in range(steps):
        opt.zero_grad()
        logits = model(x)
        loss = loss_fn(model, logits, y, train["l2"])
        losses.append(loss64(model, logits, y, train["l2"]))
        loss.backward()
        if step == 0:
            before = [(name, p.detach().clone()) for name, p in model.named_parameters()]
            grads = [p.grad.detach().clone() for p in model.parameters()]
        opt.step()
        if step == 0:
            check_first_step(train, before, model, grads)
    return {
        "case": case, "kind": "optim", "model": json.dumps(spec), "train": json.dumps(train),
        "l2": float(train["l2"]), "x": tensor("x", x), "y": tensor("y", y),
        "params": params, "buffers": bufs, "losses": losses,
        "params_after": params_list(model), "buffers_after": buffers_list(model),
    }, losses


def lazy_optim_case(case, spec, train, n, steps, seed, dtype=torch.float32):
    """Ten steps with "lazy": fc0.weight by torch.optim.SparseAdam on the
    sparse gradient of embedding_bag(sparse=True), every other parameter by
    Adam.  Each step draws its own batch (one batch for all ten would touch
    the same rows every step, where lazy and exact Adam agree); x and y hold
    the ten batches one after the other, step_rows = n.  The l2 term is not
    part of torch's SparseAdam: docs/models.md adds 2·l2·w to the touched
    rows of the sparse gradient only, so the loss that is differentiated
    leaves fc0.weight out of the l2 sum and the term is added to the
    coalesced gradient's rows by hand; the recorded losses hold the full l2
    term, as the engine reports it."""
    model = init_model(spec, seed, dtype)
    model.train()
    model.fc0.sparse_grad = True
    batches = [make_batch(spec, n, seed + 1 + s, dtype) for s in range(steps)]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    params, bufs = params_list(model), buffers_list(model)
    emb = model.fc0.weight
    rest = [p for p in model.parameters() if p is not emb]
    betas = (train["beta1"], train["beta2"])
    sparse_opt = torch.optim.SparseAdam([emb], lr=train["lr"], betas=betas, eps=train["eps"])
    dense_opt = torch.optim.Adam(rest, lr=train["lr"], betas=betas, eps=train["eps"])
    l2 = train["l2"]
    losses = []
    for s, (xb, yb) in enumerate(batches):
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
        logits = model(xb)
        losses.append(loss64(model, logits, yb, l2))
        loss = F.cross_entropy(logits, yb.long())
        if l2 != 0:
            loss = loss + l2 * sum((w * w).sum() for w in l2_weights(model) if w is not emb)
        loss.backward()
        g = emb.grad.coalesce()
        rows = g.indices()[0]
        if l2 != 0:
            g = torch.sparse_coo_tensor(g.indices(), g.values() + 2 * l2 * emb.detach()[rows], g.shape).coalesce()
            emb.grad = g
        if s == 0:
            check_lazy_first_step(train, emb, g, sparse_opt)
        else:
            sparse_opt.step()
        dense_opt.step()
    return {
        "case": case, "kind": "optim", "model": json.dumps(spec), "train": json.dumps(train),
        "l2": float(l2), "x": tensor("x", x), "y": tensor("y", y), "step_rows": n,
        "params": params, "buffers": bufs, "losses": losses,
        "params_after": params_list(model), "buffers_after": buffers_list(model),
    }, losses


def check_lazy_first_step(train, emb, g, opt):
    """Steps SparseAdam once and checks it against docs/models.md's lazy
    formula at t = 1: a touched row moves by lr·sqrt(1-β2)/(1-β1) ·
    m/(sqrt(v)+eps) with m = (1-β1)·g, v = (1-β2)·g²; every other row keeps
    its weights, and its m and v stay 0."""
    before = emb.detach().clone()
    opt.step()
    b1, b2, eps, lr = train["beta1"], train["beta2"], train["eps"], train["lr"]
    rows = g.indices()[0]
    m, v = (1 - b1) * g.values(), (1 - b2) * g.values() ** 2
    want = before[rows] - lr * math.sqrt(1 - b2) / (1 - b1) * m / (v.sqrt() + eps)
    assert torch.allclose(emb.detach()[rows], want, rtol=1e-5, atol=1e-6)
    untouched = torch.ones(emb.shape[0], dtype=torch.bool)
    untouched[rows] = False
    assert untouched.any() and torch.equal(emb.detach()[untouched], before[untouched])
    state = opt.state[emb]
    assert state["step"] == 1 and not state["exp_avg"][untouched].any() and not state["exp_avg_sq"][untouched].any()


L2 = 0.001

# Widths and inputs are narrower than the first plan so that all files stay
# under 3 MB, and the resnets take 48×48 (not 32×32) so that layer4 sees a 2×2
# map: with N=2 and a 1×1 map each batch norm there normalises two values to
# ±1 and its input gradient is an eps-sized cancellation nobody can match.
FWDBWD = [
    ("mlp_dense", {"arch": "mlp", "input": [20], "hidden": [16, 12], "classes": 5, "width": 1.0,
                   "dropout": 0.0}, 4),
    ("mlp_sparse", {"arch": "mlp", "sparse": {"dim": 50, "nnz": 6}, "hidden": [16, 8], "classes": 3,
                    "width": 1.0, "dropout": 0.0}, 5),
    ("cnn", {"arch": "cnn", "input": [1, 28, 28], "classes": 10, "width": 0.25, "dropout": 0.0}, 3),
    ("resnet18", {"arch": "resnet18", "input": [3, 48, 48], "classes": 7, "width": 0.0625}, 2),
    ("resnet34", {"arch": "resnet34", "input": [3, 48, 48], "classes": 7, "width": 0.03125}, 2),
    ("resnet50", {"arch": "resnet50", "input": [3, 48, 48], "classes": 7, "width": 0.03125}, 2),
    ("vgg11", {"arch": "vgg11", "input": [3, 32, 32], "classes": 6, "width": 0.03125}, 2),
    ("vgg16", {"arch": "vgg16", "input": [3, 32, 32], "classes": 6, "width": 0.03125}, 2),
]

# dim 200 with 5 rows of 6 indices a step: each step touches about 30 of
# the 200 rows, and about 40 rows are in none of the ten batches.
LAZY_MODEL = {"arch": "mlp", "sparse": {"dim": 200, "nnz": 6}, "hidden": [16, 8], "classes": 3, "width": 1.0,
              "dropout": 0.0}

OPTIM_MODELS = [
    ("cnn", {"arch": "cnn", "input": [1, 28, 28], "classes": 10, "width": 0.25, "dropout": 0.0}, 3),
    ("resnet18", {"arch": "resnet18", "input": [3, 48, 48], "classes": 7, "width": 0.03125}, 2),
]

SGD = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "l2": L2, "schedule": {"kind": "constant"}}
ADAM = {"optimizer": "adam", "lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "l2": L2,
        "schedule": {"kind": "constant"}}


def golden_cases(dtype=torch.float32):
    """Yields (case name, msgpack object, summary).  With dtype float64 the
    same cases are computed in double precision (still stored as float32)
    to measure how far float32 arithmetic alone moves each figure."""
    specs = {name: (spec, n) for name, spec, n in FWDBWD}
    for i, (name, spec, n) in enumerate(FWDBWD):
        obj, loss = fwdbwd_case(name, spec, n, L2, 100 + 10 * i, dtype)
        yield name, obj, "loss %.6f" % loss
    spec, n = specs["resnet18"]
    obj, loss = infer_case("resnet18_infer", spec, n, 200, dtype)
    yield "resnet18_infer", obj, "eval-mode loss %.6f" % loss
    for j, (oname, train) in enumerate((("sgd", SGD), ("adam", ADAM))):
        for k, (mname, spec, n) in enumerate(OPTIM_MODELS):
            tr = dict(train, batch=n, seed=1)
            case = "optim_%s_%s" % (oname, mname)
            obj, losses = optim_case(case, spec, tr, n, 10, 300 + 10 * (2 * j + k), dtype)
            yield case, obj, "losses " + " ".join("%.5f" % v for v in losses)
    for k, l2 in enumerate((0.0, L2)):
        tr = dict(ADAM, l2=l2, lazy=True, batch=5, seed=1)
        case = "optim_lazyadam%s_mlp_sparse" % ("_l2" if l2 else "")
        obj, losses = lazy_optim_case(case, LAZY_MODEL, tr, 5, 10, 400 + 10 * k, dtype)
        yield case, obj, "losses " + " ".join("%.5f" % v for v in losses)


def decode(t):
    return np.frombuffer(t["data"], dtype="<f4" if t["dtype"] == "float32" else "<i4").reshape(t["shape"])


def gap_report():
    """Per case, the largest difference between the float32 golden figures
    and the same computation in float64: the floor under any tolerance a
    float32 engine can be held to.  A tensor gap is max|a-b| / max|b| over
    the tensor; a list of tensors reports its worst tensor, skipping those
    whose reference is below 1e-6 of the list's largest value (structural
    zeros such as resnet50's bn1.bias, reported against the list maximum)."""
    def tgap(a, b, scale=None):
        a, b = decode(a).astype(np.float64), decode(b).astype(np.float64)
        s = scale if scale is not None else np.abs(b).max()
        return float(np.abs(a - b).max() / s) if s > 0 else float(np.abs(a - b).max())

    def lgap(la, lb):
        top = max(float(np.abs(decode(t)).max()) for t in lb)
        worst, worst_abs = 0.0, 0.0
        for a, b in zip(la, lb):
            if np.abs(decode(b)).max() < 1e-6 * top:
                worst_abs = max(worst_abs, tgap(a, b, top))
            else:
                worst = max(worst, tgap(a, b))
        return worst, worst_abs

    lines = []
    for (case, o32, _), (_, o64, _) in zip(golden_cases(torch.float32), golden_cases(torch.float64)):
        parts = []
        if "logits" in o32:
            parts.append("logits %.1e" % tgap(o32["logits"], o64["logits"]))
        if "grads" in o32:
            parts.append("loss %.1e" % (abs(o32["loss"] - o64["loss"]) / abs(o64["loss"])))
            g, gz = lgap(o32["grads"], o64["grads"])
            parts.append("grads %.1e" % g + (" (zero-ref tensors %.1e of max)" % gz if gz else ""))
        if "losses" in o32:
            rel = [abs(a - b) / abs(b) for a, b in zip(o32["losses"], o64["losses"])]
            parts.append("losses %.1e" % max(rel))
            parts.append("params_after %.1e" % lgap(o32["params_after"], o64["params_after"])[0])
        if o32.get("buffers_after"):
            parts.append("buffers_after %.1e" % lgap(o32["buffers_after"], o64["buffers_after"])[0])
        lines.append("%-20s %s" % (case, ", ".join(parts)))
    return lines


# ------------------------------------------------------------ param counts

PARAM_COUNT_SPECS = [
    ("mlp confA", {"arch": "mlp", "sparse": {"dim": 7306, "nnz": 39}, "hidden": [1000, 500], "classes": 2}),
    ("cnn", {"arch": "cnn", "input": [1, 28, 28], "classes": 10}),
    ("resnet18", {"arch": "resnet18", "input": [3, 112, 112], "classes": 1000}),
    ("resnet34", {"arch": "resnet34", "input": [3, 112, 112], "classes": 1000}),
    ("resnet50", {"arch": "resnet50", "input": [3, 112, 112], "classes": 1000}),
    ("vgg11", {"arch": "vgg11", "input": [3, 112, 112], "classes": 1000}),
    ("vgg16", {"arch": "vgg16", "input": [3, 112, 112], "classes": 1000}),
]


def param_counts():
    rows = []
    for label, spec in PARAM_COUNT_SPECS:
        torch.manual_seed(0)
        model = build(spec).eval()
        check_names(model, spec)
        count = sum(p.numel() for p in model.parameters())
        nbuf = sum(b.numel() for _, b in buffers_of(model))
        if "sparse" in spec:
            x = torch.zeros(1, spec["sparse"]["nnz"], dtype=torch.int32)
        else:
            x = torch.zeros([1] + spec["input"])
        with torch.no_grad():
            shape = list(model(x).shape)
        rows.append((label, spec, count, nbuf, shape))
        del model
    counts = {r[0]: r[2] for r in rows}
    assert counts["resnet50"] == 25557032, counts["resnet50"]
    assert counts["vgg16"] == 54471464, counts["vgg16"]
    return rows


def main(argv):
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if len(argv) == 2 and argv[1] == "--gaps":
        print("\n".join(gap_report()))
        return 0
    if len(argv) != 2:
        sys.stderr.write("usage: gen_golden.py OUTDIR | --gaps\n")
        return 2
    outdir = argv[1]
    os.makedirs(outdir, exist_ok=True)
    total = 0
    for case, obj, summary in golden_cases():
        path = write(outdir, case, obj)
        size = os.path.getsize(path)
        total += size
        print("%-22s %8d bytes  %s" % (case + ".msgpack", size, summary))
    print("total %d bytes" % total)
    lines = ["# arch | spec | parameters | bn buffer floats | output shape (batch 1)"]
    for label, spec, count, nbuf, shape in param_counts():
        lines.append("%s | %s | %d | %d | %s" % (label, json.dumps(spec), count, nbuf, shape))
    with open(os.path.join(outdir, "param_counts.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
