"""`--kernel auto|metal|cuda|reference`: the reference where no GPU backend is present, a clear
error for `metal` / `cuda` where theirs is absent, auto picks the backend present, a failed
first-use check falls back to the reference with one warning, and the choice is an argument
each model carries (never process state)."""

import warnings

import pytest

import mlx_kssm  # noqa: F401
import mlx.core as mx
import numpy as np

from mlx_kssm import build_model
from mlx_kssm.kernels import cuda, dispatch, metal, reference
from mlx_kssm.kernels.fused import random_inputs

BACKENDS = {"metal": metal, "cuda": cuda}


@pytest.fixture(autouse=True)
def fresh_dispatch(monkeypatch):
    monkeypatch.setattr(dispatch, "_kernel_ok", {})


def pretend_gpu(monkeypatch, backend):
    """This machine has `backend`'s GPU, and only that one."""
    monkeypatch.setattr(mx.metal, "is_available", lambda: backend == "metal")
    monkeypatch.setattr(cuda, "is_available", lambda: backend == "cuda")


def _assert_same(got, want):
    # On the CPU the training scan (cpu.scan_free) and the reference run the same float ops in
    # the same order: bit-equal. On a GPU backend MLX fuses them differently (seen on CUDA), so
    # there they agree to float rounding only.
    for a, b in zip(got, want):
        if mx.default_device() == mx.cpu:
            assert np.array_equal(np.array(a), np.array(b))
        else:
            np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6)


def _same_as_reference(force_r=None, kernel="auto"):
    x = random_inputs(2, 5, 3, 8)
    _assert_same(dispatch.oscillator_scan(*x, force_r=force_r, kernel=kernel),
                 reference.scan_sequential(*x, force_r=force_r))
    step_in = [a[:, 0] for a in x[:5]]
    _assert_same(dispatch.oscillator_step(*step_in, x[5], x[6], force_r=force_r, kernel=kernel),
                 reference.scan_step(*step_in, x[5], x[6], force_r=force_r))


@pytest.mark.skipif(dispatch.gpu_backend() is not None, reason="checks the no-GPU path")
def test_auto_uses_reference_without_a_gpu():
    assert dispatch.check_kernel("auto") == "auto"
    assert dispatch.resolve_kernel("auto") == "reference"
    _same_as_reference()
    _same_as_reference(force_r=0.4)


@pytest.mark.parametrize("backend", ["metal", "cuda"])
def test_fused_mode_is_a_clear_error_without_its_gpu(backend):
    if dispatch.gpu_backend() == backend:
        pytest.skip(f"checks the no-{backend} path")
    module, label = BACKENDS[backend], dispatch.BACKEND_LABELS[backend]
    with pytest.raises(RuntimeError, match=label):
        dispatch.check_kernel(backend)
    with pytest.raises(RuntimeError, match=label):
        dispatch.oscillator_scan(*random_inputs(1, 2, 1, 4), kernel=backend)
    assert module._make_kernel("kssm_scan") is None
    with pytest.raises(RuntimeError, match=label):
        module.scan(*random_inputs(1, 2, 1, 4))
    ok, detail = module.self_check()
    assert not ok and label in detail


def test_each_gpu_backend_rejects_the_other_mode(monkeypatch):
    pretend_gpu(monkeypatch, "cuda")
    with pytest.raises(RuntimeError, match="Metal"):
        dispatch.check_kernel("metal")
    pretend_gpu(monkeypatch, "metal")
    with pytest.raises(RuntimeError, match="CUDA"):
        dispatch.check_kernel("cuda")


def test_reference_mode_and_bad_mode():
    assert dispatch.resolve_kernel("reference") == "reference"
    _same_as_reference(kernel="reference")
    with pytest.raises(ValueError):
        dispatch.check_kernel("cuda-please")


