"""`mlx-kssm study`: the comparison a researcher would otherwise script by hand. Every model
(a K-SSM preset, its matched transformer, its bolted control, its upstream-v3 and the preset
evaluated untrained) on every seed, trained by the ordinary trainer on the same batches,
evaluated by the shared evaluation and the causality suite (docs/causality.md), summarized
over seeds in study.json, study.md and plots."""

from .report import summarize, study_markdown
from .runner import (RANDOM_INIT, StudyConfig, StudyResult, default_models, run_state,
                     run_study)

__all__ = ["RANDOM_INIT", "StudyConfig", "StudyResult", "default_models", "run_state",
           "run_study", "study_markdown", "summarize"]
