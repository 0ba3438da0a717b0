"""A small causal transformer on the same interface: the comparison model (presets.py)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .base import MLP, LanguageModel, ModelArgs, causal_mask, check_layer_cache_kind


class KVCache:
    def __init__(self):
        self.keys = None
        self.values = None
        self.offset = 0

    def update(self, k, v):
        if self.keys is not None:
            k = mx.concatenate([self.keys, k], axis=2)
            v = mx.concatenate([self.values, v], axis=2)
        self.keys, self.values = k, v
        self.offset = k.shape[2]
        return k, v


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        if args.d_model % args.n_heads:
            raise ValueError(f"d_model {args.d_model} is not divisible by n_heads {args.n_heads}")
        self.n_heads = args.n_heads
        self.head_dim = args.d_model // args.n_heads
        self.norm = nn.RMSNorm(args.d_model)
        self.qkv = nn.Linear(args.d_model, 3 * args.d_model, bias=False)
        self.out = nn.Linear(args.d_model, args.d_model, bias=False)
        self.rope = nn.RoPE(self.head_dim)

    def __call__(self, x, cache: KVCache | None = None):
        B, T, D = x.shape
        q, k, v = mx.split(self.qkv(self.norm(x)), 3, axis=-1)
        q, k, v = (a.reshape(B, T, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)
                   for a in (q, k, v))
        offset = cache.offset if cache is not None else 0
        q, k = self.rope(q, offset=offset), self.rope(k, offset=offset)
        if cache is not None:
            k, v = cache.update(k, v)
        mask = causal_mask(T, offset) if T > 1 else None
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim ** -0.5, mask=mask)
        return x + self.out(o.transpose(0, 2, 1, 3).reshape(B, T, D))


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attn = Attention(args)
        self.mlp = MLP(args.d_model, args.ffn_hidden)

    def __call__(self, x, cache=None):
        return self.mlp(self.attn(x, cache))


class Model(LanguageModel):
    has_r = False  # no oscillators: forcing R is refused (ForceR), return_r gives None

    def __init__(self, args: ModelArgs):
        super().__init__(args, Block)

    def make_cache(self):
        return [KVCache() for _ in self.layers]

    def check_layer_cache(self, i, layer_cache, batch):
        """Filled keys are (B, heads, S, head_dim): another batch or model fails to concatenate."""
        check_layer_cache_kind(i, layer_cache, KVCache)
        if layer_cache.keys is None:
            return
        heads = self.args.n_heads
        expected = (batch, heads, self.args.d_model // heads)
        keys = layer_cache.keys.shape
        got = (keys[0], keys[1], keys[3])
        if got != expected:
            raise ValueError(f"cache[{i}] holds keys of shape {got} (batch, heads, head_dim), "
                             f"but the inputs and model need {expected}")

    def __call__(self, inputs, cache=None, force_r=None, return_r=False, return_aux=False):
        """inputs (B, T) int -> logits (B, T, V). Token ids must lie in [0, vocab_size): not
        checked here, for speed; the data loaders check them."""
        def step(i, x, _force):
            return self.layers[i](x, None if cache is None else cache[i]), None, None
        return self.run(inputs, force_r, step, return_r, return_aux, cache)
