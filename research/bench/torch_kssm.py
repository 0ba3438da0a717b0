"""A PyTorch twin of the K-SSM model (CPU; CUDA with --device cuda), only for the benchmark.

It is the SAME layer and model as mlx_kssm/models/kssm.py with the `order_params` readout
(presets `tiny`, `v2`): embedding -> L x [oscillator bank (RMSNorm, in_proj, the recurrence of
mlx_kssm/kernels/reference.py, phase-only readout, out_proj, residual) -> MLP (RMSNorm, GELU,
residual)] -> RMSNorm -> tied embedding head. Weights come from the MLX model as numpy arrays
(`from_mlx`), and tests/test_bench_torch_parity.py checks logits and loss against MLX.

The scan has three forms, all the same arithmetic:
  "eager"  the obvious PyTorch code: a Python loop over time, one autograd op per step piece
  "script" the per-sequence loop as a TorchScript function (loop stays a loop; fewer
           Python dispatches)
  "compile" torch.compile of the per-token step (the loop over time stays in Python)

torch is an optional benchmark extra (`pip install -e .[bench]`); mlx_kssm never imports it.
"""

from __future__ import annotations

import json
import math
import warnings

import mlx_kssm  # noqa: F401  (its BLAS before mlx, and before torch's libraries)
import torch
import torch.nn as tnn
import torch.nn.functional as F

PHASE_EPS = 1e-6  # as mlx_kssm.kernels.reference


def _step(zr, zi, dr, di, k, cr, ci):
    """One token of the recurrence (free run): mean-field coupling, damped rotation, drive."""
    mr = zr.mean(dim=-1, keepdim=True)
    mi = zi.mean(dim=-1, keepdim=True)
    wr = zr + k * (mr - zr)
    wi = zi + k * (mi - zi)
    return dr * wr - di * wi + cr, dr * wi + di * wr + ci


def scan_eager(dr, di, k, cr, ci, z0r, z0i, step=_step):
    zr, zi = z0r, z0i
    outs_r, outs_i = [], []
    for t in range(dr.shape[1]):
        zr, zi = step(zr, zi, dr[:, t], di[:, t], k[:, t], cr[:, t], ci[:, t])
        outs_r.append(zr)
        outs_i.append(zi)
    return torch.stack(outs_r, dim=1), torch.stack(outs_i, dim=1)


def _scan_script_src(dr, di, k, cr, ci, z0r, z0i):
    zr, zi = z0r, z0i
    outs_r = []
    outs_i = []
    for t in range(dr.shape[1]):
        drt, dit, kt = dr[:, t], di[:, t], k[:, t]
        mr = zr.mean(dim=-1, keepdim=True)
        mi = zi.mean(dim=-1, keepdim=True)
        wr = zr + kt * (mr - zr)
        wi = zi + kt * (mi - zi)
        zr, zi = drt * wr - dit * wi + cr[:, t], drt * wi + dit * wr + ci[:, t]
        outs_r.append(zr)
        outs_i.append(zi)
    return torch.stack(outs_r, dim=1), torch.stack(outs_i, dim=1)


_scripted = None
_compiled_step = None


def scan_script(dr, di, k, cr, ci, z0r, z0i):
    global _scripted
    if _scripted is None:
        with warnings.catch_warnings():  # torch 2.10+ marks TorchScript deprecated
            warnings.simplefilter("ignore")
            _scripted = torch.jit.script(_scan_script_src)
    return _scripted(dr, di, k, cr, ci, z0r, z0i)



def scan_compiled(dr, di, k, cr, ci, z0r, z0i):
    global _compiled_step
    if _compiled_step is None:
        _compiled_step = torch.compile(_step, dynamic=False)
    return scan_eager(dr, di, k, cr, ci, z0r, z0i, step=_compiled_step)


SCANS = {"eager": scan_eager, "script": scan_script, "compile": scan_compiled}


