"""Face embeddings (FaceNet triplets, Table 14 distillation), LFW-protocol evaluation and a FAISS gallery.

Light on purpose: `mobilenets face-embedding search` imports this package and should not pay for
Lightning; the training pieces live in `module` and `datamodule`.
"""

from __future__ import annotations

from tasks.face_embedding.index import EmbeddingIndex
from tasks.face_embedding.model import FaceEmbedder, LoadedEmbedder, build_embedder, load_embedder

__all__ = [
    "EmbeddingIndex",
    "FaceEmbedder",
    "LoadedEmbedder",
    "build_embedder",
    "load_embedder",
]
