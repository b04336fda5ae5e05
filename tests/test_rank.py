"""medhub rank: scores against their published definitions, on hand-made features; the CLI on real data."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from medhub.cli import main
from medhub.errors import UsageError
from medhub.rank import scores as S
from medhub.rank.features import stratified_sample

ROOT = Path(__file__).resolve().parents[1]


# ---- LogME against a direct, slow evidence maximisation ------------------------------------------------------
def direct_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y | 0, alpha^-1 F F^T + beta^-1 I): the marginal likelihood of Bayesian linear regression
    (Bishop, PRML Eq. 3.86 in its N x N form), computed without any SVD trick."""
    n = len(y)
    cov = f @ f.T / alpha + np.eye(n) / beta
    sign, logdet = np.linalg.slogdet(cov)
    assert sign > 0
    return float(-0.5 * (n * math.log(2 * math.pi) + logdet + y @ np.linalg.solve(cov, y)))


def slow_max_evidence(f: np.ndarray, y: np.ndarray) -> float:
    from scipy.optimize import minimize

    best = None
    for start in ((0.0, 0.0), (2.0, -2.0), (-2.0, 2.0)):
        fit = minimize(lambda p: -direct_log_evidence(f, y, math.exp(p[0]), math.exp(p[1])), start,
                       method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-11, "maxiter": 5000})
        best = fit if best is None or fit.fun < best.fun else best
    return -best.fun / len(y)


@pytest.mark.parametrize(("n", "d"), [(80, 6), (25, 40)])  # N > D, and N < D (the (D - r) log alpha term)
def test_logme_equals_direct_evidence_maximisation(n, d):
    rng = np.random.default_rng(n)
    f = rng.normal(size=(n, d))
    y = f @ rng.normal(size=d) * 0.7 + rng.normal(scale=0.5, size=n)
    fast = S.logme_evidence(f, y)
    # the closed form at LogME's (alpha, beta) is the evidence itself ...
    assert fast.value == pytest.approx(direct_log_evidence(f, y, fast.alpha, fast.beta) / n, abs=1e-7)
    # ... and the fixed point is the maximum a general-purpose optimiser finds
    assert fast.value == pytest.approx(slow_max_evidence(f, y), abs=1e-6)


def test_logme_multiclass_is_mean_over_one_hot_columns():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(60, 5))
    y = rng.integers(0, 3, 60)
    columns = [S.logme_evidence(f, (y == k).astype(float)).value for k in range(3)]
    assert S.logme(f, y, "multi-class") == pytest.approx(np.mean(columns), abs=1e-12)


# ---- hand-made separable vs random features, every score, every task type -----------------------------------
def make_task(task_type: str, n: int = 240, seed: int = 0):
    rng = np.random.default_rng(seed)
    if task_type == "multi-label":
        labels = (rng.random((n, 3)) < [0.3, 0.5, 0.2]).astype(np.float32)
        signal = labels * 2.0 - 1.0
    else:
        k = {"binary": 2, "multi-class": 4, "ordinal": 5}[task_type]
        labels = np.arange(n) % k
        rng.shuffle(labels)
        signal = np.eye(k)[labels] * 2.0 if task_type != "ordinal" else np.c_[labels, np.eye(k)[labels]]
    noise_dims = 12
    separable = np.c_[signal * 3.0, rng.normal(scale=0.3, size=(n, noise_dims))]
    random = rng.normal(size=separable.shape)
    # a source head that knows the target (its classes follow the label) vs one that does not
    informed_logits = np.c_[signal * 4.0, np.zeros((n, 1))]
    random_logits = rng.normal(size=informed_logits.shape)
    return labels, separable, random, informed_logits, random_logits


@pytest.mark.parametrize("task_type", ["binary", "multi-class", "multi-label", "ordinal"])
@pytest.mark.parametrize("score", sorted(S.SCORES))
def test_separable_features_outrank_random_ones(score, task_type):
    labels, separable, random, informed, uninformed = make_task(task_type)
    good = S.compute(score, separable, labels, task_type, informed)
    bad = S.compute(score, random, labels, task_type, uninformed)
    assert math.isfinite(good) and math.isfinite(bad)
    assert good > bad


