"""The face gallery behind `mobilenets face-embedding serve`: an index, its embedder, its names.

Concurrency: one lock guards the index and its identity names. A search embeds outside it and looks
up under it; an enrolment embeds outside it, then stores its photos, adds them and saves the index
with its embedder.json in one directory swap (`EmbeddingIndex.save(extra_files=)`) under it. So a
search sees the index before or after an enrolment, never halfway, and a restart serves what was
enrolled. Forward passes are serialised: on a small CPU, parallel ones only fight over the cores.

Thumbnails are looked up by record number in the index's own list of paths, so no string from a
request reaches the file system; enrolled photos are stored under names the server makes
(`ENROL_DIR/<label>/<sha256 of the bytes>.<ext>`), never the upload's.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.common.io import ImageReadError, atomic_write, read_image
from tasks.face_embedding.commands import EMBEDDER_FILE, IndexInfo, deploy_embedder
from tasks.face_embedding.index import EmbeddingIndex
from tasks.face_embedding.inference import embed_images
from tasks.face_embedding.model import load_embedder
from tasks.face_embedding.upload import Photo, RequestError

THUMBNAIL_SIDE = 128
FALLBACK_THRESHOLD = 0.5  # cosine; shown as uncalibrated when no test run gives one
METRICS_FILES = ("test_metrics.json", "demo_metrics.json")  # what `test` and the demo write


@dataclass
class Hit:
    rank: int
    score: float
    identity: str
    record: int


class FaceGallery:
    """An index with its embedder and identity names, searched and enrolled into by many threads."""

    def __init__(self, index_dir: str | os.PathLike, *, weights: str | os.PathLike | None = None,
                 enrol_dir: str | os.PathLike | None = None, runtime: str = "torch",
                 model_file: str | os.PathLike | None = None) -> None:
        self.index_dir = Path(index_dir)
        self._load()
        self.weights = Path(weights or self.info.weights)
        loaded = load_embedder(self.weights, image_size=self.info.image_size)
        if loaded.model.embedding_dim != self.info.embedding_dim:
            raise ValueError(f"{self.weights}: {loaded.model.embedding_dim}-D embeddings, but "
                             f"{self.index_dir} holds {self.info.embedding_dim}-D ones")
        self.model = loaded.model.eval()
        self.runtime = runtime
        if runtime != "torch":
            self._deploy(runtime, model_file)
        self.enrol_dir = Path(enrol_dir or self.index_dir.with_name(f"{self.index_dir.name}-enrolled"))
        self.lock = threading.Lock()
        self._forward_lock = threading.Lock()
        self.thumbnail = lru_cache(maxsize=1024)(self._thumbnail)  # records are only ever appended

    def _deploy(self, runtime: str, model_file: str | os.PathLike | None) -> None:
        """Embed on ONNX Runtime: `model_file`, or the checkpoint exported beside the index first."""
        deploy_embedder(self.model, runtime, weights=self.weights, index_dir=self.index_dir,
                        model_file=model_file, embedding_dim=self.info.embedding_dim,
                        image_size=self.info.image_size)  # fmt: skip

    def _load(self) -> None:
        self.info, self.index = IndexInfo.load(self.index_dir), EmbeddingIndex.load(self.index_dir)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def has_thumbnails(self) -> bool:
        return self.index.paths is not None

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        with self._forward_lock:
            return embed_images(self.model, images, image_size=self.info.image_size)

    def search(self, image: np.ndarray, k: int) -> list[Hit]:
        """The same matches as `mobilenets face-embedding search`, with record numbers for thumbnails."""
        vectors = self.embed([image])
        with self.lock:
            if len(self.index) == 0:
                raise RequestError(409, f"{self.index_dir} is empty: enrol someone first")
            scores, records = self.index.search_records(vectors, k)
            return [Hit(rank + 1, float(score), self.info.identities[self.index.labels[record]], int(record))
                    for rank, (score, record) in enumerate(zip(scores[0], records[0], strict=True))
                    if record >= 0]

    def enrol(self, name: str, photos: list[Photo]) -> list[int]:
        """Add `photos` of `name` (new or known) and save; returns their record numbers."""
        vectors = self.embed([photo.image for photo in photos])
        with self.lock:
            try:
                label = self.info.label(name)
                keep = self.index.paths is not None or len(self.index) == 0
                paths = [self._store(label, photo) for photo in photos] if keep else None
                first = len(self.index)
                self.index.add(vectors, [label] * len(photos), paths)
                self.index.save(self.index_dir, extra_files={EMBEDDER_FILE: self.info.to_json()})
            except Exception:
                self._load()  # what is on disk is still whole: serve that, not a half-added state
                raise
            return list(range(first, len(self.index)))

    def _store(self, label: int, photo: Photo) -> str:
        digest = hashlib.sha256(photo.data).hexdigest()[:20]
        path = self.enrol_dir / f"{label:06d}" / f"{digest}.{photo.extension}"
        if not path.is_file():
            with atomic_write(path) as tmp:
                Path(tmp).write_bytes(photo.data)
        return str(path.resolve())

    def _thumbnail(self, record: int) -> bytes:
        with self.lock:
            paths = self.index.paths
            if paths is None or not 0 <= record < len(paths):
                raise RequestError(404, f"no gallery photo for record {record}")
            path = paths[record]
        try:
            image = Image.fromarray(read_image(path))
        except ImageReadError:
            raise RequestError(404, f"the gallery photo of record {record} is no longer readable") from None
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()

    def identities(self) -> list[dict]:
        with self.lock:
            counts = np.bincount(self.index.labels, minlength=len(self.info.identities))
            return [{"name": name, "label": label, "images": int(counts[label])}
                    for label, name in enumerate(self.info.identities) if counts[label]]

    def describe(self) -> dict:
        model = "/".join(self.weights.parts[-3:]) + ("" if self.runtime == "torch" else f" ({self.runtime})")
        with self.lock:
            return {"index_size": len(self.index), "identities": int(len(np.unique(self.index.labels))),
                    "index_kind": self.index.kind, "model": model,
                    "embedding_dim": self.info.embedding_dim, "image_size": self.info.image_size}


@dataclass
class Threshold:
    value: float
    source: str  # where it came from, shown on the page: a metrics file, --threshold, or "uncalibrated"
    calibrated: bool


def resolve_threshold(explicit: float | None, metrics: str | os.PathLike | None, index_dir: Path,
                      weights: Path) -> Threshold:
    """--threshold, else the `lfw_threshold` of --metrics, else of a test run's metrics file found
    beside the index (the demo's layout) or in the checkpoint's run directory, else a fallback."""
    if explicit is not None:
        return Threshold(explicit, "--threshold", True)
    if metrics is not None:
        value = json.loads(Path(metrics).read_text()).get("lfw_threshold")
        if value is None:
            raise ValueError(f"{metrics}: no 'lfw_threshold' (written by `mobilenets face-embedding test`)")
        return Threshold(float(value), str(metrics), True)
    folders = (index_dir.parent, weights.parent, weights.parent.parent)
    for candidate in (folder / name for folder in folders for name in METRICS_FILES):
        if candidate.is_file() and "lfw_threshold" in (found := json.loads(candidate.read_text())):
            return Threshold(float(found["lfw_threshold"]), str(candidate), True)
    return Threshold(FALLBACK_THRESHOLD, "uncalibrated", False)
