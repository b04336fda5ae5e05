"""Training: fit/evaluate loops, metrics, seeds and resumable state, U-Net decoder, reports and plots.

Importing this package imports torch; the CLI imports it inside its handlers only.
"""

from medhub.train.loop import Evaluation, FitConfig, FitResult, evaluate, fit
from medhub.train.metrics import accuracy, dice, per_class_auc

__all__ = ["Evaluation", "FitConfig", "FitResult", "accuracy", "dice", "evaluate", "fit", "per_class_auc"]