def test_knn_is_an_auc_and_perfect_on_separable_features():
    labels, separable, random, _, _ = make_task("binary")
    assert S.knn(separable, labels, "binary") == pytest.approx(1.0)
    assert 0.3 < S.knn(random, labels, "binary") < 0.7  # chance level on noise


def test_leep_matches_its_definition_on_a_small_example():
    theta = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    y = np.array([0, 0, 1, 1])
    joint = np.array([[0.9 + 0.8, 0.1 + 0.2], [0.3 + 0.1, 0.7 + 0.9]]) / 4  # P(y, z)
    conditional = joint / joint.sum(axis=0)
    expected = np.mean([math.log(conditional[y[i]] @ theta[i]) for i in range(4)])
    logits = np.log(theta)  # softmax(log theta) = theta
    assert S.leep(np.zeros((4, 1)), y, "binary", logits) == pytest.approx(expected, abs=1e-12)


def test_nce_is_minus_conditional_entropy():
    z_logits = np.array([[5.0, 0], [5.0, 0], [0, 5.0], [0, 5.0]])  # Z = 0, 0, 1, 1
    assert S.nce(np.zeros((4, 1)), np.array([0, 0, 1, 1]), "binary", z_logits) == pytest.approx(0.0)
    # Z says nothing: H(Y|Z) = log 2
    assert S.nce(np.zeros((4, 1)), np.array([0, 1, 0, 1]), "binary", z_logits) == pytest.approx(-math.log(2))


def test_head_scores_say_when_there_is_no_head():
    labels, separable, *_ = make_task("binary")
    for name in S.NEEDS_HEAD:
        with pytest.raises(S.ScoreUnavailable, match="no source classifier"):
            S.compute(name, separable, labels, "binary", None)


def test_one_class_and_unknown_scores_are_refused():
    with pytest.raises(UsageError, match="one class only"):
        S.check_labels(np.zeros(10, dtype=int), "binary")
    with pytest.raises(UsageError, match="every label"):
        S.check_labels(np.ones((10, 3)), "multi-label")
    with pytest.raises(UsageError, match="segmentation"):
        S.check_labels(np.zeros(10), "segmentation")
    with pytest.raises(UsageError, match="unknown score"):
        S.parse_scores("logme,leap")
    assert S.parse_scores("LogME, h-score") == ["logme", "hscore"]


def test_stratified_sample_keeps_class_shares():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    picked = stratified_sample(labels, 100, seed=3)
    assert len(picked) == 100 and len(set(picked)) == 100
    assert np.bincount(labels[picked]).tolist() == [90, 9, 1]
    assert stratified_sample(labels, 5000).tolist() == list(range(1000))
    multi = np.zeros((200, 2))
    multi[:10, 1] = 1  # a rare finding keeps its share
    assert multi[stratified_sample(multi, 20), 1].sum() == 1


