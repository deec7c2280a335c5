"""End to end: DetectionModule + CocoDataModule on synth-shapes, trained, scored by COCOeval, predicted."""

from __future__ import annotations

import csv
import json

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from tasks.detection.data import CocoDataModule, detection_collate
from tasks.detection.module import DetectionModule

SIZE = 128
FRCNN_EPOCHS = 80


class OverfitData(CocoDataModule):
    """Trains on the validation images as they are evaluated (no augmentation): a memorisation check."""

    def train_dataloader(self):
        return self.loader(self._validation_set(), train=True, collate_fn=detection_collate)

    def predict_dataloader(self):
        return self.val_dataloader()


def _data(tmp_path) -> OverfitData:
    # 40 images: the validation split (20%) holds the 8 images we overfit and score
    return OverfitData(
        root=str(tmp_path / "synth"), synthetic_images=40, image_size=SIZE, batch_size=8, num_workers=0
    )


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        logger=CSVLogger(tmp_path / "runs", name="det"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def test_ssd_overfits_a_handful_of_images_and_writes_coco_artefacts(tmp_path):
    pl.seed_everything(0)
    model = DetectionModule(
        architecture="ssd",
        num_classes=5,
        image_size=SIZE,
        backbone={"width_mult": 0.25},
        optim={"name": "adamw", "lr": 0.01, "weight_decay": 0.0, "schedule": "constant"},
        ssd={"min_scale": 0.1, "max_scale": 0.8},
        draw_predictions=2,
        cpu_threads=1,
    )
    data = _data(tmp_path)
    trainer = _trainer(tmp_path, max_epochs=60, check_val_every_n_epoch=60)
    trainer.fit(model, data)
    metrics = trainer.callback_metrics
    assert {f"val/{name}" for name in ("AP", "AP50", "AP75", "APs", "AR100", "ARl")} <= set(metrics)
    assert metrics["val/AP50"] >= 0.5

    val_dir = model.run_dir / "val"
    detections = json.loads((val_dir / "detections.json").read_text())
    val_ids = {image["id"] for image in json.loads(data.val_annotations.read_text())["images"]}
    assert detections and {d["image_id"] for d in detections} <= val_ids
    assert {d["category_id"] for d in detections} <= {1, 3, 5, 7, 9}  # COCO ids, not contiguous labels
    assert json.loads((val_dir / "metrics.json").read_text())["AP50"] == pytest.approx(
        float(metrics["val/AP50"])
    )
    for name in ("per_category_ap.csv", "per_category_ap.md", "pr_curves.png", "pr_curves_per_category.png"):
        assert (val_dir / name).stat().st_size > 0

    trainer.predict(model, datamodule=data)
    predictions = json.loads((model.run_dir / "predictions.json").read_text())
    assert {d["image_id"] for d in predictions} == {d["image_id"] for d in detections}
    assert len(list((model.run_dir / "predictions").glob("*.png"))) == 2
    with open(model.run_dir / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(predictions)
    names = {cat["id"]: cat["name"] for cat in json.loads(data.val_annotations.read_text())["categories"]}
    assert [row["category"] for row in rows] == [names[d["category_id"]] for d in predictions]
    widths = [d["bbox"][2] for d in predictions]
    assert [float(row["width"]) for row in rows] == pytest.approx(widths, abs=0.01)


def test_faster_rcnn_trains_and_evaluates(tmp_path):
    pl.seed_everything(0)
    model = DetectionModule(
        architecture="frcnn",
        num_classes=5,
        image_size=SIZE,
        backbone={"width_mult": 0.25},
        optim={"name": "adamw", "lr": 0.01, "weight_decay": 0.0, "schedule": "cosine", "warmup_epochs": 5},
        frcnn={
            "anchor_sizes": (16, 32, 64, 128),
            "rpn_post_nms_top_n_train": 100,
            "rpn_post_nms_top_n_test": 50,
        },
        cpu_threads=1,
    )
    data = _data(tmp_path)
    untrained = _trainer(tmp_path / "untrained", max_epochs=1).validate(model, data)[0]["val/AP50"]
    threads = torch.get_num_threads()
    trainer = _trainer(tmp_path, max_epochs=FRCNN_EPOCHS, check_val_every_n_epoch=FRCNN_EPOCHS)
    trainer.fit(model, data)
    assert torch.get_num_threads() == threads  # cpu_threads holds for the run only
    trained = float(trainer.callback_metrics["val/AP50"])
    print(f"FRCNN AP50 untrained {untrained:.3f} trained {trained:.3f}")
    assert untrained < 0.05 and trained > untrained + 0.3


def test_class_count_mismatch_is_a_clear_error(tmp_path):
    model = DetectionModule(
        architecture="ssd", num_classes=80, image_size=SIZE, backbone={"width_mult": 0.25}
    )
    with pytest.raises(ValueError, match="num_classes is 80 but the data has 5"):
        _trainer(tmp_path, max_epochs=1).fit(model, _data(tmp_path))
