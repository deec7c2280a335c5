"""Short face-embedding training runs: triplet mode learns, distillation lowers the teacher error,
checkpoints restore the embedder with `weights_only=True`, and the YAML recipe runs through the CLI."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.optim.swa_utils import update_bn

from tasks.cli import TASKS
from tasks.common.checkpoint import RunCheckpoint
from tasks.common.lightning_cli import RUN_VERSION_ENV, run_task_cli
from tasks.face_embedding.data import FaceDataModule, KeyedSyntheticFaces
from tasks.face_embedding.inference import embed_dataset, export_embeddings
from tasks.face_embedding.metrics import first_image_gallery, identification_topk
from tasks.face_embedding.model import EMBEDDER_PREFIX, load_embedder
from tasks.face_embedding.module import FaceEmbeddingModule
from tasks.face_embedding.sampler import PKSampler
from tasks.face_embedding.synthetic import SyntheticFaces, write_identity_folders

SMALL_DATA = dict(
    synthetic=dict(
        train_identities=24, images_per_identity=6, eval_identities=20, eval_images_per_identity=4
    ),
    image_size=32,
    p=8,
    k=4,
    pairs_per_fold=6,
)
ADAM = dict(name="adamw", lr=3e-3, weight_decay=0.0)
FAST_BN = dict(width_mult=0.25, bn_momentum=0.5)


def trainer(tmp_path, steps: int) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        check_val_every_n_epoch=1000,
    )


def validate(trainer_: pl.Trainer, module, data) -> dict[str, float]:
    return {k: float(v) for k, v in trainer_.validate(module, data, verbose=False)[0].items()}


class RecordLosses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer_, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One triplet run shared by the tests below: (trainer, module, training losses).

    Ten people x four photos, no augmentation: every batch holds the same 40 images, so 40 steps
    must drive the loss to ~0. BN momentum 0.5 lets the running statistics (eval mode) keep up with
    weights that change this fast."""
    tmp = tmp_path_factory.mktemp("triplet")
    pl.seed_everything(0)
    data = FaceDataModule(
        **{
            **SMALL_DATA,
            "synthetic": {**SMALL_DATA["synthetic"], "train_identities": 10, "images_per_identity": 4},
            "p": 10,
        },
        batches_per_epoch=10,
        augment=[],
    )
    module = FaceEmbeddingModule(backbone=FAST_BN, embedding_dim=32, optim=ADAM)
    run = trainer(tmp, 40)
    record = RecordLosses()
    run.callbacks.append(record)
    run.fit(module, data)
    return run, module, record.losses


def test_triplet_training_learns_the_training_photos(trained):
    """The pipeline must learn: the loss falls to near zero and, in eval mode, each training person's
    first photo identifies their other photos (strangers: the next test)."""
    _, module, losses = trained
    assert sum(losses[-5:]) < 0.2 * sum(losses[:5])
    faces = KeyedSyntheticFaces(10, 4, size=32)
    # 40 steps memorise these 40 photos as drawn, never their mirror images: judge single views.
    module.embedder.flip_test = False
    try:
        embedded = embed_dataset(module.embedder, faces)
    finally:
        module.embedder.flip_test = True
    gallery, probes = first_image_gallery(embedded.labels)
    top = identification_topk(
        embedded.embeddings[gallery],
        embedded.labels[gallery],
        embedded.embeddings[probes],
        embedded.labels[probes],
        ks=(1,),
    )
    assert top[1] >= 0.9  # chance: 0.1


def test_triplet_training_identifies_people_it_never_saw(tmp_path):
    """The synthetic recipe in miniature (15 s): after 300 steps on 200 people, 30 strangers must be
    told apart clearly better than by the untrained network, which sits at chance (top-1 1/30, LFW
    0.5). Measured over seeds 0-2: top-1 0.16-0.20, LFW 0.70-0.81."""
    pl.seed_everything(0)
    data = FaceDataModule(
        synthetic=dict(train_identities=200, images_per_identity=10, eval_identities=30,
                       eval_images_per_identity=4),
        image_size=32, p=16, k=4, batches_per_epoch=50, similar_identities=4, pairs_per_fold=10,
        augment=[],
    )
    module = FaceEmbeddingModule(backbone=FAST_BN, embedding_dim=64, optim={**ADAM, "schedule": "cosine"})
    run = trainer(tmp_path, 300)
    untrained = validate(run, module, data)
    run.fit(module, data)
    trained = validate(run, module, data)
    assert trained["val/top1"] > max(2.5 / 30, untrained["val/top1"]), (untrained, trained)
    assert trained["val/lfw_accuracy"] > max(0.6, untrained["val/lfw_accuracy"]), (untrained, trained)


