"""The minimal training loop the tests share: compiled Adam steps on batches a callable gives.
(The real trainer is tested in test_train_*; these tests need a briefly trained model fast.)"""

import mlx_kssm  # noqa: F401  (before mlx: loads OpenBLAS)

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim


def fit(model, batch, steps: int, loss_fn=None, learning_rate: float = 3e-3) -> list:
    """Train `model` in place for `steps` steps on `batch(i) -> (inputs, targets)`; returns the
    losses. `loss_fn(model, x, y)` defaults to next-token cross-entropy at every position."""
    loss_fn = loss_fn or (lambda m, x, y: nn.losses.cross_entropy(m(x), y).mean())
    opt = optim.Adam(learning_rate=learning_rate)
    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, opt.state]

    def step(x, y):
        loss, grads = loss_and_grad(model, x, y)
        opt.update(model, grads)
        return loss

    step = mx.compile(step, inputs=state, outputs=state)
    losses = []
    for i in range(steps):
        loss = step(*(mx.array(a) for a in batch(i)))
        mx.eval(state)
        losses.append(loss.item())
    return losses