# ---- the CLI on real data ----------------------------------------------------------------------------------
def test_rank_cli_on_breastmnist_caches_features_and_lists_failures(shared_data, tmp_path, capsys, one_torch_thread):
    out = tmp_path / "rank"
    args = ["rank", "breastmnist", "--models", "random:test_resnet,random:resnet10t", "--data-dir",
            str(shared_data / "breastmnist"), "--n-images", "120", "--score", "logme,hscore,knn,leep",
            "--out", str(out), "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sample"]["n_images"] == 120
    assert sum(report["sample"]["classes"].values()) == 120
    assert report["sample"]["classes"] == {"malignant": 32, "normal+benign": 88}  # 147:399 of 546, stratified
    dims = {c["model"]: c["dim"] for c in report["candidates"]}
    assert dims == {"random:test_resnet": 96, "random:resnet10t": 512}
    assert [c["rank"] for c in report["candidates"]] == [1, 2]
    logme = [c["scores"]["logme"] for c in report["candidates"]]
    assert logme == sorted(logme, reverse=True)
    assert all(c["scores"]["leep"] is None and "no source classifier" in c["unavailable"]["leep"]
               for c in report["candidates"])
    assert not any(c["cached"] for c in report["candidates"])
    assert (out / "rank.png").stat().st_size > 1000 and json.loads((out / "rank.json").read_text())["task"] == "breastmnist"

    # re-scoring reads the feature cache: same features, same values; a failing candidate is listed, exit 2
    bad_file = tmp_path / "broken.safetensors"
    bad_file.write_bytes(b"not a checkpoint")
    args[3] = f"random:test_resnet,random:resnet10t,no_such_model,{bad_file}"
    args[-3:-1] = ["--out", str(tmp_path / "again")]
    assert main(args) == 2
    captured = capsys.readouterr()
    again = json.loads(captured.out)
    assert all(c["cached"] for c in again["candidates"])
    assert [c["scores"]["logme"] for c in again["candidates"]] == logme
    assert {f["model"] for f in again["failures"]} == {"no_such_model", str(bad_file)}
    errors = [line for line in captured.err.splitlines() if line.startswith("medhub: error:")]
    assert len(errors) == 2 and "Traceback" not in captured.err
    assert "2 candidate(s) failed, 2 ranked" in captured.err


