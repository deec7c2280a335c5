"""Lightning's `ModelCheckpoint` with the two guarantees every run directory promises.

* `last.ckpt` holds the weights training ended with. Stock Lightning writes it only after a
  validation, so a run stopped by `max_steps` or `max_time` between validations leaves the last
  *validated* weights there and silently drops the final (annealed) steps. It is written once more
  when training ends even if this step was saved already: callbacks that change the model then
  (`PreciseBatchNorm`, weight averaging) run before checkpoint callbacks, which Lightning runs last.
* No checkpoint is ever half-written: each is saved under a temporary name and renamed, so a
  crash or a full disk mid-save leaves the previous file intact.
"""

from __future__ import annotations

import os

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn

PARTIAL_SUFFIX = ".partial"


class RunCheckpoint(ModelCheckpoint):
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fitting = trainer.state.fn == TrainerFn.FITTING
        saves_nothing = trainer.fast_dev_run or trainer.sanity_checking or not fitting
        if self.save_last and not saves_nothing:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        partial = filepath + PARTIAL_SUFFIX
        super()._save_checkpoint(trainer, partial)
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        trainer.strategy.barrier()
        self._last_checkpoint_saved = filepath
