from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.face_embedding.index import EmbeddingIndex, IndexFormatError


def brute_force_cosine_topk(gallery: np.ndarray, queries: np.ndarray, k: int):
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ g.T
    order = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    return (centres[rng.integers(50, size=n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


def test_flat_search_is_exact_cosine_topk():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(500, 16)) * rng.uniform(0.1, 10, size=(500, 1))  # norms must not matter
    queries = rng.normal(size=(20, 16))
    labels = np.arange(500) * 7
    index = EmbeddingIndex(16, kind="flat")
    index.add(gallery, labels)

    scores, found, paths = index.search(queries, 5)

    expected_scores, expected_ids = brute_force_cosine_topk(gallery, queries, 5)
    assert paths is None
    np.testing.assert_array_equal(found, labels[expected_ids])
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


def test_missing_hits_are_marked_and_bad_shapes_rejected():
    index = EmbeddingIndex(4)
    index.add(np.eye(4)[:2], [3, 4], paths=["a.jpg", "b.jpg"])
    scores, labels, paths = index.search(np.eye(4)[:1], 3)
    assert labels.tolist() == [[3, 4, -1]] and paths == [["a.jpg", "b.jpg", None]]
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        index.search(np.zeros((1, 5)), 1)
    with pytest.raises(ValueError, match="2 vectors but 1 labels"):
        index.add(np.eye(4)[:2], [1])
    with pytest.raises(ValueError, match="paths for every batch"):
        index.add(np.eye(4)[:1], [1])


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip_and_append(tmp_path: Path, kind: str):
    gallery = clustered(2000, 32, seed=1)
    queries = clustered(10, 32, seed=2)
    index = EmbeddingIndex(32, kind=kind, nlist=16, nprobe=4, ef_search=32)
    index.add(gallery, np.arange(2000), paths=[f"img_{i}.jpg" for i in range(2000)])
    before = index.search(queries, 5)

    index.save(tmp_path / "gallery")
    index.save(tmp_path / "gallery")  # overwriting an existing index is allowed
    loaded = EmbeddingIndex.load(tmp_path / "gallery")
    after = loaded.search(queries, 5)

    assert (loaded.kind, loaded.dim, len(loaded)) == (kind, 32, 2000)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], atol=1e-6)
    assert after[2] == before[2]
    assert sorted(p.name for p in (tmp_path).iterdir()) == ["gallery"]  # no temporaries left behind

    loaded.add(queries, np.arange(10) + 10_000, paths=[f"new_{i}.jpg" for i in range(10)])
    _, labels, paths = loaded.search(queries, 1)
    assert labels[:, 0].tolist() == list(range(10_000, 10_010))
    assert paths[3] == ["new_3.jpg"]


def test_load_detects_mismatched_parts(tmp_path: Path):
    index = EmbeddingIndex(8)
    index.add(np.random.default_rng(0).normal(size=(5, 8)), np.arange(5))
    index.save(tmp_path / "idx")
    np.save(tmp_path / "idx" / "labels.npy", np.arange(4))
    with pytest.raises(IndexFormatError, match=r"idx: parts disagree.*'labels.npy': 4"):
        EmbeddingIndex.load(tmp_path / "idx")
    (tmp_path / "idx" / "index.faiss").unlink()
    with pytest.raises(IndexFormatError, match="missing index.faiss"):
        EmbeddingIndex.load(tmp_path / "idx")


def test_load_rejects_unknown_format_version(tmp_path: Path):
    index = EmbeddingIndex(8)
    index.add(np.ones((1, 8)), [0])
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    (tmp_path / "idx" / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(IndexFormatError, match="format version 99"):
        EmbeddingIndex.load(tmp_path / "idx")


def test_ivf_shrinks_nlist_to_what_data_supports():
    index = EmbeddingIndex(16, kind="ivf", nlist=100, nprobe=8)
    index.add(clustered(39 * 10 + 5, 16, seed=0), np.arange(395))
    assert index.index.nlist == 10 and index.params["nlist"] == 10


@pytest.mark.parametrize(("kind", "knobs"), [("ivf", {"nprobe": 8}), ("hnsw", {"ef_search": 64})])
def test_approximate_indexes_have_high_recall(kind: str, knobs: dict):
    gallery, queries = clustered(5000, 32, seed=3), clustered(100, 32, seed=4)
    exact = EmbeddingIndex(32)
    exact.add(gallery, np.arange(5000))
    approx = EmbeddingIndex(32, kind=kind, nlist=64, **knobs)
    approx.add(gallery, np.arange(5000))

    _, truth, _ = exact.search(queries, 10)
    _, found, _ = approx.search(queries, 10)
    recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)])
    assert recall >= 0.9
