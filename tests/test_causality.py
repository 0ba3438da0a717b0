"""The causality suite (docs/causality.md) on a briefly trained K-SSM, the bolted control and a fresh
model. The trained model is made here with a minimal loop on real prose (byte tokens), so
the suite's PASS is earned, not assumed; its numbers and the controls' are printed (-s)."""

import json

import numpy as np
import pytest

import mlx_kssm  # noqa: F401  (BLAS before mlx)

from mlx_kssm import build_model
from mlx_kssm.data.tokenizer import BytesTokenizer
from mlx_kssm.probe import causality
from mlx_kssm.probe.causality import causality_suite, format_causality, windows_from_batches
from mlx_kssm.models.force import ForceR
from mlx_kssm.probe.generate import generate_tokens

from _fit import fit

# Public-domain prose: Dickens (1859), Austen (1813), Melville (1851) for training;
# Carroll (1865) held out.
TRAIN_TEXT = """It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, it was the season of Darkness, it was the spring of hope, it was the winter of despair, we had everything before us, we had nothing before us, we were all going direct to Heaven, we were all going direct the other way. In short, the period was so far like the present period, that some of its noisiest authorities insisted on its being received, for good or for evil, in the superlative degree of comparison only.
There were a king with a large jaw and a queen with a plain face, on the throne of England; there were a king with a large jaw and a queen with a fair face, on the throne of France. In both countries it was clearer than crystal to the lords of the State preserves of loaves and fishes, that things in general were settled for ever.
It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. However little known the feelings or views of such a man may be on his first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered the rightful property of some one or other of their daughters.
"My dear Mr. Bennet," said his lady to him one day, "have you heard that Netherfield Park is let at last?" Mr. Bennet replied that he had not. "But it is," returned she; "for Mrs. Long has just been here, and she told me all about it." Mr. Bennet made no answer. "Do you not want to know who has taken it?" cried his wife impatiently. "You want to tell me, and I have no objection to hearing it." This was invitation enough.
Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, and nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of the world. It is a way I have of driving off the spleen, and regulating the circulation. Whenever I find myself growing grim about the mouth; whenever it is a damp, drizzly November in my soul; whenever I find myself involuntarily pausing before coffin warehouses, and bringing up the rear of every funeral I meet; then, I account it high time to get to sea as soon as I can.
"""
HELDOUT_TEXT = """Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do: once or twice she had peeped into the book her sister was reading, but it had no pictures or conversations in it, "and what is the use of a book," thought Alice, "without pictures or conversations?" So she was considering in her own mind, as well as she could, for the hot day made her feel very sleepy and stupid, whether the pleasure of making a daisy-chain would be worth the trouble of getting up and picking the daisies, when suddenly a White Rabbit with pink eyes ran close by her. There was nothing so very remarkable in that; nor did Alice think it so very much out of the way to hear the Rabbit say to itself, "Oh dear! Oh dear! I shall be late!" but when the Rabbit actually took a watch out of its waistcoat-pocket, and looked at it, and then hurried on, Alice started to her feet, for it flashed across her mind that she had never before seen a rabbit with either a waistcoat-pocket, or a watch to take out of it, and burning with curiosity, she ran across the field after it.
"""

SEQ_LEN, BATCH, STEPS = 32, 8, 300
TOK = BytesTokenizer()


def heldout_windows(seq_len=SEQ_LEN):
    ids = np.array(TOK.encode(HELDOUT_TEXT), dtype=np.int32)
    n = len(ids) // seq_len  # non-overlapping: sequences are independent units
    return ids[:n * seq_len].reshape(n, seq_len)


def train_tiny(steps=STEPS, seed=0):
    """A minimal training loop: Adam on byte-level next-token prediction."""
    data = np.array(TOK.encode(TRAIN_TEXT), dtype=np.int32)
    model = build_model("tiny", vocab_size=TOK.vocab_size, seed=seed)
    rng = np.random.default_rng(seed)

    def batch(_):
        starts = rng.integers(0, len(data) - SEQ_LEN - 1, BATCH)
        x = np.stack([data[s:s + SEQ_LEN] for s in starts])
        y = np.stack([data[s + 1:s + SEQ_LEN + 1] for s in starts])
        return x, y

    return model, fit(model, batch, steps)


@pytest.fixture(scope="module")
def trained():
    model, losses = train_tiny()
    assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 1.0, "training did not learn"
    return model


@pytest.fixture(scope="module")
def results(trained):
    windows = heldout_windows()
    res = {"trained tiny (300 steps)": causality_suite(trained, windows, random_init_seed=0),
           "random-init tiny": causality_suite(build_model("tiny", vocab_size=257, seed=0),
                                               windows),
           "control-bolted-tiny": causality_suite(
               build_model("control-bolted-tiny", vocab_size=257, seed=0), windows,
               random_init_seed=1)}
    for label, r in res.items():  # reported beside each other (pytest -s shows them)
        print("\n" + "\n".join(format_causality(r, label)))
    return res


