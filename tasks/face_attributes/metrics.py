"""What face attributes are scored on: mean AP (Table 12), and accuracy with per-attribute thresholds.

* **Mean AP** is the macro mean over attributes of the non-interpolated average precision, equal to
  scikit-learn's `average_precision_score` (ties in the scores are one threshold, as there). An attribute
  with no positive in the split has no AP: it is reported in `excluded` and left out of the mean.
* **Accuracy** and **balanced accuracy** ((TPR + TNR) / 2, Huang et al. 2016) per attribute at given
  thresholds: 0.5 (the peers' convention) or thresholds chosen on the validation split
  (`choose_thresholds`) and applied to test. Balanced accuracy needs both classes present; an attribute
  without either is left out of its mean.
* **Emulation cross-entropy** (the paper's footnote 2): the per-attribute cross-entropy of the student's
  probabilities against the teacher's, averaged over attributes and images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from tasks.face_attributes.losses import distillation_loss


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Non-interpolated AP of one attribute (as `sklearn.metrics.average_precision_score`); None when it
    has no positives."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    positives = int(labels.sum())
    if positives == 0:
        return None
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], labels[order]
    # one operating point per distinct score: the last position of each run of tied scores
    ends = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    true_positives = np.cumsum(hits)[ends]
    precision = true_positives / (ends + 1)
    recall_steps = np.diff(np.r_[0, true_positives]) / positives
    return float(np.sum(recall_steps * precision))


def rates_at(probabilities: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | float
             ) -> tuple[np.ndarray, np.ndarray]:
    """Per-attribute (accuracy, balanced accuracy) of the decisions `probability >= threshold`;
    balanced accuracy is NaN where a class is absent."""
    labels = np.asarray(labels).astype(bool)
    decisions = np.asarray(probabilities) >= np.asarray(thresholds, dtype=np.float64)
    accuracy = (decisions == labels).mean(axis=0)
    positives, negatives = labels.sum(axis=0), (~labels).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = (decisions & labels).sum(axis=0) / positives
        tnr = (~decisions & ~labels).sum(axis=0) / negatives
    balanced = np.where((positives > 0) & (negatives > 0), (tpr + tnr) / 2, np.nan)
    return accuracy, balanced


def choose_thresholds(probabilities: np.ndarray, labels: np.ndarray, *,
                      criterion: str = "accuracy") -> np.ndarray:
    """Per attribute, the threshold on the probability that maximises `criterion` (accuracy or
    balanced_accuracy) on these images: midway between two consecutive distinct scores, or halfway
    to 0 or 1 beyond them. Ties between equally good thresholds go to the one nearest 0.5; an attribute
    whose criterion is undefined (balanced accuracy with one class absent) keeps 0.5."""
    if criterion not in ("accuracy", "balanced_accuracy"):
        raise ValueError(f"criterion must be accuracy or balanced_accuracy, got {criterion!r}")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if probabilities.ndim == 1:
        return choose_thresholds(probabilities[:, None], labels[:, None], criterion=criterion)[:1]
    chosen = np.full(probabilities.shape[1], 0.5)
    for a in range(probabilities.shape[1]):
        scores, hits = probabilities[:, a], labels[:, a]
        positives, negatives = int(hits.sum()), int((~hits).sum())
        if criterion == "balanced_accuracy" and (positives == 0 or negatives == 0):
            continue
        order = np.argsort(-scores, kind="mergesort")
        ranked, ranked_hits = scores[order], hits[order]
        ends = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # last of each run of ties
        tp = np.r_[0, np.cumsum(ranked_hits)[ends]]  # predicting the top 0, or through each run
        fp = np.r_[0, ends + 1] - tp
        tn = negatives - fp
        if criterion == "accuracy":
            score = (tp + tn) / len(scores)
        else:
            score = (tp / positives + tn / negatives) / 2
        distinct = ranked[ends]
        below = np.r_[distinct[1:], 0.0]  # the next lower distinct score, 0 past the lowest
        # threshold for "top 0": halfway from the highest score to 1; for each run: halfway to the next
        candidates = np.r_[(distinct[0] + 1.0) / 2, (distinct + below) / 2]
        best = np.flatnonzero(score >= score.max() - 1e-12)
        chosen[a] = candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]]
    return chosen


def emulation_cross_entropy(student_logits: torch.Tensor | np.ndarray,
                            teacher_logits: torch.Tensor | np.ndarray) -> float:
    """Per-attribute cross-entropy of the student against the teacher's probabilities, averaged (nats)."""
    student = torch.as_tensor(student_logits, dtype=torch.float64)
    teacher = torch.as_tensor(teacher_logits, dtype=torch.float64)
    return float(distillation_loss(student, teacher))


