"""Face-attribute scoring against scikit-learn, thresholds on a hand-made example, and the losses
against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, balanced_accuracy_score

from tasks.face_attributes.losses import attribute_bce, distillation_loss, pos_weight_from_rates
from tasks.face_attributes.metrics import (
    average_precision,
    choose_thresholds,
    emulation_cross_entropy,
    evaluate_attributes,
    rates_at,
)
from tasks.face_attributes.plots import save_ap_bar_chart


def test_average_precision_equals_scikit_learn_on_random_scores():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(2, 300))
        labels = rng.random(n) < rng.uniform(0.02, 0.9)
        if not labels.any():
            labels[0] = True
        scores = rng.random(n)
        if trial % 3 == 0:
            scores = np.round(scores, 1)  # many ties: one operating point per distinct score
        if trial % 7 == 0:
            scores = np.full(n, 0.3)  # a constant scorer: AP is the positive rate
        assert average_precision(scores, labels) == pytest.approx(
            average_precision_score(labels, scores), abs=1e-6
        )


def test_mean_ap_is_sklearns_macro_mean_and_leaves_out_attributes_without_positives():
    rng = np.random.default_rng(1)
    labels = rng.random((400, 6)) < [0.05, 0.2, 0.5, 0.1, 0.3, 0.4]
    scores = np.clip(labels * 0.3 + rng.random((400, 6)), 0, 1)
    report = evaluate_attributes(scores, labels, list("abcdef"))
    assert report.mean_ap == pytest.approx(average_precision_score(labels, scores, average="macro"), abs=1e-6)
    labels[:, 2] = False
    report = evaluate_attributes(scores, labels, list("abcdef"))
    assert report.excluded == ["c"] and report.ap[2] is None and report.positives[2] == 0
    kept = [0, 1, 3, 4, 5]
    expected = average_precision_score(labels[:, kept], scores[:, kept], average="macro")
    assert not math.isnan(report.mean_ap) and report.mean_ap == pytest.approx(expected, abs=1e-6)
    summary = report.summary()
    assert summary["attributes_scored"] == 5 and not math.isnan(summary["balanced_acc"])


def test_accuracy_and_balanced_accuracy_at_thresholds_match_scikit_learn():
    rng = np.random.default_rng(2)
    labels = rng.random((300, 3)) < [0.1, 0.4, 0.7]
    scores = np.clip(labels * 0.25 + rng.random((300, 3)) * 0.8, 0, 1)
    thresholds = np.array([0.3, 0.5, 0.6])
    accuracy, balanced = rates_at(scores, labels, thresholds)
    for a in range(3):
        decisions = scores[:, a] >= thresholds[a]
        assert accuracy[a] == pytest.approx(np.mean(decisions == labels[:, a]))
        assert balanced[a] == pytest.approx(balanced_accuracy_score(labels[:, a], decisions))
    _, undefined = rates_at(scores, np.zeros_like(labels), 0.5)
    assert np.isnan(undefined).all()


def test_thresholds_chosen_on_a_hand_made_example():
    # scores 0.9 .. 0.1 with labels 1 1 0 1 0 0. Predicting the top k (k = 0..6) gets 3 4 5 4 5 4 3 of 6
    # right: the best cuts are after 0.8 (threshold 0.75) and after 0.4 (threshold 0.35); 0.35 is nearer 0.5.
    scores = np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.1])
    labels = np.array([1, 1, 0, 1, 0, 0])
    assert choose_thresholds(scores, labels).tolist() == pytest.approx([0.35])
    # A rare attribute whose one positive scores third: accuracy is best predicting nothing (5/6; the
    # threshold halfway from the top score to 1), balanced accuracy takes the top three (TPR 1, TNR 3/5).
    scores = np.array([[0.6, 0.6], [0.5, 0.5], [0.2, 0.2], [0.1, 0.1], [0.05, 0.05], [0.02, 0.02]])
    labels = np.array([[0, 0], [0, 0], [1, 1], [0, 0], [0, 0], [0, 0]])
    assert choose_thresholds(scores, labels).tolist() == pytest.approx([0.8, 0.8])
    assert choose_thresholds(scores, labels, criterion="balanced_accuracy").tolist() == pytest.approx(
        [0.15, 0.15]
    )
    # Tied scores are one cut: the positive at 0.7 comes with the negative at 0.7 (balanced accuracy 3/4,
    # threshold halfway to 0.2). An attribute without positives keeps 0.5 for balanced accuracy.
    tied = np.array([[0.7, 0.7], [0.7, 0.3], [0.2, 0.3]])
    tied_labels = np.array([[1, 0], [0, 0], [0, 0]])
    chosen = choose_thresholds(tied, tied_labels, criterion="balanced_accuracy")
    assert chosen.tolist() == pytest.approx([0.45, 0.5])
    with pytest.raises(ValueError, match="criterion"):
        choose_thresholds(scores, labels, criterion="f1")


def test_chosen_thresholds_apply_to_another_split():
    val = np.array([[0.2], [0.25], [0.3], [0.9]])
    val_labels = np.array([[0], [0], [1], [1]])
    thresholds = choose_thresholds(val, val_labels)
    assert thresholds.tolist() == pytest.approx([0.275])
    report = evaluate_attributes(
        np.array([[0.28], [0.26], [0.1]]), np.array([[1], [0], [0]]), ["x"], thresholds
    )
    assert report.accuracy == [1.0] and report.accuracy_at_half == pytest.approx([2 / 3])


def test_bce_and_pos_weight_against_hand_values():
    logits = torch.tensor([[0.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0]])
    expected = (math.log(2) + math.log(1 + math.exp(2))) / 2
    assert attribute_bce(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    weight = pos_weight_from_rates(np.array([0.2, 0.5]))
    assert weight.tolist() == pytest.approx([4.0, 1.0])
    assert attribute_bce(logits, targets, weight).item() == pytest.approx(
        (4 * math.log(2) + math.log(1 + math.exp(2))) / 2, rel=1e-6
    )
    assert pos_weight_from_rates(np.array([0.0, 1.0]), max_weight=20).tolist() == pytest.approx([20.0, 0.05])


def test_distillation_loss_is_cross_entropy_to_the_teachers_probabilities():
    student = torch.tensor([[0.5, -1.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, -2.0, 0.0]])
    p = torch.sigmoid(teacher)
    q = torch.sigmoid(student)
    expected = -(p * q.log() + (1 - p) * (1 - q).log()).mean()
    loss = distillation_loss(student, teacher)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert student.grad[0].tolist() == pytest.approx(((q - p) / 3).detach()[0].tolist(), rel=1e-5)
    # with T: sigmoid of both logits over T, times T^2
    t = 3.0
    pt, qt = torch.sigmoid(teacher / t), torch.sigmoid(student.detach() / t)
    expected_t = -(pt * qt.log() + (1 - pt) * (1 - qt).log()).mean() * t**2
    assert distillation_loss(student.detach(), teacher, temperature=t).item() == pytest.approx(
        expected_t.item()
    )
    # its minimum is the teacher itself: the emulation cross-entropy is then the teacher's entropy
    entropy = -(p * p.log() + (1 - p) * (1 - p).log()).mean()
    assert emulation_cross_entropy(teacher, teacher) == pytest.approx(entropy.item(), rel=1e-6)
    assert emulation_cross_entropy(student.detach(), teacher) > emulation_cross_entropy(teacher, teacher)
    with pytest.raises(ValueError, match="same attributes"):
        distillation_loss(student, teacher[:, :2])
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(student, teacher, temperature=0)


def test_ap_bar_chart_is_written_with_excluded_attributes(tmp_path):
    path = save_ap_bar_chart(["a", "b", "c"], [0.4, None, 0.9], tmp_path / "ap.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_paper_prints_table_12_beside_our_counts(capsys):
    from backbone.paper_tables import main_profile

    assert main_profile(["--paper"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Table 12"))
    rows = {" ".join(line.split()[:2]): line.split()[2:] for line in lines[start + 3 : start + 10]}
    assert rows["1.00 MobileNet-224"] == ["88.7", "568", "567.8", "3.2", "3.25"]
    assert rows["0.25 MobileNet-128"] == ["86.4", "15", "13.3", "0.2", "0.22"]
    assert rows["Baseline (paper)"] == ["86.9", "1600", "7.5"]
