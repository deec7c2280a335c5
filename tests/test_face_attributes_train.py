"""Face attributes learn end to end: a teacher trained on labels, its logits exported for a folder of
unlabeled faces (no label file anywhere in it), and a student distilled from that file whose test mean AP
clearly beats an untrained network and the label-rate baseline; then predict on a folder, and a student
distilled from the teacher checkpoint itself."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from tasks.common.config import BackboneConfig, OptimConfig
from tasks.face_attributes.commands import main_export_logits
from tasks.face_attributes.data import FaceAttributesDataModule
from tasks.face_attributes.losses import pos_weight_from_rates
from tasks.face_attributes.metrics import evaluate_attributes
from tasks.face_attributes.model import load_attribute_model
from tasks.face_attributes.module import FaceAttributesModule
from tasks.face_attributes.synthetic import SyntheticUnlabeledFaces, synthetic_labels, write_synthetic_folder

SIZE = 64
SYNTHETIC = {"train": 1200, "val": 300, "test": 400, "unlabeled": 1600, "seed": 0}


def trainer(root, epochs: int, **options) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
        **options,
    )


def student(teacher: dict, **options) -> FaceAttributesModule:
    return FaceAttributesModule(
        mode="distill",
        teacher=teacher,
        backbone=BackboneConfig(width_mult=0.25, bn_momentum=0.3),
        optim=OptimConfig(name="adamw", lr=0.005, warmup_epochs=0.5),
        cpu_threads=1,
        **options,
    )


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    """A small supervised teacher (the test's, not the recipe's: alpha 0.25 at 64 px, 1200 faces)."""
    root = tmp_path_factory.mktemp("teacher")
    pl.seed_everything(0)
    data = FaceAttributesDataModule(image_size=SIZE, batch_size=32, num_workers=0, synthetic=SYNTHETIC)
    model = FaceAttributesModule(
        num_attributes=data.num_attributes,
        attribute_names=data.attribute_names,
        backbone=BackboneConfig(width_mult=0.25, bn_momentum=0.3),
        optim=OptimConfig(name="adamw", lr=0.01, weight_decay=1e-4, warmup_epochs=0.5),
        cpu_threads=1,
    )
    fit = trainer(root, 10, check_val_every_n_epoch=10, enable_checkpointing=False)
    fit.fit(model, data)
    assert fit.callback_metrics["val/mean_ap"] > 0.33  # measured 0.384; label rates give about 0.19
    path = root / "teacher.ckpt"
    fit.save_checkpoint(path)
    return path


def test_student_distilled_from_an_unlabeled_folder_beats_an_untrained_net_and_label_rates(
    teacher_checkpoint, tmp_path, capsys
):
    folder = write_synthetic_folder(
        SyntheticUnlabeledFaces(SYNTHETIC["unlabeled"], size=SIZE), tmp_path / "faces", labels_csv=False
    )
    assert not any(p.suffix == ".csv" for p in folder.rglob("*"))  # nothing to read labels from
    logits = tmp_path / "teacher.npz"
    assert (
        main_export_logits(
            [
                "--weights",
                str(teacher_checkpoint),
                "--images",
                str(folder),
                "--out",
                str(logits),
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    assert (
        f"wrote {SYNTHETIC['unlabeled']} teacher logits (20 attributes, {SIZE} px)" in capsys.readouterr().out
    )

    pl.seed_everything(0)
    data = FaceAttributesDataModule(
        image_size=SIZE,
        batch_size=32,
        num_workers=0,
        synthetic=SYNTHETIC,
        train_on="unlabeled",
        unlabeled_root=str(folder),
        augment=[],
    )
    data.setup("fit")
    assert len(data.train_dataloader().dataset[0]) == 2  # (image, key): the batches hold no labels
    model = student(
        {"kind": "outputs", "file": str(logits)}, num_attributes=20, attribute_names=data.attribute_names
    )
    assert model.optim_config.weight_decay == 0.0  # distillation needs no regularisation (the paper)
    untrained = FaceAttributesModule(num_attributes=20, backbone=BackboneConfig(width_mult=0.25))
    test_trainer = trainer(tmp_path, 1)
    untrained_ap = test_trainer.test(untrained, data, verbose=False)[0]["test/mean_ap"]

    fit = trainer(tmp_path, 8, check_val_every_n_epoch=8, enable_checkpointing=False)
    fit.fit(model, data)
    metrics = fit.test(model, data, verbose=False)[0]
    rates = data.splits["test"].labels()
    label_rates = evaluate_attributes(
        np.tile(data.label_frequencies(), (len(rates), 1)), rates, data.attribute_names
    )
    assert label_rates.mean_ap == pytest.approx(
        rates.mean(axis=0).mean(), abs=1e-6
    )  # constant scores: AP = rate
    print(
        f"mean AP: student {metrics['test/mean_ap']:.3f}, untrained {untrained_ap:.3f}, "
        f"label rates {label_rates.mean_ap:.3f}"
    )
    assert metrics["test/mean_ap"] > untrained_ap + 0.1
    assert metrics["test/mean_ap"] > label_rates.mean_ap + 0.1
    assert metrics["test/mean_acc"] >= metrics["test/mean_acc_at_0.5"] - 0.01  # thresholds from val help
    written = json.loads((tmp_path / "test_metrics.json").read_text())
    assert written["test/mean_ap"] == pytest.approx(metrics["test/mean_ap"]) and written["images"] == 400
    with open(tmp_path / "test_attributes.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 20
    assert (tmp_path / "ap_per_attribute.png").stat().st_size > 0

    # predict on a folder: one row per image, each attribute's probability and its decision
    fit.save_checkpoint(tmp_path / "student.ckpt")
    loaded = load_attribute_model(tmp_path / "student.ckpt")
    assert loaded.image_size == SIZE and loaded.attributes == data.attribute_names
    assert torch.equal(loaded.thresholds, model.thresholds.cpu())  # chosen on val, saved with the weights
    predict_data = FaceAttributesDataModule(
        image_size=SIZE, num_workers=0, predict_root=str(folder / "unlabeled")
    )
    trainer(tmp_path, 1).predict(model, predict_data, return_predictions=False)
    with open(tmp_path / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == SYNTHETIC["unlabeled"] and rows[0]["image"] == "000000.png"
    assert list(rows[0])[1:5] == ["Male", "Male_decision", "Smiling", "Smiling_decision"]
    threshold = float(model.thresholds[0])
    assert all(int(row["Male_decision"]) == (float(row["Male"]) >= threshold - 1e-5) for row in rows[:50])


def test_student_distilled_from_the_teacher_checkpoint_runs_it_on_its_own_batches(
    teacher_checkpoint, tmp_path
):
    pl.seed_everything(0)
    data = FaceAttributesDataModule(
        image_size=48,
        batch_size=32,
        num_workers=0,
        train_on="unlabeled",
        synthetic={**SYNTHETIC, "unlabeled": 320, "val": 64},
    )
    model = student(
        {"kind": "model", "checkpoint": str(teacher_checkpoint)},
        num_attributes=20,
        attribute_names=data.attribute_names,
    )
    fit = trainer(tmp_path, 1, enable_checkpointing=False)
    fit.fit(model, data)
    assert model.teacher.image_size == SIZE  # the teacher sees its own input size, the student 48 px
    assert 0 < fit.callback_metrics["val/emulation_ce"] < 0.7  # reported whenever a teacher is configured

    wrong = student(
        {"kind": "model", "checkpoint": str(teacher_checkpoint)},
        num_attributes=20,
        attribute_names=[f"a{i}" for i in range(20)],
    )
    with pytest.raises(ValueError, match="same attributes in the same order"):
        trainer(tmp_path, 1).fit(wrong, data)


def test_pos_weight_comes_from_the_training_labels(tmp_path):
    tiny = {**SYNTHETIC, "train": 64, "val": 32}
    data = FaceAttributesDataModule(image_size=32, batch_size=32, num_workers=0, synthetic=tiny)
    model = FaceAttributesModule(num_attributes=20, pos_weight=True, backbone=BackboneConfig(width_mult=0.25))
    trainer(tmp_path, 1, enable_checkpointing=False, limit_val_batches=0).fit(model, data)
    rates = data.label_frequencies()
    assert model.loss_pos_weight.tolist() == pytest.approx(pos_weight_from_rates(rates).tolist())
    assert rates.tolist() == pytest.approx(synthetic_labels(0, "train", 64).mean(axis=0).tolist())


def test_supervised_training_on_unlabeled_data_and_bad_export_arguments_are_clear_errors(tmp_path):
    data = FaceAttributesDataModule(
        num_workers=0, train_on="unlabeled", synthetic={**SYNTHETIC, "unlabeled": 64}
    )
    model = FaceAttributesModule(num_attributes=20, backbone=BackboneConfig(width_mult=0.25))
    with pytest.raises(ValueError, match="data.train_on is unlabeled"):
        trainer(tmp_path, 1).fit(model, data)
    with pytest.raises(ValueError, match="needs a teacher"):
        FaceAttributesModule(num_attributes=20, mode="distill")
    with pytest.raises(SystemExit) as stop:
        main_export_logits(["--weights", str(tmp_path / "missing.ckpt"), "--images", ".", "--out", "x.npz"])
    assert stop.value.code == 2
    with pytest.raises(SystemExit):
        main_export_logits(["--weights", "w.ckpt", "--synthetic", "holdout:5", "--out", "x.npz"])
