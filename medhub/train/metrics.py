"""Metrics with the MedMNIST evaluator's semantics, plus Dice for segmentation.

AUC: multi-label -> mean of per-label ROC-AUCs; binary -> ROC-AUC of the positive (last) column;
multi-class and ordinal -> mean one-vs-rest AUC. ACC: multi-label -> mean per-label accuracy at 0.5;
binary -> threshold 0.5; multi-class -> argmax. A label with one class only in ``y_true`` has no AUC
(NaN) and is left out of the mean, with a warning.
"""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)


def scores_from_logits(logits: np.ndarray, task_type: str) -> np.ndarray:
    """Probabilities: sigmoid for multi-label and single-output binary, softmax otherwise."""
    logits = np.asarray(logits, dtype=np.float64)
    if task_type == "multi-label" or logits.ndim == 1 or logits.shape[1] == 1:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _auc(truth: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(truth)) < 2:
        return float("nan")
    return float(roc_auc_score(truth, score))


def per_class_auc(y_true: np.ndarray, y_score: np.ndarray, task_type: str,
                  label_names: tuple[str, ...]) -> dict[str, float]:
    """AUC per label (multi-label), per class one-vs-rest (multi-class), or of the positive class (binary)."""
    y_score = np.asarray(y_score)
    if task_type == "multi-label":
        hard = (np.asarray(y_true) >= 0.5).astype(int)
        return {name: _auc(hard[:, i], y_score[:, i]) for i, name in enumerate(label_names)}
    y_true = np.asarray(y_true).reshape(-1).astype(int)
    if task_type == "binary":
        positive = y_score.reshape(len(y_score), -1)[:, -1]
        name = label_names[-1] if label_names else "positive"
        return {name: _auc(y_true, positive)}
    return {name: _auc((y_true == i).astype(int), y_score[:, i]) for i, name in enumerate(label_names)}


def mean_of(values: dict[str, float]) -> float:
    """Mean over the defined (non-NaN) values; NaN when none is defined."""
    defined = [v for v in values.values() if not math.isnan(v)]
    if len(defined) < len(values):
        log.warning("AUC undefined for %s (one class only); left out of the mean",
                    ", ".join(k for k, v in values.items() if math.isnan(v)))
    return float(np.mean(defined)) if defined else float("nan")


def accuracy(y_true: np.ndarray, y_score: np.ndarray, task_type: str) -> float:
    """MedMNIST ACC: per-label at 0.5 (multi-label), 0.5 on the positive column (binary), argmax otherwise."""
    y_score = np.asarray(y_score)
    if task_type == "multi-label":
        return float(np.mean((y_score >= 0.5) == (np.asarray(y_true) >= 0.5)))
    y_true = np.asarray(y_true).reshape(-1).astype(int)
    if task_type == "binary":
        return float(np.mean((y_score.reshape(len(y_score), -1)[:, -1] >= 0.5).astype(int) == y_true))
    return float(np.mean(y_score.argmax(axis=1) == y_true))


def dice(pred: np.ndarray, truth: np.ndarray, eps: float = 1e-6) -> float:
    """Mean per-image Dice of binary masks (``pred`` already thresholded); empty-vs-empty counts as 1."""
    pred = np.asarray(pred).reshape(len(pred), -1).astype(bool)
    truth = np.asarray(truth).reshape(len(truth), -1).astype(bool)
    inter = (pred & truth).sum(1)
    total = pred.sum(1) + truth.sum(1)
    return float(np.mean(np.where(total == 0, 1.0, (2 * inter + eps) / (total + eps))))


def roc_points(y_true: np.ndarray, y_score: np.ndarray, task_type: str,
               label_names: tuple[str, ...]) -> dict[str, tuple[list[float], list[float]]]:
    """(fpr, tpr) per class, for the ROC plot; classes with one label value only are skipped."""
    from sklearn.metrics import roc_curve

    y_score = np.asarray(y_score)
    curves = {}
    if task_type == "multi-label":
        pairs = [(name, (np.asarray(y_true)[:, i] >= 0.5).astype(int), y_score[:, i])
                 for i, name in enumerate(label_names)]
    elif task_type == "binary":
        pairs = [(label_names[-1], np.asarray(y_true).reshape(-1), y_score.reshape(len(y_score), -1)[:, -1])]
    else:
        truth = np.asarray(y_true).reshape(-1)
        pairs = [(name, (truth == i).astype(int), y_score[:, i]) for i, name in enumerate(label_names)]
    for name, truth, score in pairs:
        if len(np.unique(truth)) == 2:
            fpr, tpr, _ = roc_curve(truth, score)
            curves[name] = (fpr.tolist(), tpr.tolist())
    return curves
