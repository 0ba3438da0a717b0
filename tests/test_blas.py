"""The optimized-BLAS arrangement (Linux) and its fallbacks: MLX must keep working."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="Linux-only BLAS swap")

CHILD = r"""
import json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import mlx_kssm
    from mlx_kssm import _blas
import mlx.core as mx
out = mx.ones((3, 4)) @ mx.ones((4, 2))
print(json.dumps({"status": _blas.STATUS, "ok": bool((out == 4).all().item()),
                  "verify": _blas.verify_in_process(),
                  "warnings": [str(w.message) for w in caught]}))
"""


def run_child(env_extra, code=CHILD, tmp_path=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_KSSM_")}
    env.update(env_extra)
    if tmp_path is not None:  # a private probe cache, so nothing is answered from before
        env["XDG_CACHE_HOME"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_disabled_by_environment_keeps_mlx_working(tmp_path):
    res = run_child({"MLX_KSSM_NO_BLAS": "1"}, tmp_path=tmp_path)
    assert res["status"]["active"] is False and "MLX_KSSM_NO_BLAS" in res["status"]["reason"]
    assert res["ok"] and res["verify"]


def test_missing_library_warns_and_falls_back(tmp_path):
    res = run_child({"MLX_KSSM_BLAS": "/nonexistent/libopenblas.so.0"}, tmp_path=tmp_path)
    assert res["status"]["active"] is False
    assert any("does not exist" in w for w in res["warnings"])
    assert res["ok"] and res["verify"]


@pytest.mark.slow
def test_library_failing_verification_is_rejected(tmp_path):
    """libm has no cblas_sgemm: the child-process probe fails, MLX keeps its own BLAS."""
    import ctypes.util
    libm = ctypes.util.find_library("m")
    path = next(p for p in ("/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6",
                            "/lib/aarch64-linux-gnu/libm.so.6", "/lib64/libm.so.6")
                if os.path.exists(p)) if libm else None
    if path is None:
        pytest.skip("no libm path found")
    res = run_child({"MLX_KSSM_BLAS": path}, tmp_path=tmp_path)
    assert res["status"]["active"] is False and res["status"]["reason"].startswith("rejected")
    assert any("failed its check" in w for w in res["warnings"])
    assert res["ok"] and res["verify"]


def test_importing_mlx_first_warns(tmp_path):
    code = "import mlx.core\n" + CHILD
    res = run_child({}, code=code, tmp_path=tmp_path)
    assert res["status"]["active"] is False
    assert any("Import mlx_kssm first" in w for w in res["warnings"])


def test_openblas_is_used_when_present(tmp_path):
    from mlx_kssm import _blas
    if _blas.find_openblas() is None:
        pytest.skip("no OpenBLAS on this machine (apt-get install libopenblas0-pthread)")
    res = run_child({}, tmp_path=tmp_path)
    assert res["status"]["active"] is True, res["status"]
    assert res["verify"]
