"""Teachers for embedding distillation (paper Table 14), and the export that makes a model a file teacher.

A teacher answers "what embedding should this image have?" for a batch of images and their keys.
It is either a model run on the very images the student sees (`kind: model`), or a table of
precomputed embeddings looked up by key (`kind: embeddings`), which is how one distils from a
teacher that cannot run here (FaceNet's outputs, dumped once). Keys are image paths relative to the
dataset root (`<identity>/<identity>_0001.jpg`); synthetic faces use the names that
`write_identity_folders` would give them, so a table exported from either source fits both.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tasks.common.config import BackboneConfig
from tasks.common.io import atomic_write
from tasks.face_embedding.model import FaceEmbedder, load_embedder


class TeacherLookupError(LookupError):
    """An image the student trains on has no row in the teacher's embedding file."""


@dataclass
class TeacherConfig:
    """`kind: model` loads `checkpoint` (a face-embedding .ckpt, or a bare embedder state dict described
    by `backbone` and `embedding_dim`); `kind: embeddings` reads `file`, an .npz with `paths` (str, N)
    and `embeddings` (float32, N x D)."""

    kind: Literal["model", "embeddings"] = "model"
    checkpoint: str | None = None
    file: str | None = None
    backbone: BackboneConfig | None = None
    embedding_dim: int | None = None
    image_size: int | None = None  # the teacher's input size; None: what its checkpoint says


class Teacher(Protocol):
    embedding_dim: int

    def __call__(self, images: torch.Tensor, keys: Sequence[str]) -> torch.Tensor: ...


class ModelTeacher:
    """A frozen embedder run on the student's (augmented) batch, resized to the teacher's input size.

    Not an `nn.Module` attribute of the student on purpose: it stays out of the student's checkpoint
    and optimiser. `to(device)` moves it along with the student.
    """

    def __init__(self, model: FaceEmbedder, *, image_size: int) -> None:
        self.model = model.eval().requires_grad_(False)
        self.image_size = image_size
        self.embedding_dim = model.embedding_dim

    def to(self, device: torch.device | str) -> ModelTeacher:
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, keys: Sequence[str]) -> torch.Tensor:
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(
                images,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        return self.model(images)


class EmbeddingFileTeacher:
    """Precomputed embeddings looked up by image key; the images themselves are ignored."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: teacher embeddings file not found")
        try:
            with np.load(self.path, allow_pickle=False) as arrays:
                paths, embeddings = arrays["paths"], arrays["embeddings"]
        except KeyError as err:
            raise ValueError(
                f"{self.path}: teacher file needs arrays 'paths' and 'embeddings' ({err})"
            ) from None
        except ValueError as err:  # object arrays (pickles) or a file that is not an .npz
            raise ValueError(f"{self.path}: not a plain .npz of 'paths' and 'embeddings' ({err})") from err
        if paths.ndim != 1 or embeddings.ndim != 2 or len(paths) != len(embeddings):
            raise ValueError(
                f"{self.path}: want paths (N,) and embeddings (N, D), got {paths.shape} "
                f"and {embeddings.shape}"
            )
        self.row = {str(p): i for i, p in enumerate(paths)}
        if len(self.row) != len(paths):
            raise ValueError(f"{self.path}: {len(paths) - len(self.row)} duplicated paths")
        self.embeddings = torch.from_numpy(embeddings.astype(np.float32))
        self.embedding_dim = self.embeddings.shape[1]

    def to(self, device: torch.device | str) -> EmbeddingFileTeacher:
        self.embeddings = self.embeddings.to(device)
        return self

    def __call__(self, images: torch.Tensor, keys: Sequence[str]) -> torch.Tensor:
        rows = []
        for key in keys:
            if key not in self.row:
                example = next(iter(self.row))
                raise TeacherLookupError(
                    f"{self.path}: no teacher embedding for image {key!r} "
                    f"({len(self.row)} paths in the file, e.g. {example!r})"
                )
            rows.append(self.row[key])
        return self.embeddings[torch.tensor(rows, device=self.embeddings.device)].to(images.device)


def build_teacher(config: TeacherConfig) -> Teacher:
    if config.kind == "embeddings":
        if not config.file:
            raise ValueError("teacher kind 'embeddings' needs teacher.file (an .npz of paths and embeddings)")
        return EmbeddingFileTeacher(config.file)
    if config.kind == "model":
        if not config.checkpoint:
            raise ValueError("teacher kind 'model' needs teacher.checkpoint")
        loaded = load_embedder(
            config.checkpoint,
            backbone=config.backbone,
            embedding_dim=config.embedding_dim,
            image_size=config.image_size,
        )
        return ModelTeacher(loaded.model, image_size=loaded.image_size)
    raise ValueError(f"teacher.kind must be 'model' or 'embeddings', got {config.kind!r}")


def export_embeddings(
    model: FaceEmbedder,
    dataset: Dataset,
    out: str | os.PathLike,
    *,
    batch_size: int = 128,
    num_workers: int = 0,
) -> int:
    """Write the teacher file for `dataset` (items `(image, label, key)`); returns the number of rows."""
    from tasks.face_embedding.inference import embed_dataset  # inference imports the data stack

    embedded = embed_dataset(
        model, dataset, batch_size=batch_size, num_workers=num_workers, desc="exporting teacher embeddings"
    )
    with atomic_write(out) as tmp:
        with open(tmp, "wb") as handle:  # np.savez would append ".npz" to a bare temp path
            np.savez(handle, paths=np.asarray(embedded.keys, dtype=str), embeddings=embedded.embeddings)
    return len(embedded.keys)
