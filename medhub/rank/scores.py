"""Transferability scores from frozen features: LogME, H-score, NLEEP, LEEP, NCE and a kNN baseline.

Every score takes ``features`` (N, D) and the task's ``labels`` and returns one number, higher meaning
"should transfer better". Shapes of ``labels`` follow :class:`medhub.data.sources.SplitData`: (N,) int class
indices for binary, multi-class and ordinal tasks; (N, L) {0, 1} floats for multi-label tasks.

How each task type is handled (:data:`HANDLING` says it per score):

* binary / multi-class: the classes as they are;
* multi-label: the score of each label as its own binary task, averaged over the labels (a label with one
  class only in the sample is left out);
* ordinal: LogME regresses the grade itself (its Gaussian model fits an ordered target); the others treat
  the grades as unordered classes.

LEEP and NCE need the checkpoint's own source classifier (its logits, (N, Z)); a checkpoint without one
(self-supervised backbones, ``medhub adapt`` outputs, ``random:`` baselines) gets :class:`ScoreUnavailable`,
shown as ``n/a`` with the reason. Research software, not a medical device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medhub.errors import UsageError

SINGLE_LABEL = ("binary", "multi-class", "ordinal")
TASK_TYPES = (*SINGLE_LABEL, "multi-label")


class ScoreUnavailable(Exception):
    """A score that cannot be computed for this checkpoint (e.g. LEEP without a source head); not an error."""


# ---- LogME -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evidence:
    """LogME's result for one target column: the maximised log evidence per sample and its hyper-parameters.

    Attributes:
        value: ``log p(y | F, alpha, beta) / N`` at the maximum.
        alpha: precision of the Gaussian prior on the weights ``w ~ N(0, alpha^-1 I)``.
        beta: precision of the observation noise ``y = F w + eps, eps ~ N(0, beta^-1 I)``.
        iterations: fixed-point iterations run.
    """

    value: float
    alpha: float
    beta: float
    iterations: int


def log_evidence(sigma: np.ndarray, z: np.ndarray, y_norm2: float, n: int, d: int, alpha: float,
                 beta: float) -> tuple[float, float, float]:
    """``(log evidence, ||m||^2, ||F m - y||^2)`` of Bayesian linear regression in SVD coordinates.

    With ``F = U diag(s) V^T`` (rank r), ``sigma = s^2`` (r,) the non-zero eigenvalues of ``F^T F``, and
    ``z = U^T y`` (r,), the posterior mean is ``m = V diag(beta s / (alpha + beta sigma)) z`` and
    (You et al., ICML 2021, Eq. 2; Bishop, PRML Eq. 3.86)::

        log p(y | F, alpha, beta) = D/2 log alpha + N/2 log beta - N/2 log 2 pi
                                    - beta/2 ||F m - y||^2 - alpha/2 ||m||^2 - 1/2 log |alpha I + beta F^T F|

    where ``log |A| = sum_i log(alpha + beta sigma_i) + (D - r) log alpha``.
    """
    denom = alpha + beta * sigma
    m2 = float(np.sum((beta * np.sqrt(sigma) * z / denom) ** 2))
    outside = max(y_norm2 - float(np.sum(z**2)), 0.0)  # the part of y outside F's column space
    res2 = float(np.sum((alpha * z / denom) ** 2)) + outside
    logdet = float(np.sum(np.log(denom))) + (d - len(sigma)) * math.log(alpha)
    value = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - n / 2 * math.log(2 * math.pi)
             - beta / 2 * res2 - alpha / 2 * m2 - logdet / 2)
    return value, m2, res2


def _svd(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(U_r (N, r), sigma (r,))``: left singular vectors and squared singular values of ``F`` (rank r)."""
    u, s, _ = np.linalg.svd(np.asarray(features, dtype=np.float64), full_matrices=False)
    keep = s > s.max(initial=0.0) * 1e-10
    return u[:, keep], s[keep] ** 2


