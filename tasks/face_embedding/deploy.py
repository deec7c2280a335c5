"""The face embedder as exported: as evaluated (projection, BN, L2 norm, and the flip test when the model
uses it) -> `embeddings` (N, D)."""

from __future__ import annotations

import math

import numpy as np

from tasks.common.deploy import (
    Exportable,
    OnnxClassifier,
    TaskDeployment,
    image_loader,
    stack_images,
    trained_on_real_data,
)
from tasks.face_embedding.data import SyntheticFacesConfig, face_eval_transform
from tasks.face_embedding.model import DEFAULT_IMAGE_SIZE


class OnnxEmbedder(OnnxClassifier):
    """`embedder(images)`, and the dimension an index built with it must have."""

    @property
    def embedding_dim(self) -> int:
        return int(self.metadata["embedding_dim"])


def exportable(module, data: dict, path) -> Exportable:
    from tasks.face_embedding.synthetic import SyntheticFaces

    size = int(data.get("image_size", DEFAULT_IMAGE_SIZE))

    def synthetic(count: int) -> np.ndarray:
        if data.get("train_root"):
            raise trained_on_real_data(path, f"the folders under {data['train_root']}")
        config = SyntheticFacesConfig(**(data.get("synthetic") or {}))
        per_identity = 4  # training people, 4 photos each: as many faces as photo conditions
        faces = SyntheticFaces(math.ceil(count / per_identity), per_identity, size=size, seed=config.seed)
        return stack_images(faces.image(i) for i in range(count))

    metadata = {"embedding_dim": module.hparams.embedding_dim, "flip_test": module.embedder.flip_test}
    return Exportable(module.embedder, ["embeddings"], size, metadata,
                      image_loader(face_eval_transform(size)), synthetic)  # fmt: skip


DEPLOYMENT = TaskDeployment(
    task="face-embedding", module="tasks.face_embedding.module:FaceEmbeddingModule",
    prefix="embedder.backbone.", hparams=("embedding_dim", "mode", "margin"), network="embedder",
    exportable=exportable, runner=OnnxEmbedder,
)  # fmt: skip
