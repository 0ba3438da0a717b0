"""One optimizer step: the loss, the compiled forward/backward + accumulate + average + clip +
update (`make_step`), and the record a step reports (`step_record`)."""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map


def loss_fn(model, inputs, targets):
    """(cross-entropy + the model's regularizer, metrics): CE and the regularizer apart, and
    for oscillator models R per layer and v3's u statistics (means over batch and time)."""
    logits, r, aux = model(inputs, return_r=True, return_aux=True)
    ce = nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="mean")
    reg = aux["reg"]
    metrics = {"ce": ce, "reg": reg}
    if r is not None:
        metrics["R_layers"] = mx.mean(r.astype(mx.float32), axis=(0, 1))
    if aux.get("u") is not None:
        metrics["u"], metrics["u_at_bound"] = aux["u"], aux["u_at_bound"]
    return ce + reg, metrics


def make_step(model, optimizer, grokfast, *, grad_accum: int, grad_clip: float, world: int):
    """The compiled step (mlx-lm style: model, optimizer, filter and RNG state are inputs and
    outputs of the compiled graph), and that state (evaluate it after each step).

    `step(inputs, targets, prev_grads, do_update)` returns (loss, metrics, grads-or-None,
    grad_norm-or-None); grads accumulate (summed) over the `grad_accum` micro-batches of a
    step and, when `do_update`, are averaged over them and over `world` processes, filtered
    (`grokfast`), clipped to norm `grad_clip` (0: no clipping) and applied. The grad norm
    reported is the averaged gradient's, before filter and clip."""
    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, optimizer.state, grokfast.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(inputs, targets, prev_grads, do_update):
        (loss, metrics), grads = loss_and_grad(model, inputs, targets)
        if prev_grads is not None:
            grads = tree_map(lambda a, b: a + b, grads, prev_grads)
        if not do_update:
            return loss, metrics, grads, None
        if grad_accum > 1:
            grads = tree_map(lambda g: g / grad_accum, grads)
        if world > 1:
            grads = nn.average_gradients(grads)
            loss = mx.distributed.all_sum(loss) / world
            metrics = tree_map(lambda m: mx.distributed.all_sum(m) / world, metrics)
        grad_norm = optim.clip_grad_norm(grads, float("inf"))[1]
        grads = grokfast(grads)
        if grad_clip > 0:
            grads, _ = optim.clip_grad_norm(grads, grad_clip)
        optimizer.update(model, grads)
        return loss, metrics, None, grad_norm

    return step, state


def step_record(losses: list, metrics: list, grad_norm, lr: float) -> dict:
    """What one optimizer step reports, from its micro-batches' losses and metrics (evaluated
    arrays): their means, the grad norm and the LR the step used."""
    def mean(values):
        values = [float(x) for x in values]
        return sum(values) / len(values)

    record = {"loss": mean(losses), "ce": mean(m["ce"] for m in metrics),
              "reg": mean(m["reg"] for m in metrics), "grad_norm": float(grad_norm), "lr": lr}
    if "R_layers" in metrics[0]:
        per_micro = [m["R_layers"].tolist() for m in metrics]
        record["R_layers"] = [sum(col) / len(col) for col in zip(*per_micro)]
    if "u" in metrics[0]:
        record["u"] = mean(m["u"] for m in metrics)
        record["u_at_bound"] = mean(m["u_at_bound"] for m in metrics)
    return record
