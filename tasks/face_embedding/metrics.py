"""What a face embedder is judged on: LFW-protocol verification and gallery/probe identification.

An `EvalSet` is a dataset of `(image, label, key)` items plus the verification pairs over its items
(indices, same/different, fold). The module embeds the dataset in order and hands the embeddings to
`EvalSet.evaluate`; the same numbers therefore come out of training, `test` and the demo.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from tasks.common.io import write_text_atomic
from tasks.face_embedding.lfw import Pair
from tasks.face_embedding.plots import roc_curve_png

FAR_TARGET = 1e-3


@dataclass
class EvalSet:
    """Images to embed, pairs over them (`pair_index` (M, 2) into the dataset) and identity labels.

    Identification enrols each identity's first image (dataset order) and queries with the rest;
    identities with a single image only act as distractors in the gallery.
    """

    dataset: Dataset
    labels: np.ndarray
    pair_index: np.ndarray
    is_same: np.ndarray
    folds: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels)
        self.pair_index = np.asarray(self.pair_index, np.int64).reshape(-1, 2)
        self.is_same = np.asarray(self.is_same, bool)
        self.folds = np.asarray(self.folds)
        if len(self.labels) != len(self.dataset):
            raise ValueError(f"{len(self.labels)} labels for {len(self.dataset)} images")
        if not len(self.pair_index) == len(self.is_same) == len(self.folds):
            raise ValueError("pair_index, is_same and folds must have one row per pair")

    def __len__(self) -> int:
        return len(self.dataset)

    @classmethod
    def from_pairs(
        cls,
        dataset: Dataset,
        labels: Sequence[int],
        keys: Sequence[str],
        pairs: Sequence[Pair],
        *,
        key_of=None,
    ) -> EvalSet:
        """Resolve LFW-style pairs to dataset indices; `key_of(name, number)` names an image as `keys` do."""
        key_of = key_of or image_key
        position = {key: i for i, key in enumerate(keys)}
        index = []
        for pair in pairs:
            for name, number in ((pair.name1, pair.number1), (pair.name2, pair.number2)):
                if key_of(name, number) not in position:
                    raise ValueError(
                        f"pair {pair.line()!r} (fold {pair.fold + 1}) names {key_of(name, number)!r}, "
                        "which is not in the evaluation images"
                    )
            index.append(
                (position[key_of(pair.name1, pair.number1)], position[key_of(pair.name2, pair.number2)])
            )
        return cls(
            dataset,
            np.asarray(labels),
            np.asarray(index),
            np.array([p.is_same for p in pairs]),
            np.array([p.fold for p in pairs]),
        )

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Cosine similarity of each pair (embeddings are unit length, so the dot product)."""
        embeddings = _unit(embeddings)
        return np.einsum("md,md->m", embeddings[self.pair_index[:, 0]], embeddings[self.pair_index[:, 1]])

    def evaluate(self, embeddings: np.ndarray) -> dict[str, float]:
        embeddings = np.asarray(embeddings, np.float32)
        if len(embeddings) != len(self):
            raise ValueError(f"{len(embeddings)} embeddings for an evaluation set of {len(self)} images")
        scores = self.scores(embeddings)
        accuracy = ten_fold_accuracy(scores, self.is_same, self.folds)
        val = val_at_far(scores, self.is_same, self.folds, far=FAR_TARGET)
        gallery, probes = first_image_gallery(self.labels)
        metrics = {
            "lfw_accuracy": accuracy["mean"],
            "lfw_accuracy_std": accuracy["std"],
            "lfw_threshold": _best_threshold(scores, self.is_same),  # tuned on every pair: `serve`'s default
            "val_at_far": val["val"],
            "far": val["far"],
        }
        if len(probes):
            topk = identification_topk(
                embeddings[gallery], self.labels[gallery], embeddings[probes], self.labels[probes], ks=(1, 5)
            )
            metrics.update(top1=topk[1], top5=topk[5])
        return metrics

    def write_report(
        self,
        embeddings: np.ndarray,
        out_dir: str | os.PathLike,
        *,
        prefix: str = "test",
        extra: Mapping[str, float] | None = None,
    ) -> dict[str, float]:
        """Metrics JSON and the ROC curve PNG side by side in `out_dir`; returns the metrics."""
        out_dir = Path(out_dir)
        metrics = {**self.evaluate(embeddings), **(extra or {})}
        roc_curve_png(
            out_dir / f"{prefix}_roc.png",
            *roc_points(self.scores(embeddings), self.is_same),
            title=f"{prefix}: accuracy {metrics['lfw_accuracy']:.3f}, "
            f"VAL@FAR={FAR_TARGET:g} {metrics['val_at_far']:.3f}",
        )
        write_text_atomic(out_dir / f"{prefix}_metrics.json", json.dumps(metrics, indent=2) + "\n")
        return metrics


def image_key(name: str, number: int, ext: str = "jpg") -> str:
    """The key of an image: its path under the dataset root, in LFW naming (`name/name_0001.jpg`)."""
    return f"{name}/{name}_{number:04d}.{ext}"


