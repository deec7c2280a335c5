"""A searchable gallery of face embeddings on FAISS, with labels and paths kept beside it.

Vectors are L2-normalised on the way in (add and search), so inner product is cosine similarity
and `flat` is exact. `ivf` (IndexIVFFlat) and `hnsw` (IndexHNSWFlat) trade recall for speed; see
benchmarks/search_speed.py for where that trade lands.

On disk an index is a directory: `index.faiss` (faiss.write_index), `labels.npy` (int64, read
with allow_pickle=False) and `meta.json` (kind, dim, parameters, count, optional paths). The
directory is written under a temporary name and renamed into place, so readers see the old or the
new index, never a mix; `load` checks that the three agree.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

KINDS = ("flat", "ivf", "hnsw")
FORMAT_VERSION = 1
MIN_POINTS_PER_CENTROID = 39  # below this FAISS warns that k-means is unreliable


class IndexFormatError(ValueError):
    """A saved index whose parts are missing or disagree; the message names the directory."""


def _normalised(vectors, dim: int) -> np.ndarray:
    vectors = np.array(vectors, dtype=np.float32, order="C", ndmin=2)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (N, {dim}), got {vectors.shape}")
    faiss.normalize_L2(vectors)
    return vectors


class EmbeddingIndex:
    """Cosine nearest-neighbour search over labelled embeddings.

    `ivf` is trained on the first batch passed to `add`; k-means needs about 39 points per list,
    so with fewer than `39 * nlist` vectors `nlist` shrinks to what the data supports (logged).
    Add the whole gallery (or a representative first batch) in the first call for good lists.
    """

    def __init__(self, dim: int, *, kind: str = "flat", nlist: int = 1024, nprobe: int = 16,
                 hnsw_m: int = 32, ef_construction: int = 80, ef_search: int = 64) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.dim, self.kind = dim, kind
        self.params = {"nlist": nlist, "nprobe": nprobe, "hnsw_m": hnsw_m,
                       "ef_construction": ef_construction, "ef_search": ef_search}
        self.labels = np.zeros(0, np.int64)
        self.paths: list[str] | None = None
        self.index = self._build(nlist)

    def _build(self, nlist: int) -> faiss.Index:
        if self.kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        if self.kind == "ivf":
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.nprobe = min(self.params["nprobe"], nlist)
            return index
        index = faiss.IndexHNSWFlat(self.dim, self.params["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.params["ef_construction"]
        index.hnsw.efSearch = self.params["ef_search"]
        return index

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Retune the recall/speed trade-off of a built index (no rebuild needed)."""
        if nprobe is not None and self.kind == "ivf":
            self.params["nprobe"] = nprobe
            self.index.nprobe = min(nprobe, self.index.nlist)
        if ef_search is not None and self.kind == "hnsw":
            self.params["ef_search"] = ef_search
            self.index.hnsw.efSearch = ef_search

    def add(self, vectors, labels: Sequence[int], paths: Sequence[str] | None = None) -> None:
        vectors = _normalised(vectors, self.dim)
        labels = np.asarray(labels, np.int64).reshape(-1)
        if len(labels) != len(vectors) or (paths is not None and len(paths) != len(vectors)):
            raise ValueError(f"{len(vectors)} vectors but {len(labels)} labels"
                             + ("" if paths is None else f" and {len(paths)} paths"))
        if (paths is None) != (self.paths is None) and len(self) > 0:
            raise ValueError("give paths for every batch or for none (this index "
                             f"{'has' if self.paths is not None else 'has no'} paths)")
        if not self.index.is_trained:
            self._train(vectors)
        self.index.add(vectors)
        self.labels = np.concatenate([self.labels, labels])
        if paths is not None:
            self.paths = (self.paths or []) + [str(p) for p in paths]

    def _train(self, vectors: np.ndarray) -> None:
        nlist = self.index.nlist
        supported = max(1, len(vectors) // MIN_POINTS_PER_CENTROID)
        if supported < nlist:
            log.warning("IVF: %d training vectors support %d lists, not %d; using %d",
                        len(vectors), supported, nlist, supported)
            self.params["nlist"] = supported
            self.index = self._build(supported)
        self.index.train(vectors)

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray, list[list[str | None]] | None]:
        """Top-k by cosine: (scores (Q, k), labels (Q, k), paths or None); a missing hit has label -1."""
        scores, ids = self.search_records(queries, k)
        labels = np.where(ids >= 0, self.labels[np.maximum(ids, 0)], -1)
        paths = None
        if self.paths is not None:
            paths = [[self.paths[i] if i >= 0 else None for i in row] for row in ids]
        return scores, labels, paths

    def search_records(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine: (scores (Q, k), record numbers (Q, k)) into `labels` and `paths`; -1 is no hit."""
        if len(self) == 0:
            raise ValueError("search on an empty index")
        return self.index.search(_normalised(queries, self.dim), k)

    def save(self, path: str | os.PathLike, *, extra_files: Mapping[str, str] | None = None) -> None:
        """Write the index; `extra_files` (name -> text) are written into the new directory before it is
        swapped in, so files that describe the index (embedder.json) change in the same rename."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"{path}: exists and is not an index directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            np.save(tmp / "labels.npy", self.labels, allow_pickle=False)
            meta = {"format_version": FORMAT_VERSION, "kind": self.kind, "dim": self.dim, "count": len(self),
                    "params": self.params, "paths": self.paths}
            (tmp / "meta.json").write_text(json.dumps(meta))
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
            if path.exists():  # swap: the old directory moves aside only once the new one is complete
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
                os.replace(path, old / "index")
                os.replace(tmp, path)
                shutil.rmtree(old)
            else:
                os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmbeddingIndex:
        path = Path(path)
        parts = [path / "meta.json", path / "index.faiss", path / "labels.npy"]
        missing = [p.name for p in parts if not p.is_file()]
        if missing:
            raise IndexFormatError(f"{path}: not a saved EmbeddingIndex (missing {', '.join(missing)})")
        meta = json.loads(parts[0].read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(f"{path}: format version {meta.get('format_version')}, "
                                   f"this code reads {FORMAT_VERSION}")
        loaded = cls(meta["dim"], kind=meta["kind"], **meta["params"])
        loaded.index = faiss.read_index(str(parts[1]))
        loaded.labels = np.load(parts[2], allow_pickle=False)
        loaded.paths = meta["paths"]
        counts = {"meta.json": meta["count"], "index.faiss": loaded.index.ntotal,
                  "labels.npy": len(loaded.labels)}
        if loaded.paths is not None:
            counts["paths"] = len(loaded.paths)
        if len(set(counts.values())) != 1 or loaded.index.d != loaded.dim:
            raise IndexFormatError(f"{path}: parts disagree: counts {counts}, "
                                   f"dim {loaded.index.d} in index.faiss vs {loaded.dim} in meta.json")
        loaded.set_search_params(nprobe=loaded.params["nprobe"], ef_search=loaded.params["ef_search"])
        return loaded
