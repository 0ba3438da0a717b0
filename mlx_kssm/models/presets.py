"""Named model presets with the training defaults that go with them.

Five K-SSM presets (`tiny`, `v1-char`, `v2`, `v2-medium`, `v3`); each has three comparison
presets built from its own sizes, so a comparison is always like for like:

    transformer-*     a causal transformer with the same width and depth, its FFN widened or
                      narrowed so the parameter count matches the K-SSM's
    control-bolted-*  the same K-SSM with the raw-state readout (R bypassed: negative control)
    upstream-v3-*     the earlier per-position design at the same sizes

`comparison_presets(name)` names them; `mlx-kssm train --list-presets` prints them all.
"""

from __future__ import annotations

import dataclasses

from .base import ModelArgs
from .bistable import N_PROJECTIONS

# Banks of groups of 4 oscillators read through their first order parameter Z_1 alone
# (harmonics=1). The char presets spend most of their MLP on a wide bank (the readout's
# bandwidth is what the order parameters lack); tiny keeps a narrower one (its embedding is most
# of the model). How each size was measured: research/RESULTS.md sections 6, 8 and 12.
_TINY = dict(d_model=64, n_layers=2, ffn_hidden=256, n_groups=16, osc_per_group=4, harmonics=1)
_CHAR = dict(d_model=128, n_layers=4, ffn_hidden=128, n_groups=80, osc_per_group=4, harmonics=1,
             vocab_size=257)
# Smaller banks in v1-char's proportions (4 layers, groups of 4, groups = 5/8 of d_model, FFN =
# d_model) for the character-level scaling study: ~0.09M and ~0.33M non-embedding parameters
# against v1-char's 0.86M.
_CHAR_XS = dict(_CHAR, d_model=40, ffn_hidden=40, n_groups=25)
_CHAR_S = dict(_CHAR, d_model=80, ffn_hidden=80, n_groups=50)
_V2 = dict(d_model=256, n_layers=4, ffn_hidden=1024, n_groups=32, osc_per_group=4, harmonics=1,
           vocab_size=100277)
# the next size up, near 45M parameters at the full cl100k vocabulary (38.5M of them the tied
# embedding): wider and deeper, the bank widened with the model (192 oscillators per layer)
_V2_MEDIUM = dict(_V2, d_model=384, n_layers=6, ffn_hidden=1024, n_groups=48)
# The char and tiny presets train at weight decay 0.1, the tiny ones at LR 5e-3: each chosen
# against its neighbours over seeds (research/RESULTS.md sections 6 and 8). v2 and v3 keep 0.01
# and 1e-3, unmeasured at their size.
_BPE_TINY = dict(tokenizer="cl100k_base", seq_len=128, batch_size=16, learning_rate=5e-3,
                 weight_decay=0.1)
_CHAR_TRAIN = dict(tokenizer="bytes", seq_len=256, batch_size=16, learning_rate=2e-3,
                   weight_decay=0.1)
_BPE = dict(tokenizer="cl100k_base", seq_len=256, batch_size=8, learning_rate=1e-3)

# K-SSM presets: name -> (what it is, ModelArgs overrides, training defaults)
KSSM_PRESETS: dict = {
    "tiny": ("K-SSM for tests and smoke runs: seconds per step on a laptop CPU",
             _TINY, _BPE_TINY),
    "v1-char": ("character-level K-SSM (the TinyShakespeare proof of concept)", _CHAR, _CHAR_TRAIN),
    "v1-char-s": ("v1-char's design at 80 wide (scaling study)", _CHAR_S, _CHAR_TRAIN),
    "v1-char-xs": ("v1-char's design at 40 wide (scaling study)", _CHAR_XS, _CHAR_TRAIN),
    "v2": ("4 layers, hidden 256, 128 oscillators per layer, BPE", _V2, _BPE),
    "v2-medium": ("6 layers, hidden 384, 192 oscillators per layer, BPE", _V2_MEDIUM, _BPE),
    "v3": ("v2 plus the bistable core (u in [0.1, 10], K = 2 sigma(u), regularizer)",
           dict(_V2, bistable=True), _BPE),
}