def logme_evidence(features: np.ndarray, y: np.ndarray, *, max_iter: int = 100, tol: float = 1e-6,
                   svd: tuple[np.ndarray, np.ndarray] | None = None) -> Evidence:
    """Maximise the evidence of ``y`` (N,) given ``features`` (N, D) with LogME's fixed-point iteration.

    The iteration (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
    ICML 2021, Algorithm 1; MacKay 1992) updates, from ``alpha = beta = 1``::

        gamma = sum_i beta sigma_i / (alpha + beta sigma_i)
        alpha = gamma / ||m||^2,      beta = (N - gamma) / ||F m - y||^2

    with one SVD of ``F`` up front (pass ``svd`` from :func:`_svd` to share it between target columns), so
    each step costs O(min(N, D)): the paper's fast variant.
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    n, d = np.shape(features)
    u, sigma = svd if svd is not None else _svd(features)
    z = u.T @ y
    y_norm2 = float(y @ y)
    alpha, beta, iterations = 1.0, 1.0, 0
    while iterations < max_iter:
        iterations += 1
        _, m2, res2 = log_evidence(sigma, z, y_norm2, n, d, alpha, beta)
        gamma = float(np.sum(beta * sigma / (alpha + beta * sigma)))
        new_alpha = gamma / max(m2, 1e-300)
        new_beta = (n - gamma) / max(res2, 1e-300)
        converged = abs(new_alpha / new_beta - alpha / beta) <= tol * (alpha / beta)
        alpha, beta = min(max(new_alpha, 1e-12), 1e12), min(max(new_beta, 1e-12), 1e12)
        if converged:
            break
    value, _, _ = log_evidence(sigma, z, y_norm2, n, d, alpha, beta)
    return Evidence(value / n, alpha, beta, iterations)


def logme(features: np.ndarray, labels: np.ndarray, task_type: str, logits: np.ndarray | None = None) -> float:
    """LogME (You et al., ICML 2021): mean over target columns of the maximised log evidence per sample.

    Binary and multi-class: one column per class of the one-hot labels (N, K), as in the paper; multi-label:
    one column per label (N, L), i.e. averaged over labels; ordinal: the grade (N,) as one regression target.
    Typical values lie in about [-2, 2]; only the order between checkpoints on the same data matters.
    """
    labels = np.asarray(labels)
    if task_type == "ordinal":
        columns = labels.reshape(-1, 1).astype(np.float64)
    elif task_type == "multi-label":  # labels with one value only in the sample are left out, as in _per_label
        hard = labels.reshape(len(labels), -1) >= 0.5
        columns = hard[:, hard.any(axis=0) & ~hard.all(axis=0)].astype(np.float64)
    else:
        classes = np.unique(labels)
        columns = (labels.reshape(-1, 1) == classes.reshape(1, -1)).astype(np.float64)
    svd = _svd(features)
    return float(np.mean([logme_evidence(features, columns[:, k], svd=svd).value for k in range(columns.shape[1])]))


# ---- H-score -----------------------------------------------------------------------------------------------
def _shrunk_covariance(x: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf shrinkage covariance (D, D) of centred ``x`` (N, D) (Ledoit & Wolf, J. Multivar. Anal. 2004)."""
    from sklearn.covariance import ledoit_wolf

    return ledoit_wolf(x, assume_centered=True)[0]


def _hscore_single(features: np.ndarray, y: np.ndarray) -> float:
    f = features - features.mean(axis=0, keepdims=True)
    cov_f = _shrunk_covariance(f)
    class_means = np.zeros_like(f)
    for c in np.unique(y):
        class_means[y == c] = f[y == c].mean(axis=0)
    cov_g = class_means.T @ class_means / len(f)
    return float(np.trace(np.linalg.solve(cov_f, cov_g)))


def hscore(features: np.ndarray, labels: np.ndarray, task_type: str, logits: np.ndarray | None = None) -> float:
    """H-score (Bao et al., "An Information-Theoretic Approach to Transferability in Task Transfer Learning",
    ICIP 2019): ``tr(cov(f)^-1 cov(E[f | y]))`` for features f (N, D) and classes y (N,).

    ``cov(f)`` is the Ledoit-Wolf shrinkage estimate, the regularised H-score of Ibrahim et al. (ICLR 2023),
    since the plain sample covariance is singular whenever D >= N. Classes as they are for binary,
    multi-class and ordinal (order ignored); per label, averaged, for multi-label.
    """
    return _per_label(_hscore_single, features, labels, task_type)


# ---- LEEP, NLEEP and NCE ------------------------------------------------------------------------------------
def _leep_from_probabilities(theta: np.ndarray, y: np.ndarray) -> float:
    """LEEP (Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned Representations",
    ICML 2020, Eqs. 1-2) from source probabilities ``theta`` (N, Z) and target classes y (N,)::

        P(y, z) = 1/N sum_i theta_iz [y_i = y],    P(y | z) = P(y, z) / sum_y' P(y', z)
        LEEP    = 1/N sum_i log sum_z P(y_i | z) theta_iz
    """
    classes, index = np.unique(y, return_inverse=True)
    onehot = np.eye(len(classes))[index]  # (N, K)
    joint = onehot.T @ theta / len(y)  # (K, Z)
    conditional = joint / np.maximum(joint.sum(axis=0, keepdims=True), 1e-300)
    eep = np.sum(theta * conditional[index], axis=1)
    return float(np.mean(np.log(np.maximum(eep, 1e-300))))