def readout(zr, zi, harmonics: int):
    """[Re Z_h, Im Z_h, |Z_h|] of the unit phasors per group and harmonic; r = mean_g |Z_1|."""
    inv = torch.rsqrt(zr * zr + zi * zi + PHASE_EPS)
    pr, pi = zr * inv, zi * inv
    hr, hi = pr, pi
    feats, r_groups = [], None
    for h in range(1, harmonics + 1):
        if h > 1:
            hr, hi = hr * pr - hi * pi, hr * pi + hi * pr
        re = hr.mean(dim=-1)
        im = hi.mean(dim=-1)
        mag = torch.sqrt(re * re + im * im + 1e-12)
        if h == 1:
            r_groups = mag
        feats += [re, im, mag]
    return torch.stack(feats, dim=-1), r_groups.mean(dim=-1)


class RMSNorm(tnn.Module):
    def __init__(self, dims: int, eps: float = 1e-5):
        super().__init__()
        self.weight = tnn.Parameter(torch.ones(dims))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps))


class MLP(tnn.Module):
    def __init__(self, dims: int, hidden: int):
        super().__init__()
        self.norm = RMSNorm(dims)
        self.up = tnn.Linear(dims, hidden)
        self.down = tnn.Linear(hidden, dims)

    def forward(self, x):
        return x + self.down(F.gelu(self.up(self.norm(x))))  # exact (erf) GELU, as mlx nn.gelu


def algebraic_unit(v):
    return v * torch.rsqrt(1 + v * v)


class OscillatorBank(tnn.Module):
    """mlx_kssm.models.kssm.OscillatorBank in PyTorch, designs 1 and 2 (same in_proj layout:
    [Delta (rotation "input")], damping, drive re, drive im, coupling, [gate])."""

    def __init__(self, a: dict):
        super().__init__()
        G, n, D, H = a["n_groups"], a["osc_per_group"], a["d_model"], a["harmonics"]
        N = G * n
        self.G, self.n, self.H = G, n, H
        self.input_rotation = a.get("rotation", "input") == "input"
        self.gate = bool(a.get("gate", False))
        self.algebraic = a.get("squash", "exp") == "algebraic"
        self.sizes = ([N] if self.input_rotation else []) + [N, N, N, G] + ([D] if self.gate else [])
        self.norm = RMSNorm(D)
        self.in_proj = tnn.Linear(D, sum(self.sizes))
        self.omega = tnn.Parameter(torch.linspace(-math.pi, math.pi, N + 1)[:-1].reshape(G, n))
        self.lambda_bias = tnn.Parameter(torch.zeros(G, n))  # loaded from the MLX weights
        self.dt_raw = tnn.Parameter(torch.tensor(0.5413))
        self.z0 = tnn.Parameter(torch.zeros(2, G, n))
        self.out_proj = tnn.Linear(3 * H * G, D)
        self.scan = "eager"

    def _prob(self, v):
        return 0.5 + 0.5 * algebraic_unit(v) if self.algebraic else torch.sigmoid(v)

    def _unit(self, v):
        return algebraic_unit(v) if self.algebraic else torch.tanh(v)

    def forward(self, x):
        B, T, _ = x.shape
        G, n = self.G, self.n
        shape = (B, T, G, n)
        parts = list(torch.split(self.in_proj(self.norm(x)), self.sizes, dim=-1))
        if self.input_rotation:
            alpha = F.softplus(self.dt_raw) * (self.omega + parts.pop(0).reshape(shape))
        else:
            alpha = F.softplus(self.dt_raw) * self.omega
        lam = self._prob(parts[0].reshape(shape) + self.lambda_bias)
        br, bi = self._unit(parts[1]).reshape(shape), self._unit(parts[2]).reshape(shape)
        k = torch.sigmoid(parts[3])[..., None]
        dr, di = lam * torch.cos(alpha), lam * torch.sin(alpha)
        z0r = self.z0[0].expand(B, G, n)
        z0i = self.z0[1].expand(B, G, n)
        zr, zi = SCANS[self.scan](dr, di, k, (1 - lam) * br, (1 - lam) * bi, z0r, z0i)
        features, r = readout(zr, zi, self.H)
        out = self.out_proj(features.reshape(B, T, -1))
        if self.gate:
            g = parts[4]
            out = out * (g * self._prob(g))
        return x + out, r


class Block(tnn.Module):
    def __init__(self, a: dict):
        super().__init__()
        self.bank = OscillatorBank(a)
        self.mlp = MLP(a["d_model"], a["ffn_hidden"])

    def forward(self, x):
        x, r = self.bank(x)
        return self.mlp(x), r


