"""The shipped Metal kernel source, compiled as C++ and run on the CPU (no Metal here), against
the pure-MLX reference: forward, every gradient, decode step, forced R; plus planted bugs the
harness must catch. See tests/metal_harness/harness.py and metal_shim.h."""

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "metal_harness"))

import mlx_kssm  # noqa: E402,F401
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from mlx_kssm.kernels import dispatch, metal, reference  # noqa: E402

harness = pytest.importorskip("harness")

pytestmark = pytest.mark.skipif(shutil.which(harness.CXX) is None, reason="needs g++")


@pytest.fixture(scope="session")
def emulator():
    emu = harness.Emulator()
    harness.prebuild(emu)  # every shipped variant, compiled once (and cached on disk)
    return emu


@pytest.fixture
def emulated(monkeypatch, emulator):
    """The package's metal.scan / step / VJP, with each kernel launch run by the harness."""
    monkeypatch.setattr(metal, "_run_kernel", emulator.run_kernel)
    return emulator


def _assert_parity(res):
    bad = {k: v for k, v in res["errors"].items() if not v <= 2e-4}
    assert res["ok"] and not bad, f"kernel vs reference mismatch: {bad}"


def test_generated_source_is_mlxs_own(tmp_path):
    """Our signature generator reproduces, byte for byte, what MLX itself generates (MLX prints
    it when export-tracing a kernel call, which works without Metal)."""
    x = reference.random_inputs(2, 3, 4, 5)
    dr, di, k, cr, ci, z0r, z0i = x
    calls = [("kssm_scan", metal.scan_call(*x)),
             ("kssm_scan", metal.scan_call(*x, force_r=0.5)),
             ("kssm_scan_vjp", metal.scan_vjp_call(dr, di, k, z0r, z0i, dr, di, dr, di)),
             ("kssm_step", metal.step_call(z0r, z0i, *(a[:, 0] for a in x[:5]), force_r=0.5))]
    for name, call in calls:
        spec = metal.kernel_spec(name)
        kernel = mx.fast.metal_kernel(**spec)
        r, w = os.pipe()
        saved = os.dup(1)
        sys.stdout.flush()
        os.dup2(w, 1)
        try:
            mx.export_function(str(tmp_path / f"{name}.mlxfn"),
                               lambda *ins: kernel(**{**call, "inputs": list(ins)}, verbose=True),
                               *call["inputs"])
        except Exception as e:  # older MLX: no export tracing without Metal
            pytest.skip(f"MLX cannot trace a Metal kernel here: {e}")
        finally:
            os.dup2(saved, 1)
            os.close(w)
            os.close(saved)
        printed = os.read(r, 1 << 20).decode()
        os.close(r)
        real = printed.split("```\n", 1)[1].rsplit("\n```", 1)[0]
        _, ours, _ = harness.generated_source(
            **spec, inputs=[(a.dtype, a.shape) for a in call["inputs"]],
            output_dtypes=call["output_dtypes"], template=call.get("template", ()))
        assert ours == real, name


@pytest.mark.parametrize("B,T,G,n", [
    (2, 7, 4, 5),      # n far below a simdgroup
    (2, 33, 4, 16),    # the presets' group size
    (1, 9, 8, 40),     # two simdgroups (one partial): threadgroup-memory reduction + barrier
    (3, 1, 3, 16),     # T = 1
])
def test_scan_forward_backward_step(emulated, B, T, G, n):
    _assert_parity(metal.parity_check(B=B, T=T, G=G, n=n, seed=B * T + n))


def test_long_sequence(emulated):
    _assert_parity(metal.parity_check(B=1, T=1024, G=2, n=16, step_check=False, seed=3))


@pytest.mark.parametrize("n", [16, 40])
def test_forced_r(emulated, n):
    res = metal.parity_check(B=2, T=12, G=4, n=n, force_r=0.37, seed=n)
    _assert_parity(res)
    x = reference.random_inputs(2, 12, 4, n)
    free, forced = reference.scan_sequential(*x), metal.scan(*x, force_r=0.37)
    assert float(mx.max(mx.abs(free[0] - forced[0]))) > 1e-2  # forcing really acts


