"""Running a trained embedder outside training: over datasets (index, export) and on single query images.

A query must look like a face crop before it is embedded, or the nearest "match" is noise with a
confident score. The rule (`check_face_image`): the file decodes, its shorter side is at least
`MIN_FACE_SIDE` pixels (the backbone's smallest input; anything smaller has no face detail to
embed) and its aspect ratio is at most `MAX_ASPECT` (face crops are near square: LFW 250x250,
VGGFace2 loose crops about 0.8; a 3:1 strip is a banner or a full-body photo, not a face crop).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from backbone.mobilenet import MIN_INPUT_SIZE
from tasks.common.io import read_image
from tasks.common.teacher import write_outputs_file
from tasks.common.transforms import to_model_input
from tasks.face_embedding.data import collate_readable, face_eval_transform
from tasks.face_embedding.model import FaceEmbedder

MIN_FACE_SIDE = MIN_INPUT_SIZE
MAX_ASPECT = 2.0


class NotAFaceImageError(ValueError):
    """A query image that decodes but cannot be a face crop; the message names the file and the rule."""


@dataclass
class Embedded:
    keys: list[str]
    labels: np.ndarray
    embeddings: np.ndarray


@torch.no_grad()
def embed_dataset(
    model: FaceEmbedder,
    dataset: Dataset,
    *,
    batch_size: int = 128,
    num_workers: int = 0,
    desc: str = "embedding",
) -> Embedded:
    """Embed every readable `(image, label, key)` item in dataset order (unreadable items yield None)."""
    model.eval()
    device = next(model.parameters()).device
    keys: list[str] = []
    labels: list[np.ndarray] = []
    chunks: list[np.ndarray] = []
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_readable)
    for batch in tqdm(loader, desc=desc, unit="batch"):
        if batch is None:
            continue
        images, batch_labels, batch_keys = batch
        chunks.append(model(images.to(device)).float().cpu().numpy())
        labels.append(np.asarray(batch_labels))
        keys += list(batch_keys)
    dim = model.embedding_dim
    return Embedded(
        keys=keys,
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
        embeddings=np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32),
    )


def check_face_image(image: np.ndarray, path: str | os.PathLike) -> None:
    height, width = image.shape[:2]
    if min(height, width) < MIN_FACE_SIDE:
        raise NotAFaceImageError(
            f"{path}: {width}x{height} px is too small for a face crop "
            f"(the shorter side must be at least {MIN_FACE_SIDE} px)"
        )
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise NotAFaceImageError(
            f"{path}: {width}x{height} px is not face-shaped (aspect ratio "
            f"{max(height, width) / min(height, width):.1f}:1, at most {MAX_ASPECT:g}:1 allowed)"
        )


def read_face_image(path: str | os.PathLike) -> np.ndarray:
    """Decode a query image and check it is face-sized; raises `ImageReadError` or `NotAFaceImageError`."""
    image = read_image(path)
    check_face_image(image, path)
    return image


@torch.no_grad()
def embed_images(model: FaceEmbedder, images: list[np.ndarray], *, image_size: int) -> np.ndarray:
    """HWC uint8 images of any size -> (N, D) embeddings, resized as evaluation resizes them."""
    model.eval()
    resize = face_eval_transform(image_size)
    batch = torch.stack([to_model_input(resize(image=image)["image"]) for image in images])
    return model(batch.to(next(model.parameters()).device)).float().cpu().numpy()


def export_embeddings(
    model: FaceEmbedder,
    dataset: Dataset,
    out: str | os.PathLike,
    *,
    batch_size: int = 128,
    num_workers: int = 0,
) -> int:
    """Write the teacher file for `dataset` (items `(image, label, key)`); returns the number of rows."""
    embedded = embed_dataset(
        model, dataset, batch_size=batch_size, num_workers=num_workers, desc="exporting teacher embeddings"
    )
    return write_outputs_file(out, embedded.keys, embedded.embeddings)
