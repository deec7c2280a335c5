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
import sys
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


_PARAM_TYPES = {"nlist": int, "nprobe": int, "hnsw_m": int, "ef_construction": int, "ef_search": int}


def _read_meta(path: Path) -> dict:
    """meta.json, checked field by field: every problem is an `IndexFormatError` naming the file."""
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IndexFormatError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise IndexFormatError(f"{path}: must hold a JSON object, got {type(meta).__name__}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(f"{path}: format version {meta.get('format_version')!r}, "
                               f"this code reads {FORMAT_VERSION}")
    for key in ("kind", "dim", "count", "params"):
        if key not in meta:
            raise IndexFormatError(f"{path}: missing {key!r}")
    if meta["kind"] not in KINDS:
        raise IndexFormatError(f"{path}: kind {meta['kind']!r} is not one of {KINDS}")
    for key in ("dim", "count"):
        value = meta[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "dim" else 0):
            sign = "positive" if key == "dim" else "non-negative"
            raise IndexFormatError(f"{path}: {key} must be a {sign} "
                                   f"integer, got {value!r}")
    params = meta["params"]
    if not isinstance(params, dict) or set(params) - set(_PARAM_TYPES):
        raise IndexFormatError(f"{path}: params must be an object with keys from {sorted(_PARAM_TYPES)}, "
                               f"got {params!r}")
    for key, value in params.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise IndexFormatError(f"{path}: params.{key} must be a positive integer, got {value!r}")
    paths = meta.get("paths")
    if paths is not None and not (isinstance(paths, list) and all(isinstance(p, str) for p in paths)):
        raise IndexFormatError(f"{path}: paths must be a list of strings or null")
    meta["paths"] = paths
    return meta


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    return False  # e.g. a file system without RENAME_EXCHANGE: the caller falls back


def _restore_after_interrupted_swap(path: Path) -> None:
    """A save killed between its two renames left the previous index in `.<name>.old.*/index`."""
    if path.exists() or not path.parent.is_dir():
        return
    aside = sorted(path.parent.glob(f".{path.name}.old.*/index"), key=lambda p: p.stat().st_mtime)
    if aside:
        log.warning("%s: restoring the index a killed save left at %s", path, aside[-1])
        os.replace(aside[-1], path)


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
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k (matches per query) must be a positive integer, got {k!r}")
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
            if path.exists():  # swap only once the new directory is complete
                if _exchange(tmp, path):  # one atomic step: readers see the old or the new index
                    shutil.rmtree(tmp)
                else:  # two renames; a crash between them leaves the old index aside, which `load` restores
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
        _restore_after_interrupted_swap(path)
        parts = [path / "meta.json", path / "index.faiss", path / "labels.npy"]
        missing = [p.name for p in parts if not p.is_file()]
        if missing:
            raise IndexFormatError(f"{path}: not a saved EmbeddingIndex (missing {', '.join(missing)})")
        meta = _read_meta(parts[0])
        loaded = cls(meta["dim"], kind=meta["kind"])  # built with defaults: the file's index replaces it
        loaded.params.update(meta["params"])
        try:
            loaded.index = faiss.read_index(str(parts[1]))
        except Exception as err:  # faiss raises RuntimeError with a C++ trace for garbage or truncation
            first_line = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise IndexFormatError(f"{parts[1]}: not a readable FAISS index ({first_line})") from None
        try:
            labels = np.load(parts[2], allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise IndexFormatError(f"{parts[2]}: not a readable .npy array of labels ({err})") from None
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise IndexFormatError(f"{parts[2]}: labels must be a 1-D integer array, got {labels.dtype} "
                                   f"of shape {labels.shape}")
        if labels.size and labels.min() < 0:
            raise IndexFormatError(f"{parts[2]}: negative label {int(labels.min())}")
        loaded.labels = labels.astype(np.int64, copy=False)
        loaded.paths = meta["paths"]
        counts = {"meta.json": meta["count"], "index.faiss": loaded.index.ntotal,
                  "labels.npy": len(loaded.labels)}
        if loaded.paths is not None:
            counts["paths"] = len(loaded.paths)
        if len(set(counts.values())) != 1 or loaded.index.d != loaded.dim:
            raise IndexFormatError(f"{path}: parts disagree: counts {counts}, "
                                   f"dim {loaded.index.d} in index.faiss vs {loaded.dim} in meta.json")
        expected = {"flat": faiss.IndexFlat, "ivf": faiss.IndexIVF, "hnsw": faiss.IndexHNSW}[loaded.kind]
        if not isinstance(loaded.index, expected):
            raise IndexFormatError(f"{parts[1]}: holds a {type(loaded.index).__name__}, but meta.json says "
                                   f"kind {loaded.kind!r}")
        loaded.set_search_params(nprobe=loaded.params["nprobe"], ef_search=loaded.params["ef_search"])
        return loaded
