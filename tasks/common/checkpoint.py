"""Lightning's `ModelCheckpoint` with the two guarantees every run directory promises.

* `last.ckpt` holds the weights training ended with. Stock Lightning writes it only after a
  validation, so a run stopped by `max_steps` or `max_time` between validations leaves the last
  *validated* weights there and silently drops the final (annealed) steps.
* No checkpoint is ever half-written: each is saved under a temporary name and renamed, so a
  crash or a full disk mid-save leaves the previous file intact.
"""

from __future__ import annotations

import os

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

PARTIAL_SUFFIX = ".partial"


class RunCheckpoint(ModelCheckpoint):
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        partial = filepath + PARTIAL_SUFFIX
        super()._save_checkpoint(trainer, partial)
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        trainer.strategy.barrier()
        self._last_checkpoint_saved = filepath
