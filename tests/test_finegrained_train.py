"""The fine-grained task learns: a short CPU run on the synthetic set beats chance by far."""

from __future__ import annotations

import math

import pytorch_lightning as pl

from tasks.common.config import BackboneConfig, OptimConfig
from tasks.finegrained.data import FineGrainedDataModule
from tasks.finegrained.module import FineGrainedModule


def test_short_training_beats_chance_by_far(tmp_path):
    pl.seed_everything(0)
    data = FineGrainedDataModule(
        "synthetic",
        image_size=64,
        batch_size=32,
        num_workers=0,
        synthetic_classes=4,
        synthetic_train_per_class=200,
        synthetic_val_per_class=25,
    )
    model = FineGrainedModule(
        num_classes=data.num_classes,
        class_names=data.class_names,
        backbone=BackboneConfig(width_mult=0.25),
        label_smoothing=0.1,
        cpu_threads=1,
        # lr 0.2 reached 0.87 here alone, but once collapsed to chance inside the full suite: a
        # test must train well inside the stable range (lr 0.05: 0.88 alone).
        optim=OptimConfig(name="sgd", lr=0.05, weight_decay=4e-5, warmup_epochs=1),
    )
    trainer = pl.Trainer(
        max_epochs=18,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, data)
    top1 = trainer.callback_metrics["val/top1"].item()
    chance = 1 / 4
    assert top1 > 1.6 * chance, f"val top-1 {top1:.3f} after 18 epochs"
    assert trainer.callback_metrics["val/loss"] < 0.9 * math.log(4)  # ln(4) is the loss at chance
