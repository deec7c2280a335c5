"""The LFW verification protocol (pairs.txt, 10-fold accuracy, VAL@FAR) and identification top-k.

Scores are similarities: higher means "more likely the same person" (cosine of L2-normalised
embeddings, or a negated distance). Pairs are declared "same" when `score > threshold`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.common.io import atomic_write, write_text_atomic


class PairsFormatError(ValueError):
    """A malformed pairs file; the message names the file and line."""


@dataclass(frozen=True)
class Pair:
    """Two LFW images by person name and 1-based image number, and the fold the pair belongs to."""

    name1: str
    number1: int
    name2: str
    number2: int
    fold: int

    @property
    def is_same(self) -> bool:
        return self.name1 == self.name2

    def paths(self, root: str | os.PathLike, *, ext: str = "jpg") -> tuple[Path, Path]:
        root = Path(root)
        return (root / self.name1 / f"{self.name1}_{self.number1:04d}.{ext}",
                root / self.name2 / f"{self.name2}_{self.number2:04d}.{ext}")

    def line(self) -> str:
        if self.is_same:
            return f"{self.name1}\t{self.number1}\t{self.number2}"
        return f"{self.name1}\t{self.number1}\t{self.name2}\t{self.number2}"


def _number(token: str, path: Path, line_no: int) -> int:
    if not token.isdigit() or int(token) < 1:
        raise PairsFormatError(f"{path}:{line_no}: image number must be a positive integer, got {token!r}")
    return int(token)


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """Parse a pairs file: header `<folds> <n>`, then per fold n matched and n mismatched lines."""
    path = Path(path)
    lines = [(no, line.split()) for no, line in enumerate(path.read_text().splitlines(), start=1)]
    lines = [(no, fields) for no, fields in lines if fields]
    if not lines:
        raise PairsFormatError(f"{path}: empty pairs file")
    header_no, header = lines[0]
    if len(header) != 2 or not all(h.isdigit() and int(h) > 0 for h in header):
        raise PairsFormatError(f"{path}:{header_no}: header must be '<folds> <pairs per half>', got {header}")
    folds, per_half = int(header[0]), int(header[1])
    body = lines[1:]
    if len(body) != 2 * folds * per_half:
        raise PairsFormatError(f"{path}: header promises {folds} folds x 2 x {per_half} = "
                               f"{2 * folds * per_half} pairs, found {len(body)}")
    pairs = []
    for i, (no, fields) in enumerate(body):
        fold, matched = i // (2 * per_half), (i % (2 * per_half)) < per_half
        if matched:
            if len(fields) != 3:
                raise PairsFormatError(f"{path}:{no}: matched pair (fold {fold + 1}) must be 'name n1 n2', "
                                       f"got {len(fields)} fields")
            name1 = name2 = fields[0]
            number1, number2 = _number(fields[1], path, no), _number(fields[2], path, no)
        else:
            if len(fields) != 4:
                raise PairsFormatError(f"{path}:{no}: mismatched pair (fold {fold + 1}) must be "
                                       f"'name1 n1 name2 n2', got {len(fields)} fields")
            if fields[0] == fields[2]:
                raise PairsFormatError(f"{path}:{no}: mismatched pair names the same person {fields[0]!r}")
            name1, name2 = fields[0], fields[2]
            number1, number2 = _number(fields[1], path, no), _number(fields[3], path, no)
        pairs.append(Pair(name1, number1, name2, number2, fold))
    return pairs


def write_pairs(path: str | os.PathLike, pairs: Sequence[Pair]) -> None:
    """Write pairs in LFW order; each fold must hold as many matched as mismatched pairs."""
    folds = sorted({p.fold for p in pairs})
    if folds != list(range(len(folds))):
        raise ValueError(f"folds must be numbered 0..n-1, got {folds}")
    per_fold = [[p for p in pairs if p.fold == f] for f in folds]
    per_half = sum(p.is_same for p in per_fold[0])
    lines = [f"{len(folds)}\t{per_half}"]
    for fold, members in zip(folds, per_fold, strict=True):
        same = [p for p in members if p.is_same]
        different = [p for p in members if not p.is_same]
        if len(same) != per_half or len(different) != per_half:
            raise ValueError(f"fold {fold}: {len(same)} matched / {len(different)} mismatched pairs, "
                             f"every fold needs {per_half} of each")
        lines += [p.line() for p in same + different]
    write_text_atomic(path, "\n".join(lines) + "\n")


def make_pairs(image_counts: Mapping[str, int], *, folds: int = 10, per_fold: int = 300,
               seed: int = 0) -> list[Pair]:
    """Draw `per_fold` matched and `per_fold` mismatched pairs per fold, LFW style.

    People are split across folds (as in LFW, nobody appears in two folds), so a threshold tuned
    on nine folds is tested on strangers. Pairs are distinct within a fold.
    """
    rng = random.Random(seed)
    names = sorted(image_counts)
    rng.shuffle(names)
    pairs: list[Pair] = []
    for fold in range(folds):
        people = names[fold::folds]
        repeat = [n for n in people if image_counts[n] >= 2]
        if len(people) < 2 or not repeat:
            raise ValueError(f"fold {fold}: needs >= 2 people and one with >= 2 images "
                             f"({len(names)} people over {folds} folds)")
        seen: set[tuple] = set()
        for want_same in (True, False):
            made, attempts = 0, 0
            while made < per_fold:
                attempts += 1
                if attempts > 100 * per_fold:
                    kind = "matched" if want_same else "mismatched"
                    raise ValueError(f"fold {fold}: cannot draw {per_fold} distinct {kind} pairs "
                                     f"from {len(people)} people")
                if want_same:
                    name1 = name2 = rng.choice(repeat)
                    n1, n2 = sorted(rng.sample(range(1, image_counts[name1] + 1), 2))
                else:
                    name1, name2 = sorted(rng.sample(people, 2))
                    n1, n2 = rng.randint(1, image_counts[name1]), rng.randint(1, image_counts[name2])
                key = (name1, n1, name2, n2)
                if key not in seen:
                    seen.add(key)
                    pairs.append(Pair(name1, n1, name2, n2, fold))
                    made += 1
    return pairs


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


def roc_curve_png(path: str | os.PathLike, scores, is_same, *, title: str = "verification ROC") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    far_, val = roc_points(scores, is_same)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(np.maximum(far_, 1e-5), val)
    ax.set(xscale="log", xlim=(1e-4, 1), ylim=(0, 1.01), xlabel="FAR (false accepts / different pairs)",
           ylabel="VAL (true accepts / same pairs)", title=title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


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
