"""The LightningModule base every task extends: it owns the optimiser, the schedule and the run directory.

A task module builds its network in `__init__` (calling `self.backbone_config.build()`) and implements
the steps; everything about how the network is optimised lives here, once. Task modules take this
class's options as `**shared` and pass them on; jsonargparse follows `super().__init__(**shared)`, so
the CLI still lists them as `model.*`.

The backbone contract: a task module's MobileNet is `self.backbone` (an attribute, or a property when
it sits inside a larger network), and `backbone_prefix` is where its weights sit in the module's state
dict (`backbone.` when it is the attribute itself, e.g. `detector.backbone.body.` for a detector).
Every checkpoint records that prefix under `backbone_prefix`, so `backbone.load_weights` takes the
MobileNet out of a checkpoint of any task for any other.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import ClassVar

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Timer
from torch import nn

from backbone import MobileNetV1
from tasks.common.config import BackboneConfig, OptimConfig, as_dataclass, plain
from tasks.common.optim import build_optimizer, build_scheduler


class CpuThreads(pl.Callback):
    """torch's intra-op thread count for the duration of one fit/validate/test/predict, then restored:
    it is a process-wide setting, and the process (a test session, a notebook) outlives the run."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._before: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if pl_module.device.type == "cpu":
            if self._before is None:
                self._before = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._before is not None:
            torch.set_num_threads(self._before)
            self._before = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, err: BaseException) -> None:
        self.teardown(trainer, pl_module, "exception")  # Lightning skips `teardown` for a run that raised


class TaskModule(pl.LightningModule):
    backbone: MobileNetV1
    backbone_prefix: ClassVar[str] = "backbone."

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

    def configure_callbacks(self) -> list[pl.Callback]:
        # Small CPU recipes run faster on one intra-op thread with the data workers on the other
        # core than on two threads that wait for each other at every small op (measured: 2.3x).
        return [CpuThreads(self.cpu_threads)] if self.cpu_threads else []

    def setup(self, stage: str) -> None:
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
        trainer = self.trainer
        estimated = trainer.estimated_stepping_batches
        if math.isfinite(estimated):
            total = max(int(estimated), 1)
            epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
            steps_per_epoch = total / epochs
        else:  # no max_epochs / max_steps: a run bounded by max_time alone
            trainer.fit_loop.setup_data()  # what Lightning itself does to count an epoch's batches
            batches = trainer.num_training_batches if math.isfinite(trainer.num_training_batches) else 1
            steps_per_epoch = max(int(batches) // trainer.accumulate_grad_batches, 1)
            total = steps_per_epoch
        scheduler = build_scheduler(
            optimizer,
            self.optim_config,
            total_steps=total,
            steps_per_epoch=steps_per_epoch,
            time_progress=self._time_progress() if self.optim_config.schedule_by == "time" else None,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _time_progress(self):
        """The share of `trainer.max_time` used so far (Lightning's Timer also restores it on resume)."""
        timer = next((cb for cb in self.trainer.callbacks if isinstance(cb, Timer)), None)
        if timer is None or timer.time_remaining() is None:
            raise ValueError("optim.schedule_by: time needs trainer.max_time (the budget the schedule spans)")

        def progress() -> float:
            elapsed = timer.time_elapsed()
            return elapsed / max(elapsed + (timer.time_remaining() or 0.0), 1e-9)

        return progress

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["backbone_prefix"] = self.backbone_prefix

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
