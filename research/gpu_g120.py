"""v2 at the user's scale on one GPU: the compacted Gutenberg-120 tokens, one pass, no repetition.

    python research/gpu_g120.py --data DIR --out DIR [--parts quality,throughput,...]
        [--deadline-s 540] [--dry-run]

Parts, in the order GPU time should go to them (each writes OUT/PART.json as soon as it ends,
and a part whose time would run past --deadline-s is not started):

1. quality1    v2 and its matched transformer, seed 0: one pass over the train split
               (--sampling epoch, batch 64 x 256), val every tenth of the pass.
2. quality2    the bolted control at seed 0, then all three at seed 1.
3. throughput  training tokens/s, v2 / transformer, at seq 256, 1024 and 4096 (16,384 tokens
               per step at each), interleaved rounds: median [min-max] and the ratio.
4. decode      greedy decode tokens/s after 64 and 4,096 tokens of context: v2's O(1)
               oscillator state against the transformer's KV cache.
5. medium      v2-medium and its transformer, seed 0, the same pass (skipped when the
               preset is absent).
6. suite       the test suite on this build (pytest, junit XML): the failures by name.
7. capacity    the recurrence's capacity: each variant of research/variants/capacity-v2.toml
               (one change against v2), seed 0, the same pass; compare with quality1's v2 and
               transformer.

--dry-run runs every part on this machine's CPU at toy sizes (tiny presets, a few steps, short
contexts) so the script is checked end to end before GPU time is spent on it.

On the GPU machine (see the project's GPU guide for installing MLX's CUDA wheels), after the
tokens arrive (prepared with `data prepare --tokenizer cl100k_base`, compacted: uint16):

    export PYTHONPATH=/tmp/site:$PWD
    python research/gpu_g120.py --data data/prepared/g120-cl100k --out $OUT --parts quality1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import mlx_kssm  # noqa: F401  (OpenBLAS before mlx on Linux)
import mlx.core as mx
import numpy as np

from mlx_kssm import build_model
from mlx_kssm.data.loader import TokenDataset
from mlx_kssm.machine import environment
from mlx_kssm.models.presets import PRESETS
from mlx_kssm.study.variants import load_variants, save_initial_weights, variant_train_value
from mlx_kssm.train.config import TrainConfig
from mlx_kssm.train.trainer import read_history, train

PARTS = ("quality1", "quality2", "throughput", "decode", "medium", "suite", "capacity")
CAPACITY = Path(__file__).resolve().parent / "variants" / "capacity-v2.toml"
FULL = {"batch": 64, "seq": 256, "evals": 10, "val_batches": 20, "models":
        ("v2", "transformer", "control-bolted"), "medium": ("v2-medium", "transformer-v2-medium"),
        "throughput_seqs": (256, 1024, 4096), "step_tokens": 16384, "timed_steps": 20,
        "rounds": 3, "contexts": (64, 4096), "decode_tokens": 200, "max_steps": None}
DRY = {"batch": 4, "seq": 32, "evals": 2, "val_batches": 2, "models":
       ("tiny", "transformer-tiny", "control-bolted-tiny"), "medium": ("tiny", "transformer-tiny"),
       "throughput_seqs": (32, 64), "step_tokens": 256, "timed_steps": 2, "rounds": 2,
       "contexts": (8, 64), "decode_tokens": 8, "max_steps": 6}


def one_pass_steps(data: str, scale: dict) -> int:
    """Steps that see every train token once: windows of seq tokens, batch windows a step."""
    n_windows = (len(TokenDataset(data, "train")) - 1) // scale["seq"]
    return scale["max_steps"] or n_windows // scale["batch"]


def train_run(model: str, seed: int, args, scale: dict, variant: dict | None = None) -> dict:
    """One pass of preset `model`, or of the study variant named `model` (`variant`: its
    definition, trained from its initial weights as `mlx-kssm study` trains one)."""
    steps = one_pass_steps(args.data, scale)
    run_dir = Path(args.runs) / f"{model}_s{seed}"
    start = {"preset": model}
    if variant is not None:
        init = save_initial_weights(variant, seed, TokenDataset(args.data, "train").vocab_size,
                                    Path(args.runs) / "variants" / f"{model}_s{seed}")
        start = {"model": str(init),
                 "learning_rate": variant_train_value(variant, "learning_rate", None),
                 "weight_decay": variant_train_value(variant, "weight_decay", None)}
    config = TrainConfig(**start, data=args.data, output_dir=str(run_dir),
                         batch_size=scale["batch"], seq_len=scale["seq"], max_steps=steps,
                         sampling="epoch", steps_per_eval=max(1, steps // scale["evals"]),
                         steps_per_report=max(1, steps // 20), val_batches=scale["val_batches"],
                         save_every=steps, seed=seed, resume=(run_dir / "checkpoints").exists())
    started = time.perf_counter()
    result = train(config, echo=lambda line: print(line, flush=True))
    history = read_history(run_dir)
    evals = [(e["step"], e["val_loss"]) for e in history if e.get("event") == "eval"]
    rates = [e["tokens_per_sec"] for e in history
             if e.get("event") == "train" and e.get("tokens_per_sec")]
    best = min(evals, key=lambda e: e[1]) if evals else (None, None)
    return {"model": model, "seed": seed, "steps": steps, "exit_code": result.exit_code,
            "tokens": steps * scale["batch"] * scale["seq"],
            "train_split_tokens": len(TokenDataset(args.data, "train")),
            "best_val_loss": best[1], "best_step": best[0],
            "final_val_loss": evals[-1][1] if evals else None, "val_curve": evals,
            "tokens_per_sec_median": statistics.median(rates) if rates else None,
            "seconds": time.perf_counter() - started}


def quality(plan, args, scale) -> dict:
    return {"runs": [train_run(model, seed, args, scale) for model, seed in plan]}


def capacity(args, scale) -> dict:
    """Each capacity variant at seed 0 (a dry run puts them on tiny, their changes kept)."""
    variants = load_variants(CAPACITY)
    if args.dry_run:
        variants = {name: {**v, "preset": "tiny"} for name, v in variants.items()}
    return {"variants": variants,
            "runs": [train_run(name, 0, args, scale, v) for name, v in variants.items()]}


def step_seconds(model_name: str, seq: int, args, scale: dict, vocab: int) -> list:
    """Seconds per compiled training step (forward, backward, AdamW) after a warm-up."""
    import mlx.nn as nn
    import mlx.optimizers as optim

    model = build_model(model_name, vocab_size=vocab, seed=0)
    optimizer = optim.AdamW(learning_rate=1e-4)
    batch = max(1, scale["step_tokens"] // seq)
    tokens = mx.array(np.random.default_rng(0).integers(0, vocab, (batch, seq + 1)))

    def loss_fn(m, x, y):
        return nn.losses.cross_entropy(m(x), y).mean()

    state = [model.state, optimizer.state]

    def step(x, y):
        loss, grads = nn.value_and_grad(model, loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss
    step = mx.compile(step, inputs=state, outputs=state)
    times = []
    for i in range(scale["timed_steps"] + 2):
        start = time.perf_counter()
        mx.eval(step(tokens[:, :-1], tokens[:, 1:]), state)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return times


def throughput(args, scale) -> dict:
    vocab = TokenDataset(args.data, "train").vocab_size
    kssm, attention = scale["models"][:2]
    rows = []
    for seq in scale["throughput_seqs"]:
        rounds = []
        for _ in range(scale["rounds"]):  # interleaved: both models see the same machine state
            k = statistics.median(step_seconds(kssm, seq, args, scale, vocab))
            t = statistics.median(step_seconds(attention, seq, args, scale, vocab))
            rounds.append({"kssm_tokens_per_sec": scale["step_tokens"] / k,
                           "transformer_tokens_per_sec": scale["step_tokens"] / t,
                           "ratio": t / k})
        rows.append({"seq": seq, "rounds": rounds, **_spread([r["ratio"] for r in rounds])})
    return {"models": [kssm, attention], "rows": rows}


def decode_rate(model, context: int, n_new: int, vocab: int) -> float:
    """Greedy tokens/s after a prompt of `context` tokens, one cached call per token."""
    prompt = mx.array(np.random.default_rng(1).integers(0, vocab, (1, context)))
    cache = model.make_cache()
    logits = model(prompt, cache=cache)
    token = mx.argmax(logits[:, -1:], axis=-1)
    mx.eval(token)
    start = time.perf_counter()
    for _ in range(n_new):
        token = mx.argmax(model(token, cache=cache)[:, -1:], axis=-1)
        mx.eval(token)
    return n_new / (time.perf_counter() - start)


def decode(args, scale) -> dict:
    vocab = TokenDataset(args.data, "train").vocab_size
    out = {}
    for name in scale["models"][:2]:
        model = build_model(name, vocab_size=vocab, seed=0)
        out[name] = {str(c): [decode_rate(model, c, scale["decode_tokens"], vocab)
                              for _ in range(scale["rounds"])] for c in scale["contexts"]}
    return {"contexts": list(scale["contexts"]), "tokens_per_sec": out}


def suite(args, scale) -> dict:
    xml = Path(args.out) / "suite.xml"
    tests = "tests/test_data_loader.py" if args.dry_run else "tests"
    cmd = [sys.executable, "-m", "pytest", tests, "-q", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    tail = (done.stdout + done.stderr).strip().splitlines()[-40:]
    return {"exit_code": done.returncode, "tail": tail, "failed": _failed_tests(xml)}


def _failed_tests(xml: Path) -> list:
    import xml.etree.ElementTree as ET
    if not xml.exists():
        return []
    failed = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        for problem in list(case.findall("failure")) + list(case.findall("error")):
            failed.append({"test": f"{case.get('classname')}::{case.get('name')}",
                           "message": (problem.get("message") or "")[:300]})
    return failed


def _spread(values) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_part(part: str, args, scale: dict):
    models, seeds = scale["models"], (0, 1)
    if part == "quality1":
        return quality([(models[0], 0), (models[1], 0)], args, scale)
    if part == "quality2":
        return quality([(models[2], 0)] + [(m, 1) for m in models], args, scale)
    if part == "medium":
        present = [m for m in scale["medium"] if m in PRESETS]
        if len(present) < 2:
            return {"skipped": f"presets {', '.join(scale['medium'])} not all defined"}
        return quality([(m, seeds[0]) for m in present], args, scale)
    return {"throughput": throughput, "decode": decode, "suite": suite,
            "capacity": capacity}[part](args, scale)


def main(argv=None) -> int:
    args = parse(argv)
    scale = DRY if args.dry_run else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "environment.json").write_text(json.dumps(environment(), indent=1, default=str))
    started = time.monotonic()
    for part in args.parts:
        spent = time.monotonic() - started
        if spent > args.deadline_s:
            print(f"[gpu_g120] {part}: not started ({spent:.0f} s of {args.deadline_s} spent)")
            continue
        print(f"[gpu_g120] {part}: starting at {spent:.0f} s", flush=True)
        result = {"part": part, "device": str(mx.default_device()), "dry_run": args.dry_run,
                  "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
                  **run_part(part, args, scale)}
        result["seconds"] = time.monotonic() - started - spent
        (out / f"{part}.json").write_text(json.dumps(result, indent=1, default=str))
        print(f"[gpu_g120] {part}: done in {result['seconds']:.0f} s -> {out / part}.json",
              flush=True)
    return 0


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="prepared, compacted cl100k Gutenberg tokens")
    p.add_argument("--out", required=True, help="where each part's JSON goes ($OUT on the GPU)")
    p.add_argument("--runs", default="/tmp/g120_runs", help="training run folders (not carried back)")
    p.add_argument("--parts", default=",".join(PARTS),
                   type=lambda s: [x for x in s.split(",") if x])
    p.add_argument("--deadline-s", type=float, default=540,
                   help="start no part after this many seconds")
    p.add_argument("--dry-run", action="store_true", help="every part at toy size, on any device")
    args = p.parse_args(argv)
    unknown = [x for x in args.parts if x not in PARTS]
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    return args


if __name__ == "__main__":
    sys.exit(main())