@pytest.mark.parametrize("failure", ["mismatch", "compile error"])
@pytest.mark.parametrize("backend,mode", [("metal", "auto"), ("metal", "metal"),
                                          ("cuda", "auto"), ("cuda", "cuda")])
def test_failed_self_check_warns_once_and_falls_back(monkeypatch, failure, backend, mode):
    pretend_gpu(monkeypatch, backend)
    module = BACKENDS[backend]
    checks = []

    def self_check():
        checks.append(1)
        if failure == "compile error":
            raise RuntimeError("program_source:12:5: error: use of undeclared identifier")
        return False, "mismatch vs reference: grad_k 3.1e-01"

    def never(*a, **k):
        raise AssertionError("the kernel ran after failing its check")

    monkeypatch.setattr(module, "self_check", self_check)
    monkeypatch.setattr(module, "scan", never)
    monkeypatch.setattr(module, "step", never)
    with pytest.warns(UserWarning, match=f"{dispatch.BACKEND_LABELS[backend]} .*self-check") \
            as record:
        assert dispatch.resolve_kernel(mode) == "reference"
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would fail here
        _same_as_reference(kernel=mode)
        _same_as_reference(force_r=0.4, kernel=mode)
        assert dispatch.resolve_kernel(mode) == "reference"
    assert len(checks) == 1  # checked once per process


@pytest.mark.parametrize("backend", ["metal", "cuda"])
def test_passing_self_check_routes_auto_to_the_backend_present(monkeypatch, backend):
    pretend_gpu(monkeypatch, backend)
    module = BACKENDS[backend]
    monkeypatch.setattr(module, "self_check", lambda: (True, "ok"))
    seen = []
    monkeypatch.setattr(module, "scan", lambda *a, force_r=None: seen.append(force_r) or a[:2])
    assert dispatch.resolve_kernel("auto") == backend
    x = random_inputs(1, 2, 1, 4)
    dispatch.oscillator_scan(*x)
    dispatch.oscillator_scan(*x, force_r=0.3)
    assert seen == [None, 0.3]


def _tiny(seed=0):
    return build_model("tiny", vocab_size=32, seed=seed, d_model=16, n_layers=2, ffn_hidden=16)


@pytest.mark.slow
def test_kernel_choice_belongs_to_each_model(monkeypatch):
    """Two models in one process, each with its own choice: only the `auto` one reaches the
    (pretend) GPU kernel, compiled or not; nothing else in the process changes."""
    pretend_gpu(monkeypatch, "metal")
    monkeypatch.setattr(metal, "self_check", lambda: (True, "ok"))
    calls = []
    monkeypatch.setattr(metal, "scan", lambda *a, force_r=None: calls.append(1) or a[:2])
    on_gpu, on_reference = _tiny(), dispatch.use_kernel(_tiny(), "reference")
    tokens = mx.array([[1, 2, 3, 4]])
    mx.eval(mx.compile(on_reference)(tokens), on_reference(tokens))
    assert calls == []
    mx.eval(mx.compile(on_gpu)(tokens))
    assert len(calls) == len(on_gpu.layers)
    mx.eval(on_reference(tokens))
    assert len(calls) == len(on_gpu.layers)


def test_use_kernel_sets_every_bank_and_checks_first(monkeypatch):
    model = _tiny()
    assert dispatch.use_kernel(model, "reference") is model
    banks = [layer.bank for layer in model.layers]
    assert [b.scan_kernel for b in banks] == ["reference"] * len(banks)
    with pytest.raises(ValueError, match="kernel must be one of"):
        dispatch.use_kernel(model, "fast")
    pretend_gpu(monkeypatch, None)
    with pytest.raises(RuntimeError, match="Metal"):
        dispatch.use_kernel(model, "metal")
    assert [b.scan_kernel for b in banks] == ["reference"] * len(banks)  # a refusal changes nothing
    transformer = build_model("transformer-tiny", vocab_size=32, seed=0)
    assert dispatch.use_kernel(transformer, "reference") is transformer