def test_checkpoints_hold_batchnorm_statistics_of_random_training_photos(tmp_path):
    """Validation after step 4 re-estimates the statistics; training goes on to step 6, so the end of
    training must re-estimate them again before `last.ckpt` is written. (No dropout: it would make the
    embedding BN's estimate random.)"""
    pl.seed_everything(5)
    data = FaceDataModule(**SMALL_DATA, batches_per_epoch=4, similar_identities=4, augment=[])
    module = FaceEmbeddingModule(
        backbone={**FAST_BN, "dropout": 0.0}, embedding_dim=32, optim=ADAM, precise_bn_batches=3
    )
    run = trainer(tmp_path, 6)
    run.check_val_every_n_epoch = 1
    run.callbacks.append(RunCheckpoint(dirpath=tmp_path, save_last=True))
    run.fit(module, data)
    expected = copy.deepcopy(module.embedder)
    update_bn(data.calibration_dataloader(3), expected)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    statistics = [name for name in expected.state_dict() if name.endswith(("running_mean", "running_var"))]
    assert len(statistics) == 2 * (1 + 2 * 13 + 1)  # stem, 13 separable blocks, the embedding's BN
    for name in statistics:
        torch.testing.assert_close(saved[EMBEDDER_PREFIX + name], expected.state_dict()[name])
    assert FaceEmbeddingModule(precise_bn_batches=0).configure_callbacks() == []


def test_checkpoint_restores_the_embedder_and_its_input_size(trained, tmp_path):
    run, module, _ = trained
    run.save_checkpoint(tmp_path / "face.ckpt")
    loaded = load_embedder(tmp_path / "face.ckpt")  # weights_only=True inside
    assert loaded.image_size == 32 and loaded.model.embedding_dim == 32
    x = torch.randn(4, 3, 32, 32)
    module.eval()
    torch.testing.assert_close(loaded.model(x), module(x))


def test_distillation_from_a_model_teacher_lowers_the_squared_difference(trained, tmp_path):
    run, _, _ = trained
    run.save_checkpoint(tmp_path / "teacher.ckpt")
    pl.seed_everything(1)
    data = FaceDataModule(**SMALL_DATA, batches_per_epoch=10)
    student = FaceEmbeddingModule(
        backbone=FAST_BN,
        embedding_dim=32,
        optim=ADAM,
        mode="distill",
        teacher=dict(kind="model", checkpoint=str(tmp_path / "teacher.ckpt")),
    )
    fit = trainer(tmp_path, 80)
    record = RecordLosses()
    fit.callbacks.append(record)
    before = validate(fit, student, data)["val/distill_mse"]
    fit.fit(student, data)
    assert sum(record.losses[-5:]) < 0.8 * sum(record.losses[:5])  # teacher targets move with augmentation
    assert validate(fit, student, data)["val/distill_mse"] < 0.9 * before  # on strangers, too
    assert not any(name.startswith("teacher") for name in student.state_dict())


def test_distillation_from_an_embedding_file(trained, tmp_path):
    _, teacher_module, _ = trained
    faces = KeyedSyntheticFaces(24, 6, size=32)  # SMALL_DATA's training set
    export_embeddings(teacher_module.embedder, faces, tmp_path / "teacher.npz")
    pl.seed_everything(2)
    data = FaceDataModule(**SMALL_DATA, batches_per_epoch=10, augment=[])
    student = FaceEmbeddingModule(
        backbone=FAST_BN,
        embedding_dim=32,
        optim=ADAM,
        mode="distill",
        teacher=dict(kind="outputs", file=str(tmp_path / "teacher.npz")),
    )
    fit = trainer(tmp_path, 80)
    record = RecordLosses()
    fit.callbacks.append(record)
    fit.fit(student, data)
    assert sum(record.losses[-5:]) < 0.7 * sum(record.losses[:5])
    assert "val/distill_mse" not in fit.callback_metrics  # the file holds training images only


def test_distill_mode_needs_a_teacher():
    with pytest.raises(ValueError, match="teacher"):
        FaceEmbeddingModule(mode="distill")


