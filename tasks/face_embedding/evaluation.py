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
from tasks.face_embedding.lfw import (
    Pair,
    first_image_gallery,
    identification_topk,
    roc_curve_png,
    ten_fold_accuracy,
    val_at_far,
)

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
            self.scores(embeddings),
            self.is_same,
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