def _unit(embeddings: np.ndarray) -> np.ndarray:
    embeddings = np.asarray(embeddings, np.float32)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def _best_threshold(scores: np.ndarray, is_same: np.ndarray) -> float:
    """The threshold maximising accuracy of `score > t`; candidates are midpoints between distinct
    scores (plus one below and one above all), ties go to the lowest threshold."""
    distinct = np.unique(scores)
    midpoints = (distinct[:-1] + distinct[1:]) / 2
    candidates = np.concatenate([[distinct[0] - 1.0], midpoints, [distinct[-1] + 1.0]])
    same_sorted, diff_sorted = np.sort(scores[is_same]), np.sort(scores[~is_same])
    true_accepts = len(same_sorted) - np.searchsorted(same_sorted, candidates, side="right")
    true_rejects = np.searchsorted(diff_sorted, candidates, side="right")
    return float(candidates[np.argmax(true_accepts + true_rejects)])


def _folds(scores, is_same, folds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores, is_same, folds = np.asarray(scores, np.float64), np.asarray(is_same, bool), np.asarray(folds)
    if not (scores.shape == is_same.shape == folds.shape) or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape}, is_same {is_same.shape} and folds {folds.shape} must match")
    return scores, is_same, folds


def ten_fold_accuracy(scores, is_same, folds) -> dict[str, float | list[float]]:
    """LFW accuracy: per fold, the threshold is tuned on the other folds; mean and (population) std."""
    scores, is_same, folds = _folds(scores, is_same, folds)
    accuracies, thresholds = [], []
    for fold in np.unique(folds):
        test = folds == fold
        threshold = _best_threshold(scores[~test], is_same[~test])
        accuracies.append(float(np.mean((scores[test] > threshold) == is_same[test])))
        thresholds.append(threshold)
    return {"mean": float(np.mean(accuracies)), "std": float(np.std(accuracies)),
            "per_fold": accuracies, "thresholds": thresholds}


def val_at_far(scores, is_same, folds, *, far: float = 1e-3) -> dict[str, float]:
    """FaceNet's VAL@FAR: per fold, the lowest threshold whose FAR on the other folds is <= `far`,
    then VAL (true accepts / same pairs) and FAR measured on the held-out fold.

    FaceNet interpolates the threshold from the FAR curve; taking the (m+1)-th highest training
    negative score (m = floor(far x negatives)) is the exact, tie-safe version of that choice.
    With LFW's 2,700 training negatives, FAR=1e-3 allows two false accepts.
    """
    scores, is_same, folds = _folds(scores, is_same, folds)
    vals, fars = [], []
    for fold in np.unique(folds):
        test = folds == fold
        negatives = np.sort(scores[~test & ~is_same])[::-1]
        allowed = int(np.floor(far * len(negatives)))
        threshold = negatives[allowed] if allowed < len(negatives) else -np.inf
        accepted = scores[test] > threshold
        vals.append(float(np.mean(accepted[is_same[test]])))
        fars.append(float(np.mean(accepted[~is_same[test]])))
    return {"val": float(np.mean(vals)), "val_std": float(np.std(vals)), "far": float(np.mean(fars))}


def roc_points(scores, is_same) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, VAL) at every distinct threshold, from accepting nothing to accepting everything."""
    scores, is_same = np.asarray(scores, np.float64), np.asarray(is_same, bool)
    order = np.argsort(-scores, kind="stable")
    scores, is_same = scores[order], is_same[order]
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]
    true_accepts = np.cumsum(is_same)[last_of_tie]
    false_accepts = np.cumsum(~is_same)[last_of_tie]
    val = np.r_[0.0, true_accepts / max(1, is_same.sum())]
    far_ = np.r_[0.0, false_accepts / max(1, (~is_same).sum())]
    return far_, val


def first_image_gallery(labels) -> tuple[np.ndarray, np.ndarray]:
    """Indices (gallery, probes): each identity's first item enrols it, the rest are queries."""
    labels = np.asarray(labels)
    _, first = np.unique(labels, return_index=True)
    is_gallery = np.zeros(len(labels), bool)
    is_gallery[first] = True
    return np.flatnonzero(is_gallery), np.flatnonzero(~is_gallery)


def identification_topk(gallery_emb, gallery_labels, probe_emb, probe_labels, *, ks: Sequence[int] = (1, 5),
                        metric: str = "cosine", chunk: int = 2048) -> dict[int, float]:
    """Fraction of probes whose identity is among the labels of their k nearest gallery items."""
    gallery = np.asarray(gallery_emb, np.float32)
    probes = np.asarray(probe_emb, np.float32)
    gallery_labels, probe_labels = np.asarray(gallery_labels), np.asarray(probe_labels)
    if metric == "cosine":
        gallery = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
        probes = probes / np.maximum(np.linalg.norm(probes, axis=1, keepdims=True), 1e-12)
    elif metric != "euclidean":
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    k_max = min(max(ks), len(gallery))
    hits = {k: 0 for k in ks}
    for start in range(0, len(probes), chunk):
        block = probes[start:start + chunk]
        if metric == "cosine":
            score = block @ gallery.T
        else:  # -|p - g|^2 up to the per-probe constant |p|^2
            score = 2 * block @ gallery.T - (gallery * gallery).sum(axis=1)
        top = np.argsort(-score, axis=1, kind="stable")[:, :k_max]
        correct = gallery_labels[top] == probe_labels[start:start + chunk, None]
        for k in ks:
            hits[k] += int(correct[:, :k].any(axis=1).sum())
    return {k: hits[k] / len(probes) for k in ks}