@dataclass
class AttributeReport:
    """Scores of one split; per-attribute lists follow `attributes`."""

    attributes: list[str]
    positives: list[int]
    ap: list[float | None]
    accuracy: list[float]
    balanced_accuracy: list[float]
    thresholds: list[float]
    accuracy_at_half: list[float]
    balanced_accuracy_at_half: list[float]
    excluded: list[str] = field(default_factory=list)

    @property
    def mean_ap(self) -> float:
        values = [v for v in self.ap if v is not None]
        return float(np.mean(values)) if values else float("nan")

    def summary(self) -> dict[str, float]:
        def mean(values) -> float:
            values = [v for v in values if v is not None and not np.isnan(v)]
            return float(np.mean(values)) if values else float("nan")

        return {
            "mean_ap": self.mean_ap,
            "mean_acc": mean(self.accuracy),
            "balanced_acc": mean(self.balanced_accuracy),
            "mean_acc_at_0.5": mean(self.accuracy_at_half),
            "balanced_acc_at_0.5": mean(self.balanced_accuracy_at_half),
            "attributes_scored": float(len(self.attributes) - len(self.excluded)),
        }

    def rows(self) -> list[list]:
        """One CSV row per attribute: name, positives, AP ('' when excluded), threshold, accuracies."""
        def fmt(value) -> str:
            return "" if value is None or np.isnan(value) else f"{value:.6f}"

        return [
            [name, pos, fmt(ap), f"{t:.6f}", fmt(acc), fmt(bal), fmt(acc5), fmt(bal5)]
            for name, pos, ap, t, acc, bal, acc5, bal5 in zip(
                self.attributes, self.positives, self.ap, self.thresholds, self.accuracy,
                self.balanced_accuracy, self.accuracy_at_half, self.balanced_accuracy_at_half, strict=True,
            )
        ]

    HEADER = ("attribute", "positives", "ap", "threshold", "accuracy", "balanced_accuracy",
              "accuracy_at_0.5", "balanced_accuracy_at_0.5")


def evaluate_attributes(probabilities: np.ndarray, labels: np.ndarray, attributes: Sequence[str],
                        thresholds: np.ndarray | None = None) -> AttributeReport:
    """Score (images, attributes) probabilities against 0/1 labels; `thresholds` default to 0.5."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if probabilities.shape != labels.shape or probabilities.shape[1] != len(attributes):
        raise ValueError(
            f"probabilities {probabilities.shape}, labels {labels.shape}, {len(attributes)} attribute names"
        )
    thresholds = np.full(len(attributes), 0.5) if thresholds is None else np.asarray(thresholds, np.float64)
    ap = [average_precision(probabilities[:, a], labels[:, a]) for a in range(len(attributes))]
    accuracy, balanced = rates_at(probabilities, labels, thresholds)
    accuracy_half, balanced_half = rates_at(probabilities, labels, 0.5)
    return AttributeReport(
        attributes=list(attributes),
        positives=[int(v) for v in labels.sum(axis=0)],
        ap=ap,
        accuracy=accuracy.tolist(),
        balanced_accuracy=balanced.tolist(),
        thresholds=thresholds.tolist(),
        accuracy_at_half=accuracy_half.tolist(),
        balanced_accuracy_at_half=balanced_half.tolist(),
        excluded=[name for name, value in zip(attributes, ap, strict=True) if value is None],
    )
