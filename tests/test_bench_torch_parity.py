"""The PyTorch twin used by the speed benchmark computes what the MLX K-SSM computes.

research/bench/torch_kssm.py re-implements the model for a MLX-vs-PyTorch speed comparison;
the comparison means something only if both compute the same function from the same weights.
Skipped when torch (the `bench` extra) is not installed.
"""

from __future__ import annotations

import os
import sys

import pytest

import mlx_kssm  # noqa: F401  (BLAS before mlx and torch)

torch = pytest.importorskip("torch")

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from mlx_kssm import build_model  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "research", "bench"))
import torch_kssm  # noqa: E402

V, B, T = 97, 2, 24


@pytest.fixture(scope="module", params=["design2", "design1"])
def pair(request):
    torch.set_num_threads(1)
    design1 = {"design": 1, "rotation": "input", "gate": False, "squash": "exp"}
    model = build_model("tiny", vocab_size=V, seed=3,
                        **(design1 if request.param == "design1" else {}))
    # move every weight off its init so a mix-up of two same-shaped tensors cannot hide
    rng = np.random.default_rng(7)
    model.update(mlx_kssm_tree(model, rng))
    mx.eval(model.parameters())
    return model, torch_kssm.from_mlx(model)


def mlx_kssm_tree(model, rng):
    from mlx.utils import tree_unflatten
    flat = [(k, v + mx.array(0.05 * rng.standard_normal(v.shape).astype(np.float32)))
            for k, v in tree_flatten(model.parameters())]
    return tree_unflatten(flat)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, V, (B, T)).astype(np.int32)
    y = rng.integers(0, V, (B, T)).astype(np.int32)
    return x, y


@pytest.mark.parametrize("scan", ["eager", "script"])
def test_same_logits_r_and_loss(pair, scan):
    model, tmodel = pair
    tmodel.set_scan(scan)
    x, y = _data()
    logits, r = model(mx.array(x), return_r=True)
    loss = nn.losses.cross_entropy(logits, mx.array(y)).mean()
    with torch.no_grad():
        tlogits, tr = tmodel(torch.from_numpy(x).long(), return_r=True)
        tloss = torch_kssm.loss_fn(tmodel, torch.from_numpy(x).long(), torch.from_numpy(y).long())
    np.testing.assert_allclose(tlogits.numpy(), np.array(logits), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(tr.numpy(), np.array(r), atol=1e-5)
    assert abs(float(tloss) - float(loss)) < 1e-4
    # the context really flows through the recurrence in the twin too
    x2 = x.copy()
    x2[:, 0] = (x2[:, 0] + 1) % V
    with torch.no_grad():
        changed = tmodel(torch.from_numpy(x2).long())
    assert (changed[:, -1] - tlogits[:, -1]).abs().max() > 1e-6


def test_same_gradients(pair):
    model, tmodel = pair
    tmodel.set_scan("eager")
    x, y = _data(1)

    def loss_fn(m):
        return nn.losses.cross_entropy(m(mx.array(x)), mx.array(y)).mean()

    _, grads = nn.value_and_grad(model, loss_fn)(model)
    grads = dict(tree_flatten(grads))
    tmodel.zero_grad()
    torch_kssm.loss_fn(tmodel, torch.from_numpy(x).long(), torch.from_numpy(y).long()).backward()
    for name, p in tmodel.named_parameters():
        g = np.array(grads[name])
        scale = max(float(np.abs(g).max()), 1e-6)
        np.testing.assert_allclose(p.grad.numpy() / scale, g / scale, atol=1e-3, err_msg=name)


def test_weights_must_match_by_name():
    model = build_model("tiny", vocab_size=V, seed=0)
    tmodel = torch_kssm.from_mlx(model)
    names = {k for k, _ in tree_flatten(model.parameters())}
    assert names == {k for k, _ in tmodel.named_parameters()}
    with pytest.raises(ValueError):
        torch_kssm.KSSM({**model.args.to_dict(), "readout": "bolted"})
