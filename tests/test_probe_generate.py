"""Chunked prefill: a long prompt runs through the model in chunks carrying the cache; the
result equals one pass, and peak memory stops growing with the prompt's length."""

import mlx_kssm  # noqa: F401  (BLAS before mlx)
import mlx.core as mx
import numpy as np
import pytest

from mlx_kssm import build_model
from mlx_kssm.probe.generate import generate_tokens, prefill


@pytest.mark.parametrize("preset,force_r", [("tiny", None), ("tiny", 0.3),
                                            ("transformer-tiny", None),
                                            ("upstream-v3-tiny", None), ("upstream-v3-tiny", 0.3)])
def test_chunked_prefill_equals_one_pass(preset, force_r):
    model = build_model(preset, vocab_size=64, seed=0)
    prompt = np.random.default_rng(0).integers(0, 64, 50).tolist()
    whole = prefill(model, prompt, model.make_cache(), force_r, chunk=len(prompt))
    chunked = prefill(model, prompt, model.make_cache(), force_r, chunk=7)
    assert np.allclose(np.array(whole[0]), np.array(chunked[0]), atol=1e-4)
    if whole[1] is not None:
        assert np.allclose(np.array(whole[1]), np.array(chunked[1]), atol=1e-5)


def test_generation_after_chunked_prefill_is_unchanged():
    model = build_model("tiny", vocab_size=64, seed=0)
    prompt = np.random.default_rng(1).integers(0, 64, 40).tolist()
    one_pass = generate_tokens(model, prompt, max_tokens=12, temp=0.0, prefill_chunk=40)
    chunked = generate_tokens(model, prompt, max_tokens=12, temp=0.0, prefill_chunk=6)
    assert chunked.tokens == one_pass.tokens
    assert np.allclose(chunked.r_trace, one_pass.r_trace, atol=1e-5)  # float rounding only


@pytest.mark.slow
def test_prompt_peak_memory_does_not_grow_with_its_length():
    model = build_model("tiny", vocab_size=257, seed=0)
    mx.eval(model.parameters())
    rng = np.random.default_rng(2)
    peaks = {n: generate_tokens(model, rng.integers(0, 257, n).tolist(), max_tokens=1,
                                temp=0.0).peak_memory_gb for n in (1024, 8192)}
    assert peaks[8192] < 1.5 * peaks[1024], peaks  # one pass: ~8x