def _source_probabilities(logits: np.ndarray | None) -> np.ndarray:
    if logits is None or logits.size == 0:
        raise ScoreUnavailable("no source classifier (head-less backbone or random: baseline)")
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape[1] == 1:  # one sigmoid output: the two-class distribution [1 - p, p]
        p = 1.0 / (1.0 + np.exp(-logits))
        return np.concatenate([1.0 - p, p], axis=1)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def leep(features: np.ndarray, labels: np.ndarray, task_type: str, logits: np.ndarray | None = None) -> float:
    """LEEP (Nguyen et al., ICML 2020) with the checkpoint's own source head: softmax of ``logits`` (N, Z)
    (a single output: sigmoid as two classes). Raises :class:`ScoreUnavailable` without a head."""
    theta = _source_probabilities(logits)
    return _per_label(lambda _f, y: _leep_from_probabilities(theta, y), features, labels, task_type)


def nce(features: np.ndarray, labels: np.ndarray, task_type: str, logits: np.ndarray | None = None) -> float:
    """NCE, negative conditional entropy (Tran et al., "Transferability and Hardness of Supervised
    Classification Tasks", ICCV 2019): ``-H(Y | Z) = sum_{y,z} P(y, z) log P(y | z)`` with Z the source
    head's predicted class (argmax of ``logits`` (N, Z)). Raises :class:`ScoreUnavailable` without a head."""
    theta = _source_probabilities(logits)
    z = theta.argmax(axis=1)

    def single(_f: np.ndarray, y: np.ndarray) -> float:
        _, yi = np.unique(y, return_inverse=True)
        _, zi = np.unique(z, return_inverse=True)
        joint = np.zeros((yi.max() + 1, zi.max() + 1))
        np.add.at(joint, (yi, zi), 1.0 / len(y))
        conditional = joint / joint.sum(axis=0, keepdims=True)
        mask = joint > 0
        return float(np.sum(joint[mask] * np.log(conditional[mask])))

    return _per_label(single, features, labels, task_type)


