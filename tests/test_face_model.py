"""Face embedder, checkpoint loading, teachers, evaluation set and query checks (no training here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.common.teacher import (
    ModelTeacher,
    OutputFileTeacher,
    TeacherConfig,
    TeacherLookupError,
    build_teacher,
)
from tasks.face_embedding.data import KeyedSyntheticFaces, synthetic_eval_set
from tasks.face_embedding.inference import (
    NotAFaceImageError,
    check_face_image,
    embed_dataset,
    export_embeddings,
)
from tasks.face_embedding.lfw import Pair
from tasks.face_embedding.metrics import EvalSet, image_key
from tasks.face_embedding.model import build_embedder, load_embedder, load_teacher_embedder

TINY = {"width_mult": 0.25}


@pytest.fixture(scope="module")
def embedder():
    torch.manual_seed(0)
    model = build_embedder(backbone=TINY, embedding_dim=16)
    for module in model.modules():  # BN statistics of one batch, so eval mode keeps inputs apart
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    return model.eval()


def lightning_style_checkpoint(path, model, *, embedding_dim, image_size):
    torch.save(
        {
            "state_dict": {f"embedder.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"backbone": TINY, "embedding_dim": embedding_dim},
            "datamodule_hyper_parameters": {"image_size": image_size},
        },
        path,
    )


@pytest.mark.parametrize("dim", [16, 128])
def test_embeddings_are_unit_length_with_configured_dimension(dim):
    model = build_embedder(backbone=TINY, embedding_dim=dim).eval()
    out = model(torch.randn(3, 3, 48, 48))
    assert out.shape == (3, dim)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_evaluation_embeds_an_image_and_its_mirror_alike(embedder):
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(embedder(images), embedder(images.flip(-1)))  # the flip test
        embedder.flip_test = False
        try:
            single_view = embedder(images)
        finally:
            embedder.flip_test = True
    assert (single_view - embedder(images)).abs().max() > 1e-3  # so the flip test changed something


def test_lightning_checkpoint_round_trip_restores_outputs_and_input_size(tmp_path, embedder):
    lightning_style_checkpoint(tmp_path / "face.ckpt", embedder, embedding_dim=16, image_size=48)
    loaded = load_embedder(tmp_path / "face.ckpt")
    assert loaded.image_size == 48 and not loaded.model.training
    x = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(loaded.model(x), embedder(x))


def test_bare_state_dict_needs_and_uses_the_given_config(tmp_path, embedder):
    torch.save(embedder.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="embedding_dim"):
        load_embedder(tmp_path / "bare.pt", backbone=TINY)
    loaded = load_embedder(tmp_path / "bare.pt", backbone=TINY, embedding_dim=16, image_size=40)
    x = torch.randn(2, 3, 40, 40)
    torch.testing.assert_close(loaded.model(x), embedder(x))
    with pytest.raises(ValueError, match="do not fit"):
        load_embedder(tmp_path / "bare.pt", backbone={"width_mult": 0.5}, embedding_dim=16)


def test_missing_and_non_torch_checkpoints_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_embedder(tmp_path / "nope.ckpt")
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(ValueError, match="text.ckpt"):
        load_embedder(tmp_path / "text.ckpt")


def test_export_then_file_teacher_returns_the_models_embeddings_by_key(tmp_path, embedder):
    faces = KeyedSyntheticFaces(3, 2, size=32)
    rows = export_embeddings(embedder, faces, tmp_path / "teacher.npz", batch_size=4)
    assert rows == 6
    teacher = OutputFileTeacher(tmp_path / "teacher.npz")
    order = [4, 0, 5]
    images = torch.stack([faces[i][0] for i in order])
    with torch.no_grad():
        expected = embedder(images)
    got = teacher(images, [faces.key(i) for i in order])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert faces.key(5) == "synth_000002/synth_000002_0002.jpg"
    with pytest.raises(
        TeacherLookupError,
        match="synth_000009/synth_000009_0001.jpg.*teacher.npz|teacher.npz.*"
        "synth_000009/synth_000009_0001.jpg",
    ):
        teacher(images[:1], ["synth_000009/synth_000009_0001.jpg"])


def test_file_teacher_refuses_pickles_and_wrong_arrays(tmp_path):
    np.savez(tmp_path / "objects.npz", paths=np.array(["a", None], dtype=object), embeddings=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="objects.npz"):
        OutputFileTeacher(tmp_path / "objects.npz")
    np.savez(tmp_path / "keys.npz", names=np.array(["a"]), embeddings=np.zeros((1, 4)))
    with pytest.raises(ValueError, match="keys.npz.*'paths'"):
        OutputFileTeacher(tmp_path / "keys.npz")
    np.savez(tmp_path / "short.npz", paths=np.array(["a", "b"]), embeddings=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="short.npz"):
        OutputFileTeacher(tmp_path / "short.npz")


def test_model_teacher_resizes_to_its_input_size(tmp_path, embedder):
    lightning_style_checkpoint(tmp_path / "t.ckpt", embedder, embedding_dim=16, image_size=40)
    config = TeacherConfig(kind="model", checkpoint=str(tmp_path / "t.ckpt"))
    teacher = build_teacher(config, load_teacher_embedder)
    assert isinstance(teacher, ModelTeacher) and teacher.image_size == 40
    x = torch.randn(2, 3, 64, 64)
    resized = torch.nn.functional.interpolate(x, size=(40, 40), mode="bilinear", antialias=True)
    torch.testing.assert_close(teacher(x, ["a", "b"]), embedder(resized))
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_teacher_config_errors_say_what_is_missing():
    with pytest.raises(ValueError, match="teacher.file"):
        build_teacher(TeacherConfig(kind="outputs"), load_teacher_embedder)
    with pytest.raises(ValueError, match="teacher.checkpoint"):
        build_teacher(TeacherConfig(kind="model"), load_teacher_embedder)


def test_eval_set_scores_perfect_and_constant_embeddings():
    eval_set = synthetic_eval_set(20, 4, size=32, seed=0, identity_offset=100_000, pairs_per_fold=6)
    assert len(eval_set) == 80 and len(eval_set.pair_index) == 10 * 12
    same = eval_set.labels[eval_set.pair_index[:, 0]] == eval_set.labels[eval_set.pair_index[:, 1]]
    np.testing.assert_array_equal(same, eval_set.is_same)
    one_hot = np.eye(20, dtype=np.float32)[eval_set.labels]
    perfect = eval_set.evaluate(one_hot)
    assert perfect["lfw_accuracy"] == 1.0 and perfect["top1"] == 1.0 and perfect["val_at_far"] == 1.0
    constant = eval_set.evaluate(np.ones((80, 8), np.float32))
    assert constant["lfw_accuracy"] == 0.5 and constant["val_at_far"] == 0.0
    with pytest.raises(ValueError, match="79 embeddings"):
        eval_set.evaluate(one_hot[:79])


def test_eval_set_names_a_pair_image_that_is_missing():
    faces = KeyedSyntheticFaces(2, 2, size=32)
    keys = [faces.key(i) for i in range(4)]
    pairs = [Pair("synth_000000", 1, "synth_000000", 3, 0)]
    with pytest.raises(ValueError, match=image_key("synth_000000", 3)):
        EvalSet.from_pairs(faces, faces.labels, keys, pairs)


def test_embed_dataset_keeps_order_keys_and_labels(embedder):
    faces = KeyedSyntheticFaces(3, 2, size=32)
    embedded = embed_dataset(embedder, faces, batch_size=4)
    assert embedded.keys == [faces.key(i) for i in range(6)]
    np.testing.assert_array_equal(embedded.labels, [0, 0, 1, 1, 2, 2])
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(embedded.embeddings[3:4]), embedder(faces[3][0][None]))


@pytest.mark.parametrize(
    "shape, ok",
    [((250, 250), True), ((32, 60), True), ((31, 31), False), ((100, 201), False), ((120, 60), True)],
)
def test_face_image_rule(shape, ok):
    image = np.zeros((*shape, 3), np.uint8)
    if ok:
        check_face_image(image, "q.jpg")
    else:
        with pytest.raises(NotAFaceImageError, match="q.jpg"):
            check_face_image(image, "q.jpg")