@pytest.mark.slow
def test_trained_kssm_passes_all_three(results):
    r = results["trained tiny (300 steps)"]
    assert r["variance"]["verdict"] == "PASS", r["variance"]
    assert r["intervention"]["verdict"] == "PASS", {k: v for k, v in r["intervention"].items()
                                                    if not k.startswith("per_sequence")}
    assert r["correlation"]["verdict"] == "PASS", r["correlation"]
    assert r["verdict"] == "PASS"
    assert r["intervention"]["achieved_r_max_error"] < 1e-5  # reported R == forced R


@pytest.mark.slow
def test_every_effect_has_a_ci_around_it(results):
    for r in results.values():
        tests = [r["variance"], r["intervention"], *r["correlation"]["per_layer"]]
        effects = [r["variance"]["r_std"], r["intervention"]["mean_kl"],
                   *(t["r_within"] for t in r["correlation"]["per_layer"])]
        for test, effect in zip(tests, effects):
            lo, hi = test["ci"]
            assert lo <= effect <= hi, test
        assert len(r["correlation"]["per_layer"]) == 2  # one entry per layer of `tiny`


@pytest.mark.slow
def test_bolted_control_fails_intervention(results):
    r = results["control-bolted-tiny"]
    i = r["intervention"]
    assert i["verdict"] == "FAIL" and r["verdict"] == "FAIL"
    assert i["mean_kl"] < 1e-4  # ~0: the output bypasses R (only a norm's epsilon leaks)
    # the minimum effect, not the p-value, is what stops it: float-level KL is systematic
    assert i["p"] < 0.01 and i["ci"][1] < i["threshold"]
    # and it is not "wired in" either: its random-init twin bypasses R as well
    assert i["random_init"]["wired_in"]["verdict"] == "FAIL"
    assert i["random_init"]["learned"]["verdict"] != "PASS"


@pytest.mark.slow
def test_random_init_comparison_is_paired_on_the_same_windows(trained, results):
    base = results["trained tiny (300 steps)"]["intervention"]["random_init"]
    fresh = results["random-init tiny"]["intervention"]
    # seed 0 builds the same network the random-init entry is: the same per-window KL
    assert base["per_sequence_kl"] == fresh["per_sequence_kl"]
    assert base["seed"] == 0 and "random_init" not in fresh
    # the model against itself: a difference of exactly 0 is not "learned to use it"
    suite = causality_suite(build_model("tiny", vocab_size=257, seed=0), heldout_windows(),
                            random_init_seed=0)
    same = suite["intervention"]["random_init"]
    assert same["learned"]["difference"] == 0.0 and same["learned"]["verdict"] == "FAIL"
    assert same["wired_in"]["verdict"] == fresh["verdict"]
    # 2b is part of the overall verdict: an untrained model has learned nothing
    assert suite["verdict"] == "FAIL" and results["random-init tiny"]["verdict"] != "FAIL"
    assert "tests 1-3 and 2b" in format_causality(suite)[-1]


@pytest.mark.slow
def test_random_init_is_reported(results):
    r = results["random-init tiny"]
    assert r["applicable"] and set(r) >= {"variance", "intervention", "correlation"}
    json.dumps(r)  # JSON-able as the CLI writes it


@pytest.mark.slow
def test_correlation_rule_is_stated_once(results):
    """Test 3's multiple-comparison rule: the same words in the module docstring (defaults),
    in the result and in the printed output; the verdict follows it."""
    c = results["trained tiny (300 steps)"]["correlation"]
    rule = causality.CORRELATION_RULE.format(confidence=0.95, threshold=0.05)
    assert " ".join(causality.__doc__.split()).count(rule) == 1
    assert c["rule"] == rule
    printed = format_causality(results["trained tiny (300 steps)"])
    assert sum(line.strip() == f"rule: {rule}" for line in printed) == 1
    layers = [t["verdict"] for t in c["per_layer"]]
    expected = "PASS" if "PASS" in layers else ("FAIL" if set(layers) == {"FAIL"}
                                                else "INCONCLUSIVE")
    assert c["verdict"] == expected
    assert c["alpha_each"] == pytest.approx(0.01 / 2) and c["confidence_each"] == 0.975
    assert all(t["sign"] in "+-" and t["sign"] == ("+" if t["r_within"] >= 0 else "-")
               for t in c["per_layer"])


def test_transformer_not_applicable():
    model = build_model("transformer-tiny", vocab_size=257, seed=0)
    r = causality_suite(model, heldout_windows()[:8], random_init_seed=0)
    assert r["applicable"] is False and r["verdict"] is None
    assert "not applicable" in format_causality(r)[0]


