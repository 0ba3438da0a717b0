"""`--kernel auto|metal|reference`: the reference where Metal is absent, a clear error for
`metal` there, and a failed first-use check falls back to the reference with one warning."""

import warnings

import pytest

import mlx_kssm  # noqa: F401
import mlx.core as mx
import numpy as np

from mlx_kssm.kernels import dispatch, metal, reference


@pytest.fixture(autouse=True)
def fresh_dispatch(monkeypatch):
    monkeypatch.setattr(dispatch, "_mode", "auto")
    monkeypatch.setattr(dispatch, "_kernel_ok", None)


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


@pytest.mark.skipif(mx.metal.is_available(), reason="checks the no-Metal path")
def test_auto_uses_reference_without_metal():
    dispatch.set_kernel("auto")
    assert dispatch.get_kernel() == "auto"
    assert dispatch.active_impl() == "reference"
    _same_as_reference()
    _same_as_reference(force_r=0.4)


@pytest.mark.skipif(mx.metal.is_available(), reason="checks the no-Metal path")
def test_metal_is_a_clear_error_without_metal():
    with pytest.raises(RuntimeError, match="Metal"):
        dispatch.set_kernel("metal")
    assert metal._make_kernel("kssm_scan") is None
    with pytest.raises(RuntimeError, match="Metal"):
        metal.scan(*reference.random_inputs(1, 2, 1, 4))
    ok, detail = metal.self_check()
    assert not ok and "Metal" in detail


def test_reference_mode_and_bad_mode():
    dispatch.set_kernel("reference")
    assert dispatch.active_impl() == "reference"
    _same_as_reference()
    with pytest.raises(ValueError):
        dispatch.set_kernel("cuda-please")


@pytest.mark.parametrize("failure", ["mismatch", "compile error"])
@pytest.mark.parametrize("mode", ["auto", "metal"])
def test_failed_self_check_warns_once_and_falls_back(monkeypatch, failure, mode):
    monkeypatch.setattr(mx.metal, "is_available", lambda: True)  # pretend a Metal GPU
    dispatch.set_kernel(mode)
    checks = []

    def self_check():
        checks.append(1)
        if failure == "compile error":
            raise RuntimeError("program_source:12:5: error: use of undeclared identifier")
        return False, "mismatch vs reference: grad_k 3.1e-01"

    def never(*a, **k):
        raise AssertionError("the kernel ran after failing its check")

    monkeypatch.setattr(metal, "self_check", self_check)
    monkeypatch.setattr(metal, "scan", never)
    monkeypatch.setattr(metal, "step", never)
    with pytest.warns(UserWarning, match="self-check") as record:
        assert dispatch.active_impl() == "reference"
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would fail here
        _same_as_reference()
        _same_as_reference(force_r=0.4)
        assert dispatch.active_impl() == "reference"
    assert len(checks) == 1  # checked once per process


def test_passing_self_check_routes_to_kernel(monkeypatch):
    monkeypatch.setattr(mx.metal, "is_available", lambda: True)
    monkeypatch.setattr(metal, "self_check", lambda: (True, "ok"))
    seen = []
    monkeypatch.setattr(metal, "scan", lambda *a, force_r=None: seen.append(force_r) or a[:2])
    assert dispatch.active_impl() == "metal"
    x = reference.random_inputs(1, 2, 1, 4)
    dispatch.oscillator_scan(*x)
    dispatch.oscillator_scan(*x, force_r=0.3)
    assert seen == [None, 0.3]