def test_barriers_under_adversarial_scheduling(monkeypatch):
    """Random sleeps before every barrier and simd op: the correct source still agrees."""
    monkeypatch.setattr(metal, "_run_kernel", harness.Emulator(jitter=7).run_kernel)
    _assert_parity(metal.parity_check(B=1, T=24, G=8, n=40, seed=5))


def test_fp16_inputs_and_broadcast_state(emulated):
    """Half inputs run in fp32; a broadcast z0 (as the model passes it) gets summed grads."""
    dr, di, k, cr, ci, z0r, z0i = reference.random_inputs(2, 5, 4, 8)
    z0r, z0i = z0r[:1, :, :], z0i[:1, :, :]  # (1, G, n), broadcast over the batch
    half = [a.astype(mx.float16) for a in (dr, di, k, cr, ci)]

    def loss(fn, *a):
        zr, zi = fn(*a[:5], mx.broadcast_to(a[5], (2, 4, 8)), mx.broadcast_to(a[6], (2, 4, 8)))
        return mx.sum(zr * zr) + mx.sum(zi)

    args = [*half, z0r, z0i]
    gk = mx.grad(lambda *a: loss(metal.scan, *a), argnums=tuple(range(7)))(*args)
    gr = mx.grad(lambda *a: loss(reference.scan_sequential, *[x.astype(mx.float32) for x in a]),
                 argnums=tuple(range(7)))(*args)
    for a, b in zip(gk, gr):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.allclose(np.array(a, np.float32), np.array(b, np.float32), atol=2e-2, rtol=1e-2)


def test_dispatch_routes_to_kernel_when_it_passes_its_check(emulated, monkeypatch):
    """With a (pretend) Metal GPU, `auto` runs the self-check -- here on the emulated kernels --
    and then the model-facing scan and step go through the kernel, forced runs included."""
    monkeypatch.setattr(mx.metal, "is_available", lambda: True)
    monkeypatch.setattr(dispatch, "_mode", "auto")
    monkeypatch.setattr(dispatch, "_kernel_ok", None)
    calls = []
    run = metal._run_kernel
    monkeypatch.setattr(metal, "_run_kernel", lambda name, **kw: calls.append(name) or run(name, **kw))
    assert dispatch.active_impl() == "metal"
    x = reference.random_inputs(2, 6, 4, 16)
    calls.clear()
    for force in (None, 0.5):
        got = dispatch.oscillator_scan(*x, force_r=force)
        want = reference.scan_sequential(*x, force_r=force)
        assert np.allclose(np.array(got[0]), np.array(want[0]), atol=1e-5)
        got = dispatch.oscillator_step(x[5], x[6], *(a[:, 0] for a in x[:5]), force_r=force)
        want = reference.scan_step(x[5], x[6], *(a[:, 0] for a in x[:5]), force_r=force)
        assert np.allclose(np.array(got[1]), np.array(want[1]), atol=1e-5)
    assert calls == ["kssm_scan", "kssm_step"] * 2


# Planted bugs: each mutates a shipped source string; the harness must report a mismatch.
BARRIER = "metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);"
PLANTED = {
    "missing barrier": ("HEADER", BARRIER, "", dict(B=1, T=24, G=8, n=40, grads=False,
                                                    step_check=False)),
    "reverse scan stops one step early": (
        "SCAN_VJP_SOURCE", "for (int t = T - 1; t >= 0; --t)", "for (int t = T - 1; t > 0; --t)",
        dict(B=2, T=9, G=4, n=16, step_check=False)),
    "reverse scan reads z_t for z_(t-1)": (
        "SCAN_VJP_SOURCE", "float pr = (t > 0) ? zr[idx - step] : z0r[s0];",
        "float pr = (t > 0) ? zr[idx] : z0r[s0];", dict(B=2, T=9, G=4, n=16, step_check=False)),
}


@pytest.mark.parametrize("bug", list(PLANTED))
def test_harness_catches_planted_bug(monkeypatch, bug):
    attr, old, new, shape = PLANTED[bug]
    shipped = getattr(metal, attr)
    assert shipped.count(old) == 1, "the planted bug no longer matches the shipped source"
    monkeypatch.setattr(metal, attr, shipped.replace(old, new))
    monkeypatch.setattr(metal, "_run_kernel", harness.Emulator(jitter=11).run_kernel)
    res = metal.parity_check(**shape)
    assert not res["ok"], f"planted bug '{bug}' went unnoticed: {res['errors']}"