def test_rank_bad_inputs_exit_2_with_one_line(shared_data, tmp_path, capsys, monkeypatch):
    data = ["--data-dir", str(shared_data / "breastmnist")]
    assert main(["rank", "breastmnist", "--models", "", *data]) == 2
    assert "no candidates given" in capsys.readouterr().err
    assert main(["rank", "breastmnist", "--models", "random:test_resnet", "--score", "nope", *data]) == 2
    assert "unknown score" in capsys.readouterr().err
    assert main(["rank", "breastmnist", "--models", "random:test_resnet", "--n-images", "0", *data]) == 2
    assert "--n-images" in capsys.readouterr().err
    # a task whose training sample holds one class only: real NIH chest X-rays, normal ones only
    monkeypatch.setenv("MEDHUB_REGISTRY", str(ROOT / "examples" / "nih1000_task.yaml"))
    from medhub.registry import clear_cache

    clear_cache()
    source = shared_data / "nih_cxr14_1000_64px" / "NIH1000"
    folder = tmp_path / "nih" / "NIH1000"
    for split in ("train", "valid", "test"):
        shutil.copytree(source / split / "0_normal", folder / split / "0_normal")
    assert main(["rank", "nih1000", "--models", "random:test_resnet", "--data-dir", str(tmp_path / "nih"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "one class only" in err and len(err.strip().splitlines()) == 1


def test_against_a_benchmark_db_gives_kendall_tau(shared_data, tmp_path, capsys, one_torch_thread):
    from scipy.stats import kendalltau, weightedtau

    import medhub
    from medhub.grid.cells import expand_grid
    from medhub.grid.store import ResultStore

    models = ["random:test_resnet", "random:resnet10t", "random:test_efficientnet"]
    report = medhub.rank("breastmnist", models, data_dir=shared_data / "breastmnist", n_images=100, scores="logme,hscore")
    order = [c["model"] for c in report["candidates"]]
    # fine-tuned results stored the way `medhub benchmark` stores them: 2 seeds each, the best-ranked lowest
    url = f"sqlite:///{tmp_path / 'grid.db'}"
    store = ResultStore(url)
    metric = {model: 0.6 + 0.1 * i for i, model in enumerate(order)}
    for cell in expand_grid(models, ["breastmnist"], [1.0], runs=2):
        store.add_cells([cell])
        store.claim(cell.key)
        store.mark_done(cell.key, {"metric": "auc", "runs": [{"metric": metric[cell.model] + 0.01 * cell.seed,
                                                              "seconds": 10.0}]})
    store.close()
    args = ["rank", "breastmnist", "--models", ",".join(models), "--data-dir", str(shared_data / "breastmnist"),
            "--n-images", "100", "--score", "logme,hscore", "--against", url, "--out", str(tmp_path / "r")]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "kendall tau" in text
    saved = json.loads((tmp_path / "r" / "rank.json").read_text())
    against = saved["against"]
    assert against["scores"]["logme"]["tau"] == pytest.approx(-1.0)  # fine-tuning reversed the LogME order
    assert against["finetune_seconds"] == pytest.approx(60.0)
    means = [against["finetuned"][m]["mean"] for m in order]
    assert means == pytest.approx([metric[m] + 0.005 for m in order])
    h = [c["scores"]["hscore"] for c in saved["candidates"]]
    assert against["scores"]["hscore"]["tau"] == pytest.approx(kendalltau(h, means).statistic)
    assert against["scores"]["hscore"]["weighted_tau"] == pytest.approx(weightedtau(h, means).statistic)
    assert (tmp_path / "r" / "against.png").is_file()


def test_site_task_page_shows_a_saved_ranking(tmp_path):
    from medhub.cards.site import build_site, load_rankings

    saved = tmp_path / "rank.json"
    saved.write_text(json.dumps({"task": "breastmnist", "scores": ["logme"], "primary": "logme",
                                 "sample": {"n_images": 50, "img_size": 28},
                                 "candidates": [{"model": "random:resnet18", "rank": 1, "scores": {"logme": -0.61},
                                                 "dim": 512}]}))
    build_site(tmp_path / "site", rankings=load_rankings([saved]))
    page = (tmp_path / "site" / "tasks" / "breastmnist.html").read_text()
    assert "Ranking from frozen features" in page and "-0.6100" in page and "random:resnet18" in page
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="not a 'medhub rank' report"):
        load_rankings([tmp_path / "bad.json"])


def test_multi_label_scores_average_per_label_and_skip_constant_labels():
    labels, separable, *_ = make_task("multi-label")
    with_constant = np.c_[labels, np.zeros(len(labels))]  # a finding absent from the whole sample
    for name in ("logme", "hscore", "nleep", "knn"):
        assert S.compute(name, separable, with_constant, "multi-label") == pytest.approx(
            S.compute(name, separable, labels, "multi-label"), rel=1e-9)
    per_label = [S.hscore(separable, labels[:, j].astype(int), "binary") for j in range(labels.shape[1])]
    assert S.hscore(separable, labels, "multi-label") == pytest.approx(np.mean(per_label), rel=1e-12)


def test_a_checkpoint_with_a_source_head_gets_leep_and_nce(shared_data, tmp_path, one_torch_thread):
    """A model folder with its own 5-class head (as medhub.export writes one): LEEP and NCE read that head."""
    import timm
    import torch

    from medhub.export import write_model_folder
    from medhub.rank import rank

    torch.manual_seed(0)
    network = timm.create_model("test_resnet", num_classes=5)
    folder = write_model_folder(tmp_path / "with_head", network.state_dict(), arch="test_resnet", num_classes=5,
                                pretrained_cfg=dict(network.pretrained_cfg))
    report = rank("breastmnist", [str(folder), "random:test_resnet"], data_dir=shared_data / "breastmnist",
                  n_images=80, scores="leep,nce,logme")
    by_model = {c["model"]: c for c in report["candidates"]}
    headed = by_model[str(folder)]
    assert headed["has_head"] and headed["dim"] == 96
    # LEEP is the mean log of a probability (< 0); NCE = -H(Y|Z) lies in [-log 2, 0] for two classes
    assert headed["scores"]["leep"] < 0 and -math.log(2) - 1e-9 <= headed["scores"]["nce"] <= 0
    assert by_model["random:test_resnet"]["scores"]["leep"] is None
    assert report["candidates"][0]["model"] == str(folder)  # n/a sorts last