@pytest.mark.slow
def test_suite_is_deterministic(trained):
    w = heldout_windows()[:20]  # > 16: the sign-flip tests are Monte Carlo, from a fixed seed
    a = causality_suite(trained, w, random_init_seed=0)
    b = causality_suite(trained, w, random_init_seed=0)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # every number, CIs too


@pytest.mark.slow
def test_too_few_sequences_cannot_pass_intervention(trained):
    # the exact sign-flip test needs >= 7 sequences to reach p < 0.01, whatever the effect:
    # a CI above the threshold with p >= alpha is INCONCLUSIVE, never PASS
    i = causality_suite(trained, heldout_windows()[:5])["intervention"]
    assert i["ci"][0] > i["threshold"] and i["p"] >= 0.01
    assert i["verdict"] == "INCONCLUSIVE"


def test_windows_from_batches_accepts_pairs_and_limits():
    w = heldout_windows()
    batches = [(w[:4], w[:4]), (w[4:8], w[4:8])]
    assert windows_from_batches(batches).shape == (8, SEQ_LEN)
    assert windows_from_batches(batches, max_sequences=5).shape == (5, SEQ_LEN)
    with pytest.raises(ValueError):
        causality_suite(build_model("tiny", vocab_size=257, seed=0), w[:4], values=(0.5, 0.5))


@pytest.mark.slow
def test_forcing_changes_generated_text(trained):
    prompt = TOK.encode("It was the ")
    free = generate_tokens(trained, prompt, max_tokens=40, temp=0.8, seed=3)
    again = generate_tokens(trained, prompt, max_tokens=40, temp=0.8, seed=3)
    forced = generate_tokens(trained, prompt, max_tokens=40, temp=0.8, seed=3, force_r=0.3)
    assert free.tokens == again.tokens  # same prompt + seed = same text
    assert forced.tokens != free.tokens
    assert all(abs(v - 0.3) < 1e-6 for r in forced.r_trace for v in r)
    print("\nfree:   ", repr(TOK.decode(free.tokens)), "\nR=0.3:  ", repr(TOK.decode(forced.tokens)))


def test_forcing_bolted_control_leaves_text_unchanged():
    model = build_model("control-bolted-tiny", vocab_size=257, seed=0)
    prompt = TOK.encode("It was the ")
    free = generate_tokens(model, prompt, max_tokens=30, temp=0.0, seed=0)
    forced = generate_tokens(model, prompt, max_tokens=30, temp=0.0, seed=0, force_r=0.9)
    assert forced.tokens == free.tokens


# ---------------------------------------------------------------- long windows in chunks

def _forward_lengths(model, monkeypatch) -> list:
    """Record the number of positions of every forward pass of `model`."""
    lengths, cls = [], type(model)
    real = cls.__call__

    def recording(self, inputs, *args, **kwargs):
        lengths.append(inputs.shape[1])
        return real(self, inputs, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", recording)
    return lengths


def test_measure_in_chunks_equals_one_pass(monkeypatch):
    from mlx_kssm.probe.causality import measure
    model = build_model("tiny", vocab_size=64, seed=0)
    windows = np.random.default_rng(0).integers(0, 64, size=(3, 40)).astype(np.int32)
    whole = measure(model, windows, [0.1, 0.9], chunk=40)
    lengths = _forward_lengths(model, monkeypatch)
    chunked = measure(model, windows, [0.1, 0.9], chunk=7)
    assert max(lengths) == 7  # no forward pass spans the window
    for key in ("r", "entropy", "top1_changed"):
        np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-4, atol=1e-5)
    for pair in whole["kl"]:
        np.testing.assert_allclose(chunked["kl"][pair], whole["kl"][pair], rtol=1e-3, atol=1e-6)
    for v in whole["kl_free"]:
        assert chunked["kl_free"][v] == pytest.approx(whole["kl_free"][v], rel=1e-3, abs=1e-6)


def test_intervene_runs_a_long_prompt_in_chunks(monkeypatch):
    from mlx_kssm.probe import intervene as intervene_mod
    model = build_model("tiny", vocab_size=64, seed=0)
    prompt = np.random.default_rng(1).integers(0, 64, size=50).tolist()
    force = ForceR.of(0.7, len(model.layers))
    whole = intervene_mod._next_token(model, prompt, force, chunk=50)
    lengths = _forward_lengths(model, monkeypatch)
    monkeypatch.setattr(intervene_mod, "POSITION_CHUNK", 8)
    res = intervene_mod.intervention_sweep(model, [prompt], [0.7], max_tokens=0)
    assert max(lengths) <= 8
    chunked = intervene_mod._next_token(model, prompt, force, chunk=8)
    np.testing.assert_allclose(np.array(chunked[0]), np.array(whole[0]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-4, atol=1e-5)
    assert chunked[2] == pytest.approx(whole[2], rel=1e-5)
    assert res["prompts"][0]["runs"][1]["r_mean"] == pytest.approx(whole[2], rel=1e-5)
