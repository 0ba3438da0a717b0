"""Evaluation: `evaluator.py` is the library (`evaluate_loss`, shared with the trainer, and
`evaluate(model, data, EvalConfig(...))`, the whole report); `commands.py` is
`mlx-kssm evaluate`, which calls it."""

from .evaluator import (EvalConfig, EvalResult, check_same_tokenizer, evaluate, evaluate_loss,
                        format_evaluation, training_seed)

__all__ = ["EvalConfig", "EvalResult", "check_same_tokenizer", "evaluate", "evaluate_loss",
           "format_evaluation", "training_seed"]
