"""mlx-kssm: Kuramoto State-Space language models in MLX.

Import this package before `mlx` in your own scripts: on Linux it first loads an optimized
BLAS (OpenBLAS) so MLX's CPU matmuls run ~25x faster than with the wheel's reference BLAS.
"""

from . import _blas

_blas.setup()

__version__ = "0.2.0"

from .models import ForceR, ModelArgs, build_model, count_parameters  # noqa: E402

__all__ = ["ForceR", "ModelArgs", "build_model", "count_parameters"]

from .io import load, save_model  # noqa: E402
from .export.exporter import export_model  # noqa: E402

__all__ += ["export_model", "load", "save_model"]

from .evaluation import EvalConfig, EvalResult, evaluate  # noqa: E402

__all__ += ["EvalConfig", "EvalResult", "evaluate"]

from .probe.validate import ValidateConfig, validate  # noqa: E402

__all__ += ["ValidateConfig", "validate"]
