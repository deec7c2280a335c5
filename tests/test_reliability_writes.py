"""Killed writes lose nothing (issue 16): a writer killed with SIGKILL at a random moment leaves the
previous file (or the one it finished) intact and readable, never a half-written one.

Each writer runs in a forked child that rewrites its file over and over, version after version, each
version recognisable from its contents; the parent kills it at a random time and checks that what
lies under the final name is one whole version. `KILLS` kills per writer, at seeded random times.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

KILLS = 10
FORK = multiprocessing.get_context("fork")


def _write_checkpoint(path: Path, version: int) -> None:
    """What `RunCheckpoint` does for every checkpoint: save under `.partial`, then rename."""
    from tasks.common.checkpoint import RunCheckpoint

    class Trainer:  # what RunCheckpoint._save_checkpoint uses
        is_global_zero = True
        global_step = version
        loggers: list = []

        class strategy:  # noqa: N801
            @staticmethod
            def barrier() -> None:
                pass

        @staticmethod
        def save_checkpoint(filepath, weights_only=False) -> None:
            state = {"state_dict": {"w": torch.full((1 << 21,), float(version))}, "version": version}
            torch.save(state, filepath)

    callback = RunCheckpoint(dirpath=str(path.parent))
    callback._save_checkpoint(Trainer(), str(path))


def _check_checkpoint(path: Path) -> int:
    state = torch.load(path, weights_only=True)
    weights = state["state_dict"]["w"]
    assert weights.numel() == 1 << 21 and bool((weights == state["version"]).all())
    return state["version"]


def _write_index(path: Path, version: int) -> None:
    from tasks.face_embedding.index import EmbeddingIndex

    index = EmbeddingIndex(64)
    index.add(_VECTORS, np.full(20_000, version))  # made once: the child's time goes to writing
    index.save(path, extra_files={"version.txt": str(version)})


_VECTORS = np.random.default_rng(0).normal(size=(20_000, 64)).astype(np.float32)


def _check_index(path: Path) -> int:
    from tasks.face_embedding.index import EmbeddingIndex

    index = EmbeddingIndex.load(path)  # checks that meta.json, index.faiss and labels.npy agree
    version = int((path / "version.txt").read_text())
    assert len(index) == 20_000 and bool((index.labels == version).all())
    return version


def _write_results(path: Path, version: int) -> None:
    from tasks.detection.metrics import write_results_json

    detections = ({"image_id": i, "category_id": 1, "bbox": [1.0, 2.0, 3.0, 4.0], "score": float(version)}
                  for i in range(60_000))  # fmt: skip  (a generator: consumed inside the atomic write)
    write_results_json(path, detections)


def _check_results(path: Path) -> int:
    detections = json.loads(path.read_text())
    assert len(detections) == 60_000
    versions = {det["score"] for det in detections}
    assert len(versions) == 1
    return int(versions.pop())


def _write_plot(path: Path, version: int) -> None:
    from tasks.common.io import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(8, 6))
    ax.scatter(*np.random.default_rng(version).normal(size=(2, 20_000)), s=1)
    ax.set_title(f"version {version}")
    save_figure(fig, path, dpi=120, metadata={"Title": str(version)})


def _check_plot(path: Path) -> int:
    with Image.open(path) as image:
        image.load()  # decodes every row: a truncated PNG fails here
        assert image.size == (960, 720)
        return int(image.info["Title"])


WRITERS = {
    "checkpoint": (_write_checkpoint, _check_checkpoint, "last.ckpt"),
    "index": (_write_index, _check_index, "gallery"),
    "results json": (_write_results, _check_results, "detections.json"),
    "plot": (_write_plot, _check_plot, "pr_curves.png"),
}


def _rewrite_forever(writer, path: Path, first: int) -> None:
    torch.set_num_threads(1)
    version = first
    while True:
        writer(path, version)
        version += 1


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_a_writer_killed_at_random_moments_leaves_a_whole_file(tmp_path, name):
    writer, check, file_name = WRITERS[name]
    path = tmp_path / file_name
    writer(path, 0)  # warm-up: imports and first-call costs would skew the timing below
    start = time.perf_counter()
    writer(path, 0)  # the previous file
    one_write = time.perf_counter() - start + 0.01
    assert check(path) == 0
    rng = random.Random(f"kill {name}")
    version, mid_write = 1, 0
    for _ in range(KILLS):
        child = FORK.Process(target=_rewrite_forever, args=(writer, path, version), daemon=True)
        child.start()
        time.sleep(rng.uniform(0.2, 2.5) * one_write)  # mostly mid-write, sometimes after a finish
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL
        seen = check(path)  # whole and readable: the previous version or one the child finished
        assert 0 <= seen < version + 1000
        version = seen + 1000  # the next child's versions are new
        leftovers = [p for p in tmp_path.iterdir() if p.name != file_name]  # a temporary: killed mid-write
        mid_write += bool(leftovers)
        for leftover in leftovers:
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    assert mid_write >= 1  # kills did land mid-write, so the checks above were real ones


def test_an_index_save_killed_between_its_fallback_renames_is_restored_on_load(tmp_path):
    """Where RENAME_EXCHANGE is missing, `save` renames twice; a kill between them leaves the previous
    index aside, and `load` puts it back instead of reporting the index missing."""
    from tasks.face_embedding.index import EmbeddingIndex

    _write_index(tmp_path / "gallery", 7)
    aside = tmp_path / ".gallery.old.abc123"
    aside.mkdir()
    os.replace(tmp_path / "gallery", aside / "index")  # the state right after the first rename
    assert _check_index(tmp_path / "gallery") == 7
    assert len(EmbeddingIndex.load(tmp_path / "gallery")) == 20_000
