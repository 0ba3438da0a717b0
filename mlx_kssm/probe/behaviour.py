"""Behavioural probes of `mlx-kssm validate` (docs/causality.md, "Validation").

The prompts, the verb list and the word count live in one data file shipped with the package,
behaviour_probes.json. For each sampling seed (the units, `samples` of them):

- action share: the share of completions of the action prompts ("I will", "I want to", ...)
  with an action verb among their first `first_words` words; this is the behavioural score;
- paired difference: the share of paired prompts ("I like" / "I do not like", ...) whose two
  continuations (same seed) differ in their first `first_words` words.

Each with a percentile-bootstrap CI over completions (or pairs). A score of the generated text,
never a measure of agency. Against a baseline model (`compare`), the same prompts and seeds:
the per-completion difference model - baseline with its CI; PASS when it lies above 0, FAIL
when it lies at or below 0, INCONCLUSIVE when it straddles 0.
"""

from __future__ import annotations

import json
import re
from importlib import resources

import numpy as np

from . import stats
from .generate import encode_prompt, generate_text

PROBES_FILE = "behaviour_probes.json"
WORD = re.compile(r"[A-Za-z']+")
SUFFIXES = ("ing", "es", "ed", "s", "d")


def load_probes() -> dict:
    """The shipped probe definitions (behaviour_probes.json)."""
    return json.loads(resources.files(__package__).joinpath(PROBES_FILE).read_text("utf-8"))


def first_words(text: str, n: int) -> list:
    return [w.lower().strip("'") for w in WORD.findall(text)][:n]


def is_action_verb(word: str, verbs: set) -> bool:
    """`word` or `word` less one of SUFFIXES is in `verbs` (walks, walked, walking: walk)."""
    if word in verbs:
        return True
    return any(word.endswith(s) and word[:-len(s)] in verbs for s in SUFFIXES)


def _continuation(model, tokenizer, prompt, seed, max_tokens, temp) -> str:
    ids = encode_prompt(tokenizer, prompt)
    return tokenizer.decode(generate_text(model, tokenizer, ids, max_tokens=max_tokens,
                                          temp=temp, seed=seed).tokens)


def behaviour_probes(model, tokenizer, samples: int = 8, max_tokens: int = 24,
                     temp: float = 0.8, seed: int = 0, probes: dict | None = None,
                     n_resamples: int = stats.BOOTSTRAP_RESAMPLES) -> dict:
    """Run the probes (module docstring) on `model`; a JSON-able dict with every completion."""
    probes = probes or load_probes()
    n_words, verbs = int(probes["first_words"]), set(probes["action_verbs"])
    completions, hits = [], []
    for prompt in probes["action_prompts"]:
        for s in range(samples):
            text = _continuation(model, tokenizer, prompt, seed + s, max_tokens, temp)
            words = first_words(text, n_words)
            hit = any(is_action_verb(w, verbs) for w in words)
            completions.append({"prompt": prompt, "seed": seed + s, "text": text,
                                "action_verb": hit})
            hits.append(float(hit))
    pairs, differs = [], []
    for a, b in probes["paired_prompts"]:
        for s in range(samples):
            ta = _continuation(model, tokenizer, a, seed + s, max_tokens, temp)
            tb = _continuation(model, tokenizer, b, seed + s, max_tokens, temp)
            differ = first_words(ta, n_words) != first_words(tb, n_words)
            pairs.append({"prompts": [a, b], "seed": seed + s, "texts": [ta, tb],
                          "differ": differ})
            differs.append(float(differ))
    score = stats.bootstrap_mean(hits, n_resamples=n_resamples, seed=seed)
    paired = stats.bootstrap_mean(differs, n_resamples=n_resamples, seed=seed)
    return {"score": score["estimate"], "score_ci": score["ci"],
            "paired_difference": paired["estimate"], "paired_difference_ci": paired["ci"],
            "samples": samples, "max_tokens": max_tokens, "temp": temp, "seed": seed,
            "first_words": n_words, "completions": completions, "pairs": pairs}


def compare(result: dict, baseline: dict, n_resamples: int = stats.BOOTSTRAP_RESAMPLES,
            seed: int = 0) -> dict:
    """The behavioural score of `result` against `baseline`'s, completion by completion
    (the same prompts and seeds): the mean difference with its CI and the verdict."""
    mine = np.array([c["action_verb"] for c in result["completions"]], dtype=np.float64)
    theirs = np.array([c["action_verb"] for c in baseline["completions"]], dtype=np.float64)
    if mine.shape != theirs.shape:
        raise ValueError("the model and the baseline ran different probes")
    diff = stats.bootstrap_mean(mine - theirs, n_resamples=n_resamples, seed=seed)
    return {"difference": diff["estimate"], "ci": diff["ci"], "threshold": 0.0,
            "verdict": stats.threshold_verdict(diff["ci"], 0.0)}
