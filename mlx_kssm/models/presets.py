"""Named model presets (SPEC 3.3) with the training defaults that go with them."""

from __future__ import annotations

import dataclasses

from .base import ModelArgs

_TINY = dict(d_model=64, n_layers=2, ffn_hidden=256, n_groups=8, osc_per_group=8, harmonics=3)
_V2 = dict(d_model=256, n_layers=4, ffn_hidden=1024, n_groups=8, osc_per_group=16, harmonics=4,
           vocab_size=100277)

# name -> (what it is, ModelArgs overrides, training defaults)
PRESETS: dict = {
    "tiny": ("K-SSM for tests and smoke runs: seconds per step on a laptop CPU",
             dict(_TINY), dict(tokenizer="cl100k_base", seq_len=128, batch_size=16,
                               learning_rate=3e-3)),
    "v1-char": ("character-level K-SSM (the seeds' TinyShakespeare proof of concept)",
                dict(d_model=128, n_layers=2, ffn_hidden=512, n_groups=8, osc_per_group=16,
                     harmonics=4, vocab_size=257),
                dict(tokenizer="bytes", seq_len=256, batch_size=16, learning_rate=2e-3)),
    "v2": ("4 layers, hidden 256, 128 oscillators per layer, BPE (~28M parameters)",
           dict(_V2), dict(tokenizer="cl100k_base", seq_len=256, batch_size=8,
                           learning_rate=1e-3)),
    "v3": ("v2 plus the bistable core (u in [0.1, 10], K = 2 sigma(u), regularizer)",
           dict(_V2, bistable=True), dict(tokenizer="cl100k_base", seq_len=256, batch_size=8,
                                           learning_rate=1e-3)),
    "transformer": ("causal transformer parameter-matched to v2 (comparison)",
                    dict(_V2, model_type="transformer", n_heads=4),
                    dict(tokenizer="cl100k_base", seq_len=256, batch_size=8, learning_rate=1e-3)),
    "transformer-tiny": ("causal transformer parameter-matched to tiny (comparison)",
                         dict(_TINY, model_type="transformer", n_heads=4),
                         dict(tokenizer="cl100k_base", seq_len=128, batch_size=16,
                              learning_rate=3e-3)),
    "upstream-v3": ("the earlier per-position v3 design, v2 sizes (comparison)",
                    dict(_V2, model_type="upstream_v3", bistable=True),
                    dict(tokenizer="cl100k_base", seq_len=256, batch_size=8, learning_rate=1e-3)),
    "upstream-v3-tiny": ("the earlier per-position v3 design, tiny sizes (comparison)",
                         dict(_TINY, model_type="upstream_v3", bistable=True),
                         dict(tokenizer="cl100k_base", seq_len=128, batch_size=16,
                              learning_rate=3e-3)),
    "control-bolted": ("negative control, v2 sizes: R computed but bypassed by the output",
                       dict(_V2, readout="bolted"),
                       dict(tokenizer="cl100k_base", seq_len=256, batch_size=8,
                            learning_rate=1e-3)),
    "control-bolted-tiny": ("negative control, tiny sizes: R computed but bypassed",
                            dict(_TINY, readout="bolted"),
                            dict(tokenizer="cl100k_base", seq_len=128, batch_size=16,
                                 learning_rate=3e-3)),
}

# transformer presets get their FFN width from the K-SSM they are matched to
_MATCHED = {"transformer": "v2", "transformer-tiny": "tiny"}


def preset_names() -> list:
    return list(PRESETS)


def preset_train_defaults(name: str) -> dict:
    return dict(_lookup(name)[2])


def _lookup(name: str):
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
    return PRESETS[name]


def _mixer_params(args: ModelArgs) -> int:
    """Parameters of one layer's token mixer (oscillator bank or attention)."""
    D, N, G = args.d_model, args.n_oscillators, args.n_groups
    if args.model_type == "transformer":
        return D + 4 * D * D
    coupling = 10 if args.bistable else G
    return D + (D + 1) * (4 * N + coupling) + 4 * N + 1 + (3 * args.harmonics * G + 1) * D


def preset_args(name: str, **overrides) -> ModelArgs:
    _, model, _ = _lookup(name)
    args = ModelArgs.from_dict({**model, "preset": name, **overrides})
    if name in _MATCHED and "ffn_hidden" not in overrides:
        base = ModelArgs.from_dict({**_lookup(_MATCHED[name])[1], **overrides,
                                    "model_type": "kssm"})
        extra = _mixer_params(base) - _mixer_params(args)
        args = dataclasses.replace(args, ffn_hidden=max(1, base.ffn_hidden
                                                        + round(extra / (2 * args.d_model + 1))))
    return args.validate()
