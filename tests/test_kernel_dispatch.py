"""`--kernel auto|metal|cuda|reference`: the reference where no GPU backend is present, a clear
error for `metal` / `cuda` where theirs is absent, auto picks the backend present, and a failed
first-use check falls back to the reference with one warning."""

import warnings

import pytest

import mlx_kssm  # noqa: F401
import mlx.core as mx
import numpy as np

from mlx_kssm.kernels import cuda, dispatch, metal, reference

BACKENDS = {"metal": metal, "cuda": cuda}


@pytest.fixture(autouse=True)
def fresh_dispatch(monkeypatch):
    monkeypatch.setattr(dispatch, "_mode", "auto")
    monkeypatch.setattr(dispatch, "_kernel_ok", {})


def pretend_gpu(monkeypatch, backend):
    """This machine has `backend`'s GPU, and only that one."""
    monkeypatch.setattr(mx.metal, "is_available", lambda: backend == "metal")
    monkeypatch.setattr(cuda, "is_available", lambda: backend == "cuda")


def _same_as_reference(force_r=None):
    x = reference.random_inputs(2, 5, 3, 8)
    got = dispatch.oscillator_scan(*x, force_r=force_r)
    want = reference.scan_sequential(*x, force_r=force_r)
    for a, b in zip(got, want):
        assert np.array_equal(np.array(a), np.array(b))
    step_in = [a[:, 0] for a in x[:5]]
    got = dispatch.oscillator_step(x[5], x[6], *step_in, force_r=force_r)
    want = reference.scan_step(x[5], x[6], *step_in, force_r=force_r)
    for a, b in zip(got, want):
        assert np.array_equal(np.array(a), np.array(b))


@pytest.mark.skipif(dispatch.gpu_backend() is not None, reason="checks the no-GPU path")
def test_auto_uses_reference_without_a_gpu():
    dispatch.set_kernel("auto")
    assert dispatch.get_kernel() == "auto"
    assert dispatch.active_impl() == "reference"
    _same_as_reference()
    _same_as_reference(force_r=0.4)


@pytest.mark.parametrize("backend", ["metal", "cuda"])
def test_fused_mode_is_a_clear_error_without_its_gpu(backend):
    if dispatch.gpu_backend() == backend:
        pytest.skip(f"checks the no-{backend} path")
    module, label = BACKENDS[backend], dispatch.BACKEND_LABELS[backend]
    with pytest.raises(RuntimeError, match=label):
        dispatch.set_kernel(backend)
    assert module._make_kernel("kssm_scan") is None
    with pytest.raises(RuntimeError, match=label):
        module.scan(*reference.random_inputs(1, 2, 1, 4))
    ok, detail = module.self_check()
    assert not ok and label in detail


def test_each_gpu_backend_rejects_the_other_mode(monkeypatch):
    pretend_gpu(monkeypatch, "cuda")
    with pytest.raises(RuntimeError, match="Metal"):
        dispatch.set_kernel("metal")
    pretend_gpu(monkeypatch, "metal")
    with pytest.raises(RuntimeError, match="CUDA"):
        dispatch.set_kernel("cuda")


def test_reference_mode_and_bad_mode():
    dispatch.set_kernel("reference")
    assert dispatch.active_impl() == "reference"
    _same_as_reference()
    with pytest.raises(ValueError):
        dispatch.set_kernel("cuda-please")


@pytest.mark.parametrize("failure", ["mismatch", "compile error"])
@pytest.mark.parametrize("backend,mode", [("metal", "auto"), ("metal", "metal"),
                                          ("cuda", "auto"), ("cuda", "cuda")])
def test_failed_self_check_warns_once_and_falls_back(monkeypatch, failure, backend, mode):
    pretend_gpu(monkeypatch, backend)
    module = BACKENDS[backend]
    dispatch.set_kernel(mode)
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
        assert dispatch.active_impl() == "reference"
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would fail here
        _same_as_reference()
        _same_as_reference(force_r=0.4)
        assert dispatch.active_impl() == "reference"
    assert len(checks) == 1  # checked once per process


@pytest.mark.parametrize("backend", ["metal", "cuda"])
def test_passing_self_check_routes_auto_to_the_backend_present(monkeypatch, backend):
    pretend_gpu(monkeypatch, backend)
    module = BACKENDS[backend]
    monkeypatch.setattr(module, "self_check", lambda: (True, "ok"))
    seen = []
    monkeypatch.setattr(module, "scan", lambda *a, force_r=None: seen.append(force_r) or a[:2])
    assert dispatch.active_impl() == backend
    x = reference.random_inputs(1, 2, 1, 4)
    dispatch.oscillator_scan(*x)
    dispatch.oscillator_scan(*x, force_r=0.3)
    assert seen == [None, 0.3]
