"""Optimizers: AdamW (default), Muon for the 2-D weight matrices (AdamW for the rest, as Muon
is meant to be used), and the optional Grokfast EMA gradient filter (Lee et al. 2024)."""

from __future__ import annotations

import mlx.core as mx
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map, tree_unflatten


def build_optimizer(name: str, learning_rate: float, weight_decay: float,
                    muon_lr_scale: float = 10.0):
    if name == "adamw":
        return optim.AdamW(learning_rate=learning_rate, weight_decay=weight_decay)
    if name == "muon":
        return MuonAdamW(learning_rate, weight_decay, muon_lr_scale)
    raise ValueError(f"unknown optimizer {name!r}; choose adamw or muon")


def _muon_filter(path: str, weight) -> bool:
    # hidden matrices only: embeddings (tied to the output) and vectors stay with AdamW
    return weight.ndim == 2 and "embed" not in path and "lm_head" not in path


class MuonAdamW(optim.MultiOptimizer):
    """Muon on hidden weight matrices at `muon_lr_scale` x the LR, AdamW on everything else."""

    def __init__(self, learning_rate: float, weight_decay: float, muon_lr_scale: float):
        self.muon_lr_scale = muon_lr_scale
        super().__init__([optim.Muon(learning_rate * muon_lr_scale, weight_decay=weight_decay),
                          optim.AdamW(learning_rate, weight_decay=weight_decay)],
                         [_muon_filter])

    @property
    def learning_rate(self):
        return self.optimizers[1].learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.optimizers[0].learning_rate = learning_rate * self.muon_lr_scale
        self.optimizers[1].learning_rate = learning_rate


def set_learning_rate(optimizer, lr: float) -> None:
    optimizer.learning_rate = mx.array(lr, dtype=mx.float32)


class Grokfast:
    """Grokfast-EMA: g <- g + lambda * ema(g). The EMA lives in `state` so the compiled step
    carries it and checkpoints save it (resume stays exact)."""

    def __init__(self, parameters, alpha: float = 0.98, lamb: float = 2.0, enabled: bool = True):
        self.alpha, self.lamb, self.enabled = alpha, lamb, enabled
        self.state = {"ema": tree_map(mx.zeros_like, parameters) if enabled else {}}

    def __call__(self, grads):
        if not self.enabled:
            return grads
        a = self.alpha
        ema = tree_map(lambda e, g: a * e + (1 - a) * g, self.state["ema"], grads)
        self.state["ema"] = ema
        return tree_map(lambda g, e: g + self.lamb * e, grads, ema)

    def arrays(self) -> dict:
        return dict(tree_flatten(self.state["ema"])) if self.enabled else {}

    def load_arrays(self, arrays: dict) -> None:
        if self.enabled and arrays:
            self.state["ema"] = tree_unflatten(list(arrays.items()))


def optimizer_arrays(optimizer) -> dict:
    return dict(tree_flatten(optimizer.state))


def load_optimizer_arrays(optimizer, arrays: dict) -> None:
    optimizer.state = tree_unflatten(list(arrays.items()))


GROKFAST_PREFIX = "grokfast."  # names of the Grokfast EMA among a checkpoint's arrays


def checkpoint_arrays(optimizer, grokfast: Grokfast) -> dict:
    """What a checkpoint's optimizer.safetensors holds: the optimizer's state and the Grokfast
    EMA (its names prefixed), flat names -> arrays."""
    arrays = optimizer_arrays(optimizer)
    arrays.update({GROKFAST_PREFIX + k: v for k, v in grokfast.arrays().items()})
    return arrays


def restore_checkpoint_arrays(optimizer, grokfast: Grokfast, arrays: dict, parameters) -> None:
    """Put `checkpoint_arrays`' output back into a freshly built optimizer and filter."""
    load_optimizer_arrays(optimizer, {k: v for k, v in arrays.items()
                                      if not k.startswith(GROKFAST_PREFIX)})
    optimizer.init(parameters)
    grokfast.load_arrays({k[len(GROKFAST_PREFIX):]: v for k, v in arrays.items()
                          if k.startswith(GROKFAST_PREFIX)})
