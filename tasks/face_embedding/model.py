"""The face embedder: a MobileNet, a linear projection, and L2 normalisation (FaceNet's output layer).

Embeddings live on the unit sphere, so squared L2 distance and cosine similarity carry the same
information (`|a - b|^2 = 2 - 2 a.b`); the triplet margin of 0.2 is on that squared distance.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from backbone import MobileNetV1
from tasks.common.config import BackboneConfig, as_dataclass
from tasks.common.io import read_checkpoint
from tasks.common.teacher import LoadedTeacherModel, TeacherConfig

EMBEDDER_PREFIX = "embedder."  # where FaceEmbeddingModule keeps the embedder in its state dict
DEFAULT_IMAGE_SIZE = 64  # what checkpoints that do not record their input size were trained at


class FaceEmbedder(nn.Module):
    """Images (N, 3, H, W) in [-1, 1] -> unit-length embeddings (N, `embedding_dim`)."""

    def __init__(self, *, backbone: MobileNetV1, embedding_dim: int = 128, flip_test: bool = True) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be positive, got {embedding_dim}")
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, embedding_dim)
        # Batch-normalising the projection before the L2 norm keeps every dimension in use from the
        # first step; without it triplet training from scratch sits near the collapsed solution.
        backbone_bn = next(m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))
        self.norm = nn.BatchNorm1d(embedding_dim, momentum=backbone_bn.momentum)
        self.embedding_dim = embedding_dim
        self.flip_test = flip_test

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Training embeds each image as given; evaluation embeds it and its mirror image and
        averages the two, the flip test of face recognition (on the synthetic test identities it
        lifted top-1 identification by 4 to 7 points at no training cost)."""
        if self.training or not self.flip_test:
            return F.normalize(self._project(images), dim=1)
        # Two passes, not one over the doubled batch: on CPU that measured 2.3x slower (64 faces at
        # 80 px: 39 against 88 ms), the larger activations falling out of cache.
        return F.normalize(self._project(images) + self._project(images.flip(-1)), dim=1)

    def _project(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_head(self.backbone.forward_features(images), pre_logits=True)
        return self.norm(self.head(features))


def build_embedder(
    *, backbone: BackboneConfig | dict | None = None, embedding_dim: int = 128
) -> FaceEmbedder:
    return FaceEmbedder(
        backbone=as_dataclass(BackboneConfig, backbone).build(num_classes=0), embedding_dim=embedding_dim
    )


@dataclass
class LoadedEmbedder:
    """An embedder restored from disk, in eval mode, with the input size it was trained at."""

    model: FaceEmbedder
    image_size: int


def load_embedder(
    path: str | os.PathLike,
    *,
    backbone: BackboneConfig | dict | None = None,
    embedding_dim: int | None = None,
    image_size: int | None = None,
) -> LoadedEmbedder:
    """Restore an embedder from a face-embedding Lightning checkpoint or a bare `FaceEmbedder` state dict.

    A Lightning checkpoint carries its own backbone config, embedding size and (from the data module)
    input size; a bare state dict needs `backbone` and `embedding_dim` from the caller. Explicit
    arguments override what the checkpoint says. The backbone's own `weights` file is not reloaded:
    the state dict already holds every weight.
    """
    saved = read_checkpoint(path)
    if "state_dict" in saved:  # Lightning
        hparams = saved.get("hyper_parameters", {})
        data_hparams = saved.get("datamodule_hyper_parameters", {})
        backbone = backbone if backbone is not None else hparams.get("backbone")
        embedding_dim = embedding_dim or hparams.get("embedding_dim")
        image_size = image_size or data_hparams.get("image_size")
        state = {
            k[len(EMBEDDER_PREFIX) :]: v
            for k, v in saved["state_dict"].items()
            if k.startswith(EMBEDDER_PREFIX)
        }
        if not state:
            raise ValueError(
                f"{path}: Lightning checkpoint holds no '{EMBEDDER_PREFIX}*' weights; "
                "is it a face-embedding checkpoint?"
            )
    else:
        state = saved
    if embedding_dim is None:
        raise ValueError(f"{path}: a bare state dict needs embedding_dim (and the backbone config)")
    config = dataclasses.replace(as_dataclass(BackboneConfig, backbone), weights=None)
    model = FaceEmbedder(backbone=config.build(num_classes=0), embedding_dim=int(embedding_dim))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # names every missing, unexpected and mis-shaped tensor
        raise ValueError(f"{path}: weights do not fit the configured embedder:\n{err}") from None
    # NHWC weights pick the fast depthwise kernels on CPU, as in training (TaskModule.setup).
    model = model.to(memory_format=torch.channels_last).eval()
    return LoadedEmbedder(model=model, image_size=int(image_size or DEFAULT_IMAGE_SIZE))


def load_teacher_embedder(config: TeacherConfig) -> LoadedTeacherModel:
    """`TeacherConfig` -> the embedder it names: how `build_teacher` loads a face-embedding teacher."""
    loaded = load_embedder(
        config.checkpoint,
        backbone=config.backbone,
        embedding_dim=config.output_dim,
        image_size=config.image_size,
    )
    return LoadedTeacherModel(loaded.model, loaded.image_size, loaded.model.embedding_dim)
