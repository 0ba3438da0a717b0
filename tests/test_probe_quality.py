"""Mode-collapse checks (the earlier project's failure modes) and the sweep's repetition measure."""

import mlx_kssm  # noqa: F401
from mlx_kssm.probe.generate import StreamDecoder
from mlx_kssm.probe.intervene import repetition_rate
from mlx_kssm.probe.quality import distinct_n, longest_run, sample_quality
from mlx_kssm.data.tokenizer import BytesTokenizer


def test_healthy_sample_not_flagged():
    text = "It was the best of times, it was the worst of times, it was the age of wisdom."
    ids = list(text.encode())
    q = sample_quality(ids, text)
    assert not q["collapsed"] and q["reason"] == ""
    assert q["distinct_2"] > 0.4


def test_long_healthy_byte_sample_not_flagged():
    # whole-sample distinct-2 of 1,200 characters of prose is ~0.2 (bigrams repeat in any long
    # text); the per-window measure stays high, so a char-level model is not called collapsed
    text = ("It is a truth universally acknowledged, that a single man in possession of a good "
            "fortune, must be in want of a wife. However little known the feelings or views of "
            "such a man may be on his first entering a neighbourhood, this truth is so well "
            "fixed in the minds of the surrounding families. ") * 4
    q = sample_quality(list(text.encode()), text)
    assert q["distinct_2"] < 0.3 and not q["collapsed"]


def test_looping_sample_is_flagged():
    text = "the cat " * 40
    q = sample_quality(list(text.encode()), text)
    assert q["collapsed"] and "per 50-token window" in q["reason"]


def test_one_token_repeated_is_flagged():
    ids = [5, 6, 7] + [9] * 12
    q = sample_quality(ids, "")
    assert q["collapsed"] and "repeated 12 times" in q["reason"]
    assert longest_run(ids) == 12


def test_punctuation_run_is_flagged():
    text = "the king:::::::: said"
    q = sample_quality(list(range(len(text))), text)
    assert q["collapsed"] and "punctuation" in q["reason"]


def test_low_distinct_2_is_flagged():
    ids = [1, 2] * 20  # alternating: no long run, but only 2 distinct bigrams
    q = sample_quality(ids, "")
    assert q["collapsed"] and "distinct-2" in q["reason"]
    assert distinct_n(ids, 2) == 2 / 39


def test_repetition_rate():
    assert repetition_rate([1, 2, 3, 4, 5]) == 0.0
    assert repetition_rate([1, 2, 3, 1, 2, 3]) == 1 / 4
    assert repetition_rate([]) == 0.0


def test_stream_decoder_holds_back_split_characters():
    tok = BytesTokenizer()
    ids = tok.encode("né!")  # é is two bytes
    dec = StreamDecoder(tok.decode)
    pieces = [dec.push(i) for i in ids]
    assert pieces == ["n", "", "é", "!"] and "".join(pieces) + dec.flush() == "né!"
