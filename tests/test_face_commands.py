"""`index`, `search`, `export-embeddings` and `demo` on a tiny gallery, bad queries included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.common.teacher import OutputFileTeacher
from tasks.face_embedding.commands import (
    IndexInfo,
    build_index,
    main_export,
    main_index,
    main_search,
)
from tasks.face_embedding.demo import main_demo
from tasks.face_embedding.index import EmbeddingIndex
from tasks.face_embedding.model import build_embedder
from tasks.face_embedding.synthetic import SyntheticFaces, write_identity_folders

SIZE = 40


def save_checkpoint(path, *, seed: int) -> None:
    """A face-embedding checkpoint in Lightning's layout (what `fit` writes), from a random embedder."""
    torch.manual_seed(seed)
    model = build_embedder(backbone={"width_mult": 0.25}, embedding_dim=16).train()
    faces = SyntheticFaces(8, 2, size=SIZE, identity_offset=900)
    for module in model.modules():  # BN statistics of one batch of faces, so eval mode keeps faces apart
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    with torch.no_grad():
        model(torch.stack([faces[i][0] for i in range(len(faces))]))
    torch.save(
        {
            "state_dict": {f"embedder.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"backbone": {"width_mult": 0.25}, "embedding_dim": 16, "mode": "triplet",
                                 "margin": 0.2},
            "datamodule_hyper_parameters": {"image_size": SIZE},
            "backbone_prefix": "embedder.backbone.",
        },
        path,
    )


@pytest.fixture
def setup(tmp_path):
    save_checkpoint(tmp_path / "face.ckpt", seed=0)
    write_identity_folders(SyntheticFaces(4, 2, size=SIZE), tmp_path / "gallery")
    write_identity_folders(SyntheticFaces(2, 3, size=SIZE, identity_offset=50), tmp_path / "more")
    return tmp_path


def test_index_then_search_finds_the_query_itself(setup, capsys):
    tmp = setup
    assert (
        main_index(
            [
                "--gallery",
                str(tmp / "gallery"),
                "--weights",
                str(tmp / "face.ckpt"),
                "--out",
                str(tmp / "index"),
            ]
        )
        == 0
    )
    assert "added 8 images" in capsys.readouterr().out
    query = tmp / "gallery" / "synth_000002" / "synth_000002_0002.jpg"
    assert (
        main_search(
            [
                "--index",
                str(tmp / "index"),
                "--query",
                str(query),
                "-k",
                "3",
                "--save-grid",
                str(tmp / "grid.png"),
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    rank, score, identity, path = lines[0].split()
    assert (rank, identity, path) == ("1", "synth_000002", str(query.resolve()))
    assert float(score) == pytest.approx(1.0, abs=1e-4)
    assert len([line for line in lines if line.split()[0].isdigit()]) == 3
    assert Image.open(tmp / "grid.png").format == "PNG"


def test_indexing_again_appends_and_keeps_identity_names(setup):
    tmp = setup
    build_index(tmp / "gallery", tmp / "face.ckpt", tmp / "index")
    added, skipped = build_index(tmp / "more", tmp / "face.ckpt", tmp / "index")
    assert (added, skipped) == (6, 0)
    index, info = EmbeddingIndex.load(tmp / "index"), IndexInfo.load(tmp / "index")
    assert len(index) == 14
    assert info.identities == [f"synth_{i:06d}" for i in (0, 1, 2, 3, 50, 51)]
    np.testing.assert_array_equal(index.labels, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 5, 5, 5])


def test_appending_with_other_weights_is_refused(setup):
    tmp = setup
    build_index(tmp / "gallery", tmp / "face.ckpt", tmp / "index")
    save_checkpoint(tmp / "other.ckpt", seed=1)
    refusal = r"built with .*face.ckpt; embeddings of .*other.ckpt would not be comparable"
    with pytest.raises(ValueError, match=refusal):
        build_index(tmp / "more", tmp / "other.ckpt", tmp / "index")


def test_corrupt_gallery_image_is_skipped_and_counted(setup):
    tmp = setup
    (tmp / "gallery" / "synth_000001" / "synth_000001_0001.jpg").write_bytes(b"not a jpeg")
    assert build_index(tmp / "gallery", tmp / "face.ckpt", tmp / "index") == (7, 1)
    assert len(EmbeddingIndex.load(tmp / "index")) == 7


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"\xff\xd8garbage"), "not a readable image"),
        (lambda p: Image.new("RGB", (20, 20)).save(p, format="PNG"), "too small"),
        (lambda p: Image.new("RGB", (300, 60)).save(p, format="PNG"), "not face-shaped"),
    ],
)
def test_bad_query_gives_a_clear_error(setup, capsys, make, message):
    tmp = setup
    build_index(tmp / "gallery", tmp / "face.ckpt", tmp / "index")
    query = tmp / "query.jpg"
    make(query)
    assert main_search(["--index", str(tmp / "index"), "--query", str(query)]) == 2
    err = capsys.readouterr().err
    assert str(query) in err and message in err


def test_search_of_a_folder_that_is_no_index(tmp_path, capsys):
    assert main_search(["--index", str(tmp_path), "--query", str(tmp_path / "q.jpg")]) == 2
    assert "embedder.json" in capsys.readouterr().err


def test_export_embeddings_of_a_folder_matches_search_keys(setup):
    tmp = setup
    assert (
        main_export(
            [
                "--weights",
                str(tmp / "face.ckpt"),
                "--images",
                str(tmp / "gallery"),
                "--out",
                str(tmp / "teacher.npz"),
            ]
        )
        == 0
    )
    teacher = OutputFileTeacher(tmp / "teacher.npz")
    assert sorted(teacher.row) == sorted(
        f"synth_{i:06d}/synth_{i:06d}_{n:04d}.jpg" for i in range(4) for n in (1, 2)
    )


def test_demo_with_given_weights_writes_its_results(setup, capsys):
    tmp = setup
    out = tmp / "demo"
    assert (
        main_demo(
            [
                "--weights",
                str(tmp / "face.ckpt"),
                "--test-identities",
                "20",
                "--images-per-identity",
                "3",
                "--pairs-per-fold",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "identification top-1" in printed and "raw-pixel" in printed
    for name in ("demo_matches.png", "demo_roc.png", "demo_metrics.json", "index/embedder.json"):
        assert (out / name).is_file()
    assert len(list((out / "gallery").iterdir())) == 20