# comparison kind -> {K-SSM preset: comparison preset name}; the v2 names are the historical ones
_COMPARISON_NAMES = {
    "transformer": {"tiny": "transformer-tiny", "v1-char": "transformer-char", "v2": "transformer",
                    "v2-medium": "transformer-v2-medium", "v3": "transformer-v3",
                    "v1-char-s": "transformer-char-s", "v1-char-xs": "transformer-char-xs"},
    "control-bolted": {"tiny": "control-bolted-tiny", "v1-char": "control-bolted-char",
                       "v2": "control-bolted", "v2-medium": "control-bolted-v2-medium",
                       "v3": "control-bolted-v3", "v1-char-s": "control-bolted-char-s",
                       "v1-char-xs": "control-bolted-char-xs"},
    "upstream-v3": {"tiny": "upstream-v3-tiny", "v1-char": "upstream-v3-char",
                    "v2": "upstream-v3", "v2-medium": "upstream-v3-v2-medium",
                    "v3": "upstream-v3", "v1-char-s": "upstream-v3-char-s",
                    "v1-char-xs": "upstream-v3-char-xs"},
}
_COMPARISON_ARGS = {
    "transformer": dict(model_type="transformer", n_heads=4, bistable=False),
    "control-bolted": dict(readout="bolted"),
    "upstream-v3": dict(model_type="upstream_v3", bistable=True, core_box=0.0),
}
# training defaults a comparison preset does not share with its K-SSM: (kind, base) -> options
_COMPARISON_TRAIN = {
    # the transformer does better at 1e-3 than at the K-SSM's 2e-3 (research/RESULTS.md
    # section 6, rows tf4_ffn512_lr1 and _lr2)
    ("transformer", "v1-char"): dict(learning_rate=1e-3),
    ("transformer", "v1-char-s"): dict(learning_rate=1e-3),
    ("transformer", "v1-char-xs"): dict(learning_rate=1e-3),
}
_DESCRIPTIONS = {
    "transformer": "causal transformer parameter-matched to {base} (comparison)",
    "control-bolted": "negative control, {base} sizes: R computed but bypassed by the output",
    "upstream-v3": "the earlier per-position v3 design, {base} sizes (comparison)",
}


def _comparison_table() -> dict:
    """name -> (description, base K-SSM preset, comparison kind) for every comparison preset."""
    table = {}
    for kind, names in _COMPARISON_NAMES.items():
        for base, name in names.items():
            if name not in table:  # upstream-v3 serves v2 and v3 alike
                table[name] = (_DESCRIPTIONS[kind].format(base=base), base, kind)
    return table


_COMPARISONS = _comparison_table()
PRESETS: dict = {
    **KSSM_PRESETS,
    **{name: (desc, {**KSSM_PRESETS[base][1], **_COMPARISON_ARGS[kind]},
              {**KSSM_PRESETS[base][2], **_COMPARISON_TRAIN.get((kind, base), {})})
       for name, (desc, base, kind) in _COMPARISONS.items()},
}


def preset_names() -> list:
    return list(PRESETS)


def comparison_presets(name: str) -> dict:
    """{"transformer": ..., "control-bolted": ..., "upstream-v3": ...} for K-SSM preset `name`."""
    if name not in KSSM_PRESETS:
        raise ValueError(f"{name!r} is not a K-SSM preset; choose from: {', '.join(KSSM_PRESETS)}")
    return {kind: names[name] for kind, names in _COMPARISON_NAMES.items()}


# AdamW's weight decay for a preset that names none (the char and tiny presets name 0.1)
DEFAULT_WEIGHT_DECAY = 0.01


def preset_train_defaults(name: str) -> dict:
    """Preset `name`'s training defaults: tokenizer, batch size, sequence length, learning
    rate and weight decay."""
    return {"weight_decay": DEFAULT_WEIGHT_DECAY, **_lookup(name)[2]}


def _lookup(name: str):
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
    return PRESETS[name]


def mixer_params(args: ModelArgs) -> int:
    """Parameters of one layer's token mixer (oscillator bank or attention), by formula;
    tests check it against a built layer for every preset and design."""
    D, N, G = args.d_model, args.n_oscillators, args.n_groups
    if args.model_type == "transformer":
        return D + 4 * D * D
    projected = (4 if args.rotation == "input" else 3) * N + (N_PROJECTIONS if args.bistable else G)
    projected += D if args.gate else 0
    readout = 2 * N if args.readout == "bolted" else 3 * args.harmonics * G
    state_norm = 2 * N if args.readout == "bolted" else 0
    # norm, in_proj, omega + lambda_bias + z0 (2N) + dt, out_proj
    return D + (D + 1) * projected + 4 * N + 1 + (readout + 1) * D + state_norm


def check_options(overrides: dict) -> None:
    """Refuse override names that are no ModelArgs field (a typo would be silently dropped)."""
    unknown = sorted(set(overrides) - set(ModelArgs.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown model option(s): {', '.join(unknown)}")


def preset_args(name: str, **overrides) -> ModelArgs:
    """The ModelArgs of preset `name`, with `overrides` (ModelArgs field names) applied."""
    _, model, _ = _lookup(name)
    check_options(overrides)
    args = ModelArgs.from_dict({**model, "preset": name, **overrides})
    comparison = _COMPARISONS.get(name)
    if comparison and comparison[2] == "transformer" and "ffn_hidden" not in overrides:
        base = ModelArgs.from_dict({**KSSM_PRESETS[comparison[1]][1], **overrides,
                                    "model_type": "kssm"})
        extra = mixer_params(base) - mixer_params(args)
        args = dataclasses.replace(args, ffn_hidden=max(1, base.ffn_hidden
                                                        + round(extra / (2 * args.d_model + 1))))
    return args.validate()
