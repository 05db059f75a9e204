import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from lightlayers.metrics import choose_threshold, classification_metrics


def test_binary_metrics_against_hand_counts_and_sklearn():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    p1 = np.array([0.1, 0.6, 0.2, 0.9, 0.8, 0.4, 0.7, 0.55])
    probs = np.stack([1 - p1, p1], 1)
    m = classification_metrics(labels, probs, positive_class=1)
    # preds: 0 1 0 1 1 0 1 1 -> TP=4 FN=1 TN=2 FP=1
    assert m["confusion"] == [[2, 1], [1, 4]]
    assert m["sensitivity"] == pytest.approx(4 / 5)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(4 / 5)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["balanced_accuracy"] == pytest.approx((4 / 5 + 2 / 3) / 2)
    assert m["f1"] == pytest.approx(f1_score(labels, (p1 >= 0.5).astype(int)))
    assert m["auc"] == pytest.approx(roc_auc_score(labels, p1))
    assert not m["collapsed"]


def test_positive_class_zero_and_threshold():
    labels = np.array([1, 1, 0, 0])
    p0 = np.array([0.3, 0.2, 0.35, 0.9])  # class 0 is the positive one here
    probs = np.stack([p0, 1 - p0], 1)
    m = classification_metrics(labels, probs, positive_class=0, threshold=0.33)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 1.0 and m["threshold"] == 0.33
    assert m["auc"] == pytest.approx(roc_auc_score(labels == 0, p0))


def test_collapsed_run_is_flagged():
    labels = np.array([0, 1, 1, 0, 1])
    probs = np.tile([[0.2, 0.8]], (5, 1))
    m = classification_metrics(labels, probs, positive_class=1)
    assert m["collapsed"] and m["specificity"] == 0.0 and m["sensitivity"] == 1.0
    assert m["accuracy"] == pytest.approx(3 / 5)


def test_multiclass_macro_metrics():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    logits = rng.normal(size=(60, 3)) + np.eye(3)[labels] * 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = classification_metrics(labels, probs)
    preds = probs.argmax(1)
    cm = confusion_matrix(labels, preds)
    assert m["confusion"] == cm.tolist()
    assert m["auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))
    spec = [(cm.sum() - cm[i].sum() - cm[:, i].sum() + cm[i, i]) / (cm.sum() - cm[i].sum())
            for i in range(3)]
    assert m["specificity"] == pytest.approx(np.mean(spec))
    assert m["f1"] == pytest.approx(f1_score(labels, preds, average="macro"))


def test_auc_undefined_when_one_class_present():
    with pytest.warns(UserWarning, match="single label"):
        m = classification_metrics(np.array([1, 1]), np.array([[0.4, 0.6], [0.3, 0.7]]), 1)
    assert m["auc"] is None


def test_youden_threshold():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.7])
    thr = choose_threshold(labels, scores)
    assert thr == pytest.approx(0.325)  # the middle of the gap between the classes
    # Ties and an imperfect split: the best J (2/3) is cutting above 0.4, between 0.4 and 0.6.
    labels = np.array([0, 0, 1, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.6])
    assert choose_threshold(labels, scores) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        classification_metrics(labels, scores)