def nleep(features: np.ndarray, labels: np.ndarray, task_type: str, logits: np.ndarray | None = None) -> float:
    """NLEEP (Li et al., "Ranking Neural Checkpoints", CVPR 2021): LEEP with the source head replaced by a
    Gaussian mixture on the features, so it needs no head. Features (N, D) are reduced by PCA to the
    components keeping 80% of the variance; the mixture has 5 x (number of classes) full-covariance
    components (fewer when N is small); its posteriors (N, V) play the role of ``theta`` in LEEP. Seeded
    (random_state 0), so the value is reproducible."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    reduced = PCA(n_components=0.8, svd_solver="full", random_state=0).fit_transform(
        np.asarray(features, dtype=np.float64))

    def single(_f: np.ndarray, y: np.ndarray) -> float:
        k = len(np.unique(y))
        components = max(1, min(5 * k, len(y) // max(reduced.shape[1] + 1, 2)))
        mixture = GaussianMixture(components, covariance_type="full", reg_covar=1e-4, random_state=0, max_iter=200)
        theta = mixture.fit(reduced).predict_proba(reduced)
        return _leep_from_probabilities(theta, y)

    return _per_label(single, features, labels, task_type)


# ---- kNN: a cross-validated, slower and stronger baseline -------------------------------------------------
KNN_NEIGHBOURS = 20
KNN_FOLDS = 5


def fold_ids(labels: np.ndarray, folds: int = KNN_FOLDS, seed: int = 0) -> np.ndarray:
    """Fold (0..folds-1) of each sample, stratified by class (by label combination for (N, L) labels)."""
    labels = np.asarray(labels)
    keys = labels.reshape(len(labels), -1)
    _, group = np.unique(keys, axis=0, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(labels))
    out = np.empty(len(labels), dtype=np.int64)
    for g in np.unique(group):
        members = order[group.reshape(-1)[order] == g]
        out[members] = np.arange(len(members)) % folds
    return out


def knn(features: np.ndarray, labels: np.ndarray, task_type: str, logits: np.ndarray | None = None) -> float:
    """Cross-validated k-nearest-neighbour AUC: the probe a fine-tuned metric is closest to, and the slowest.

    Features (N, D) are standardised and L2-normalised; each sample's class (or label) probabilities are the
    shares of its ``KNN_NEIGHBOURS`` nearest neighbours by cosine similarity among the other folds' samples
    (``KNN_FOLDS``-fold, stratified, seed 0). The value is the task's AUC of these out-of-fold predictions
    (:mod:`medhub.train.metrics`: positive-class AUC for binary, mean one-vs-rest AUC for multi-class and
    ordinal, mean per-label AUC for multi-label), on the 0-1 scale.
    """
    from medhub.train.metrics import mean_of, per_class_auc

    x = np.asarray(features, dtype=np.float64)
    x = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-12)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(labels)
    if task_type == "multi-label":
        targets = (labels >= 0.5).astype(np.float64)
        names = tuple(str(i) for i in range(targets.shape[1]))
    else:
        classes, index = np.unique(labels, return_inverse=True)
        targets = np.eye(len(classes))[index]
        names = tuple(str(c) for c in classes)
    folds = fold_ids(labels)
    predicted = np.zeros_like(targets)
    for fold in np.unique(folds):
        test, train = folds == fold, folds != fold
        k = min(KNN_NEIGHBOURS, int(train.sum()))
        similarity = x[test] @ x[train].T
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        predicted[test] = targets[train][nearest].mean(axis=1)
    kind = "multi-label" if task_type == "multi-label" else ("binary" if task_type == "binary" else "multi-class")
    truth = targets if kind == "multi-label" else index
    return float(mean_of(per_class_auc(truth, predicted, kind, names)))


# ---- dispatch -----------------------------------------------------------------------------------------------
def _per_label(single: Callable[[np.ndarray, np.ndarray], float], features: np.ndarray, labels: np.ndarray,
               task_type: str) -> float:
    """``single(features, y)`` for a single-label task; its mean over labels (each binary) for multi-label."""
    labels = np.asarray(labels)
    if task_type != "multi-label":
        return single(features, labels.reshape(-1))
    hard = (labels >= 0.5).astype(np.int64)
    values = [single(features, hard[:, j]) for j in range(hard.shape[1]) if len(np.unique(hard[:, j])) == 2]
    return float(np.mean(values))


Score = Callable[..., float]
SCORES: dict[str, Score] = {"logme": logme, "hscore": hscore, "nleep": nleep, "leep": leep, "nce": nce, "knn": knn}
DEFAULT_SCORES = ("logme",)
NEEDS_HEAD = ("leep", "nce")
HANDLING = {
    "logme": "binary/multi-class: one-hot columns; multi-label: per label, averaged; ordinal: the grade regressed",
    "hscore": "classes; multi-label: per label, averaged; ordinal: grades as unordered classes",
    "nleep": "classes; multi-label: per label, averaged; ordinal: grades as unordered classes",
    "leep": "needs a source classifier; classes; multi-label: per label, averaged; ordinal: unordered classes",
    "nce": "needs a source classifier; classes; multi-label: per label, averaged; ordinal: unordered classes",
    "knn": "5-fold kNN AUC; multi-label: mean per-label AUC; ordinal: one-vs-rest AUC over grades",
}


def parse_scores(spec: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``"logme,knn"`` -> ``["logme", "knn"]``; an unknown name is a :class:`UsageError` listing the known ones."""
    if spec is None:
        return list(DEFAULT_SCORES)
    parts = spec if isinstance(spec, (list, tuple)) else spec.split(",")
    names = list(dict.fromkeys(p.strip().lower().replace("-", "") for p in parts if p.strip()))
    if not names:
        raise UsageError(f"no score given; use --score with some of {', '.join(SCORES)}")
    unknown = [n for n in names if n not in SCORES]
    if unknown:
        raise UsageError(f"unknown score(s) {', '.join(unknown)}; known: {', '.join(SCORES)}")
    return names


def check_labels(labels: np.ndarray, task_type: str) -> None:
    """Refuse a sample no score can rank on: one class only (per label, for multi-label: every label).

    Raises:
        UsageError: with what to do next (more images, another split, a fixed label file).
    """
    if task_type not in TASK_TYPES:
        raise UsageError(f"ranking needs a classification task; '{task_type}' tasks are not supported yet")
    labels = np.asarray(labels)
    if task_type == "multi-label":
        hard = labels.reshape(len(labels), -1) >= 0.5
        if not np.any(hard.any(axis=0) & ~hard.all(axis=0)):
            raise UsageError("every label has one value only in the sample; nothing to rank on: use more images "
                             "(--n-images) or check the labels")
        return
    found = np.unique(labels.reshape(-1))
    if len(found) < 2:
        raise UsageError(f"the sample holds one class only ({found[0] if len(found) else 'none'}); nothing to rank "
                         "on: use more images (--n-images) or check the training split's labels")


def compute(name: str, features: np.ndarray, labels: np.ndarray, task_type: str,
            logits: np.ndarray | None = None) -> float:
    """The score ``name`` (see :data:`SCORES`); :class:`ScoreUnavailable` when it does not apply."""
    return SCORES[name](features, labels, task_type, logits)
