"""Metrics with the MedMNIST evaluator's semantics, plus pooled and per-image Dice for segmentation.

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


DICE_THRESHOLD = 0.5  # a pixel is foreground when its probability is > 0.5 (BTL Version1/utils.py:137-139)


def _binary(masks: np.ndarray, threshold: float | None) -> np.ndarray:
    """``(N, ...)`` probabilities or masks -> ``(N, pixels)`` booleans (``> threshold``; None: already binary)."""
    array = np.asarray(masks)
    array = array > threshold if threshold is not None else array.astype(bool)
    return array.reshape(len(array), -1)


def dice_pooled(pred: np.ndarray, truth: np.ndarray, *, threshold: float | None = DICE_THRESHOLD) -> float:
    """Dice over all pixels of all images at once: ``2|P∩T| / (|P| + |T|)``, 1.0 when both are empty.

    The benchmark papers' headline "Dice = x%" (BTL ``Version1/engine.py:246``, ``Version2/engine.py:211``;
    ``dice`` in ``Version1/utils.py:137-151``): prediction and truth are thresholded with ``> 0.5`` and pooled
    over the whole test set.

    Args:
        pred: ``(N, ...)`` predicted probabilities (or binary masks with ``threshold=None``).
        truth: ``(N, ...)`` ground truth of the same shape (0/1).
        threshold: probabilities strictly above it are foreground; None when ``pred`` is already binary.

    Raises:
        ValueError: shapes differ.
    """
    p, t = _binary(pred, threshold), _binary(truth, DICE_THRESHOLD)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} differ in shape")
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total


def dice_per_image(pred: np.ndarray, truth: np.ndarray, *, threshold: float | None = DICE_THRESHOLD) -> np.ndarray:
    """Dice of each image (empty prediction and empty truth: 1.0), shape ``(N,)``.

    The released "Mean Dice" line averages these (``mean_dice_coef``, BTL ``Version1/utils.py:153-157``).
    """
    p, t = _binary(pred, threshold), _binary(truth, DICE_THRESHOLD)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} differ in shape")
    total = p.sum(1) + t.sum(1)
    inter = (p & t).sum(1)
    return np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))


class DiceAccumulator:
    """Pooled and per-image Dice over a test set seen batch by batch (no need to hold every mask at once).

    ``pooled`` equals :func:`dice_pooled` and ``per_image`` :func:`dice_per_image` on the concatenated batches.
    """

    def __init__(self, threshold: float | None = DICE_THRESHOLD) -> None:
        self.threshold = threshold
        self.intersection = 0
        self.total = 0
        self.images: list[np.ndarray] = []

    def update(self, pred: np.ndarray, truth: np.ndarray) -> None:
        """Add a batch: ``(B, ...)`` probabilities (or binary masks) and ``(B, ...)`` 0/1 truth."""
        p, t = _binary(pred, self.threshold), _binary(truth, DICE_THRESHOLD)
        if p.shape != t.shape:
            raise ValueError(f"prediction {p.shape} and truth {t.shape} differ in shape")
        self.intersection += int((p & t).sum())
        self.total += int(p.sum()) + int(t.sum())
        self.images.append(dice_per_image(p, t, threshold=None))

    @property
    def pooled(self) -> float:
        """Dice over every pixel seen (1.0 when prediction and truth are both empty)."""
        return 1.0 if self.total == 0 else 2.0 * self.intersection / self.total

    @property
    def per_image(self) -> np.ndarray:
        """Dice of each image seen, in order."""
        return np.concatenate(self.images) if self.images else np.zeros(0)


def dice(pred: np.ndarray, truth: np.ndarray, *, threshold: float | None = DICE_THRESHOLD) -> float:
    """Mean per-image Dice (empty vs empty = 1): the released "Mean Dice" line, reported beside the pooled one."""
    return float(np.mean(dice_per_image(pred, truth, threshold=threshold)))


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