class KSSM(tnn.Module):
    """Model config as the MLX ModelArgs dict; kssm type, order_params readout, tied head."""

    def __init__(self, a: dict):
        super().__init__()
        if a.get("model_type", "kssm") != "kssm" or a.get("readout", "order_params") != "order_params" \
                or a.get("bistable") or not a.get("tie_embeddings", True):
            raise ValueError("the PyTorch twin covers the plain K-SSM (tiny, v1-char, v2) only")
        self.embed = tnn.Embedding(a["vocab_size"], a["d_model"])
        self.layers = tnn.ModuleList([Block(a) for _ in range(a["n_layers"])])
        self.norm = RMSNorm(a["d_model"])

    def set_scan(self, mode: str) -> None:
        if mode not in SCANS:
            raise ValueError(f"scan must be one of {tuple(SCANS)}")
        for layer in self.layers:
            layer.bank.scan = mode

    def forward(self, inputs, return_r: bool = False):
        x = self.embed(inputs)
        rs = []
        for layer in self.layers:
            x, r = layer(x)
            rs.append(r)
        logits = self.norm(x) @ self.embed.weight.T
        return (logits, torch.stack(rs, dim=-1)) if return_r else logits


def from_mlx(mlx_model) -> KSSM:
    """A KSSM with the MLX model's weights (copied through numpy, float32)."""
    import numpy as np
    from mlx.utils import tree_flatten

    model = KSSM(mlx_model.args.to_dict())
    weights = {k: torch.from_numpy(np.array(v, dtype=np.float32))
               for k, v in tree_flatten(mlx_model.parameters())}
    own = dict(model.named_parameters())
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    if missing or extra:
        raise ValueError(f"parameter names differ: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for name, p in own.items():
            if tuple(p.shape) != tuple(weights[name].shape):
                raise ValueError(f"{name}: shape {tuple(p.shape)} vs MLX {tuple(weights[name].shape)}")
            p.copy_(weights[name])
    return model


def loss_fn(model, inputs, targets):
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def make_train_step(model, lr: float = 1e-3, weight_decay: float = 0.01, grad_clip: float = 1.0):
    """AdamW step with global-norm clipping, like the MLX trainer's."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def step(inputs, targets):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, inputs, targets)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        return loss.detach()

    return step


# ------------------------------------------------------------------ speed benchmark (CLI)
#
# Each implementation runs in its own persistent worker process (MLX's OpenBLAS threads and
# PyTorch's OpenMP threads spin-wait after work, and in one process on 2 cores they starve
# each other). The parent alternates: one step in the MLX worker, one in each PyTorch worker,
# repeat; only one worker computes at a time, and every ratio is taken within one round.


def _worker(kind: str, preset: str, vocab: int, batch: int, seq: int, threads: int,
            device: str = "cpu") -> None:
    import sys

    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.integers(0, vocab, (batch, seq)).astype(np.int32)
    y = rng.integers(0, vocab, (batch, seq)).astype(np.int32)
    import mlx.core as mx
    import mlx.nn as nn

    from mlx_kssm import build_model, count_parameters
    from _common import seconds, trainer_step

    model = build_model(preset, vocab_size=vocab, seed=0)
    info = {"n_parameters": count_parameters(model)}
    if kind == "mlx":
        X, Y = mx.array(x), mx.array(y)

        def mlx_loss(m):
            return nn.losses.cross_entropy(m(X), Y).mean()

        info["loss"] = float(mlx_loss(model))
        train_step, _ = trainer_step(model, batch, seq)  # the trainer's step: AdamW, clip 1.0

        def step():
            train_step(X, Y)
    else:
        scan, _, nthreads = kind.partition("@")  # e.g. "eager@1": eager with 1 thread
        torch.set_num_threads(int(nthreads) if nthreads else threads)
        tmodel = from_mlx(model).to(device)
        tmodel.set_scan(scan)
        tx, ty = torch.from_numpy(x).long().to(device), torch.from_numpy(y).long().to(device)
        with torch.no_grad():
            info["loss"] = float(loss_fn(tmodel, tx, ty))
        info["threads"] = torch.get_num_threads()
        train_step = make_train_step(tmodel)

        def step():
            train_step(tx, ty)
            if device != "cpu":  # CUDA work is asynchronous: time it to completion
                torch.cuda.synchronize()
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        print(seconds(step), flush=True)


def bench(presets, vocab: int, batch: int, seq: int, repeats: int, warmup: int, variants,
          threads: int, device: str = "cpu") -> dict:
    import os
    import statistics
    import subprocess
    import sys

    out = {"torch": torch.__version__, "torch_threads": threads, "torch_device": device,
           "mlx_threads": "MLX CPU ops run on one thread; matmuls go to OpenBLAS with "
                          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset (all cores)')}, "
                          f"{os.cpu_count()} cores",
           "batch": batch, "seq_len": seq, "vocab": vocab,
           "method": "one persistent worker process per implementation, same seed-0 weights and "
                     "batch; per round one step each, in turn; ratio per round; warmup steps "
                     "(MLX compile, TorchScript profiling runs, torch.compile) not timed",
           "presets": {}}
    for preset in presets:
        kinds = ["mlx", *variants]
        procs = {}
        for k in kinds:
            procs[k] = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--worker", k, "--presets", preset,
                 "--vocab", str(vocab), "--batch", str(batch), "--seq", str(seq),
                 "--threads", str(threads), "--device", device],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            info = {k: json.loads(p.stdout.readline()) for k, p in procs.items()}

            def run(k):
                procs[k].stdin.write("step\n")
                procs[k].stdin.flush()
                line = procs[k].stdout.readline()
                if not line:
                    raise RuntimeError(f"{k} worker died")
                return float(line)

            parity = {f"{k}_loss": info[k]["loss"] for k in kinds}
            parity["max_abs_diff"] = max(abs(info[k]["loss"] - info["mlx"]["loss"]) for k in variants)
            if parity["max_abs_diff"] > 1e-3:
                raise SystemExit(f"{preset}: PyTorch twin disagrees with MLX: {parity}")
            first = {k: [run(k) for _ in range(warmup)] for k in kinds}
            times = {k: [] for k in kinds}
            for _ in range(repeats):
                for k in kinds:
                    times[k].append(run(k))
        finally:
            for p in procs.values():
                try:
                    p.stdin.close()
                except OSError:
                    pass
                p.wait(timeout=60)
        tokens = batch * seq
        row = {"n_parameters": info["mlx"]["n_parameters"], "parity": parity,
               "warmup_step_s": first, "tokens_per_sec": {}, "ratio_mlx_over_torch": {}}
        for k, ts in times.items():
            tps = [tokens / t for t in ts]
            row["tokens_per_sec"][k] = {"median": statistics.median(tps), "min": min(tps),
                                        "max": max(tps), "runs": len(tps)}
        for v in variants:
            ratios = [b / a for a, b in zip(times["mlx"], times[v])]  # = tps_mlx / tps_torch
            row["ratio_mlx_over_torch"][v] = {"median": statistics.median(ratios),
                                              "min": min(ratios), "max": max(ratios)}
        out["presets"][preset] = row
        print(f"[torch] {preset}: {json.dumps(row['ratio_mlx_over_torch'])}", file=sys.stderr,
              flush=True)
    return out


def main():
    import argparse
    import os
    import sys

    ap = argparse.ArgumentParser(description="MLX vs PyTorch K-SSM train step; prints JSON")
    ap.add_argument("--presets", default="tiny,v2")
    ap.add_argument("--vocab", type=int, default=21075,
                    help="the compacted cl100k vocab of the Shakespeare corpus")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--variants", default="eager,script,eager@1",
                    help="eager,script,compile; NAME@K runs it with K torch threads")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu",
                    help="PyTorch's device: cpu, or cuda beside MLX's CUDA build (same GPU)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker, args.presets, args.vocab, args.batch, args.seq, args.threads,
                args.device)
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import emit, machine

    res = bench([p for p in args.presets.split(",") if p], args.vocab, args.batch, args.seq,
                args.repeats, args.warmup, [v for v in args.variants.split(",") if v],
                args.threads, args.device)
    res = {"part": "torch", "command": "python research/bench/torch_kssm.py " + " ".join(sys.argv[1:]),
           "machine": machine(), **res}
    emit(res, args.out)


if __name__ == "__main__":
    main()
