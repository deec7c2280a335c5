"""The LightningModule base every task extends: it owns the optimiser, the schedule and the run directory.

A task module builds its network in `__init__` (calling `self.backbone_config.build()`), keeps the
MobileNet as `self.backbone` (so checkpoints name its weights `backbone.*` and `load_weights` can
reuse them in any task), and implements the steps. Everything about how the
network is optimised lives here, once. Task modules take this class's options as `**shared` and pass
them on; jsonargparse follows `super().__init__(**shared)`, so the CLI still lists them as `model.*`.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from tasks.common.config import BackboneConfig, OptimConfig, as_dataclass, plain
from tasks.common.optim import build_optimizer, build_scheduler


class TaskModule(pl.LightningModule):
    backbone: nn.Module

    def __init__(
        self,
        *,
        backbone: BackboneConfig | dict | None = None,
        optim: OptimConfig | dict | None = None,
        freeze_backbone_epochs: int = 0,
        cpu_threads: int | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.backbone_config = as_dataclass(BackboneConfig, backbone)
        self.optim_config = as_dataclass(OptimConfig, optim)
        self.freeze_backbone_epochs = freeze_backbone_epochs
        self.cpu_threads = cpu_threads
        self.channels_last = channels_last

    def setup(self, stage: str) -> None:
        if self.cpu_threads and self.device.type == "cpu":
            # Small CPU recipes run faster on one intra-op thread with the data workers on the other
            # core than on two threads that wait for each other at every small op (measured: 2.3x).
            torch.set_num_threads(self.cpu_threads)
        if self.channels_last:
            # NHWC weights make convolutions pick NHWC kernels, several times faster for depthwise
            # convs on CPU (benchmarks/backbone_speed.py); inputs need no conversion.
            self.to(memory_format=torch.channels_last)

    def save_hyperparameters(self, *args, **kwargs) -> None:
        """Save init arguments as plain types, so checkpoints load with `weights_only=True`."""
        kwargs.setdefault("frame", inspect.currentframe().f_back)
        super().save_hyperparameters(*args, **kwargs)
        for key, value in list(self._hparams.items()):
            self._hparams[key] = plain(value)

    # -- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = build_optimizer(self, self.optim_config)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        scheduler = build_scheduler(
            optimizer, self.optim_config, total_steps=total, steps_per_epoch=total / epochs
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def frozen_during_warmup(self) -> nn.Module:
        """What `freeze_backbone_epochs` freezes: the MobileNet's convolutional layers."""
        return self.backbone.layers

    def on_train_epoch_start(self) -> None:
        frozen = self.current_epoch < self.freeze_backbone_epochs
        part = self.frozen_during_warmup()
        part.requires_grad_(not frozen)
        if frozen:  # keep pretrained BN statistics while the head warms up
            part.eval()

    # -- artefacts ------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        """Where plots, result files and tables of this run go (next to its logs and checkpoints)."""
        trainer = self.trainer
        return Path(trainer.log_dir or trainer.default_root_dir)