def test_synthetic_recipe_runs_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_task_cli(
        TASKS["face-embedding"],
        [
            "fit",
            "--trainer.max_steps=2",
            "--trainer.max_time=null",
            "--trainer.check_val_every_n_epoch=1",
            "--trainer.enable_progress_bar=false",
            "--data.synthetic.train_identities=16",
            "--data.synthetic.images_per_identity=4",
            "--data.synthetic.eval_identities=20",
            "--data.synthetic.eval_images_per_identity=3",
            "--data.pairs_per_fold=3",
            "--data.image_size=32",
            "--data.p=4",
            "--data.k=2",
            "--data.similar_identities=2",
            "--data.batches_per_epoch=2",
            "--model.backbone.width_mult=0.25",
        ],
    )
    assert cli.trainer.global_step == 2
    assert "val/lfw_accuracy" in cli.trainer.callback_metrics
    (last,) = (tmp_path / "runs" / "face-embedding").glob("*/checkpoints/last.ckpt")

    # predict on a folder of photos, one of them corrupt: predictions.csv and embeddings.npz
    faces = SyntheticFaces(3, 2, size=32, identity_offset=500)
    write_identity_folders(faces, tmp_path / "photos")
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not a jpeg")
    monkeypatch.delenv(RUN_VERSION_ENV)
    predict = run_task_cli(
        TASKS["face-embedding"],
        ["predict", "--ckpt_path", str(last), "--data.predict_root", str(tmp_path / "photos"),
         "--data.image_size=32", "--trainer.enable_progress_bar=false"],
    )
    run_dir = Path(predict.trainer.log_dir)
    with open(run_dir / "predictions.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:2] == ["image", "e0"] and len(rows[0]) == 1 + 128
    keys = [row[0] for row in rows[1:]]
    assert keys == sorted(f"{n}/{n}_{i:04d}.jpg" for n in faces.identities for i in (1, 2))  # broken skipped
    with np.load(run_dir / "embeddings.npz", allow_pickle=False) as saved:
        assert list(saved["paths"]) == keys
        from_csv = np.array([row[1:] for row in rows[1:]], dtype=float)
        np.testing.assert_allclose(saved["outputs"], from_csv, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(saved["outputs"], axis=1), 1.0, atol=1e-4)


def test_identity_head_trains_beside_triplets_and_stays_out_of_the_embedder(tmp_path):
    pl.seed_everything(3)
    data = FaceDataModule(**SMALL_DATA, batches_per_epoch=5, augment=[])
    module = FaceEmbeddingModule(
        backbone=FAST_BN, embedding_dim=32, optim=ADAM, softmax_weight=0.5, num_identities=24
    )
    run = trainer(tmp_path, 10)
    run.fit(module, data)
    assert "train/identity_loss" in run.callback_metrics
    run.save_checkpoint(tmp_path / "face.ckpt")
    loaded = load_embedder(tmp_path / "face.ckpt")  # the classifier's weights are not the embedder's
    x = torch.randn(2, 3, 32, 32)
    module.eval()
    torch.testing.assert_close(loaded.model(x), module(x))


def test_identity_head_must_match_the_training_identities(tmp_path):
    with pytest.raises(ValueError, match="num_identities"):
        FaceEmbeddingModule(softmax_weight=1.0)
    module = FaceEmbeddingModule(backbone=FAST_BN, embedding_dim=32, softmax_weight=1.0, num_identities=5)
    with pytest.raises(ValueError, match="training set has 24 identities"):
        trainer(tmp_path, 1).fit(module, FaceDataModule(**SMALL_DATA))


def test_look_alike_batches_get_the_models_identity_centroids_each_epoch(tmp_path, monkeypatch):
    handed = []
    original = PKSampler.set_identity_centroids

    def record(sampler, centroids):
        handed.append(centroids)
        original(sampler, centroids)

    monkeypatch.setattr(PKSampler, "set_identity_centroids", record)
    pl.seed_everything(4)
    data = FaceDataModule(**SMALL_DATA, batches_per_epoch=3, similar_identities=4, augment=[])
    module = FaceEmbeddingModule(backbone=FAST_BN, embedding_dim=32, optim=ADAM)
    run = trainer(tmp_path, 9)
    run.fit(module, data)
    assert len(handed) == 2  # at the start of epochs 1 and 2, from the epoch before
    for centroids in handed:
        assert centroids.shape == (24, 32)
        norms = np.linalg.norm(centroids, axis=1)
        assert np.allclose(norms[norms > 0], 1.0) and (norms > 0).sum() >= 8  # people seen last epoch
    assert run.train_dataloader.batch_sampler.look_alikes.shape == (24, 16)
