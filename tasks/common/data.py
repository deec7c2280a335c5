"""The DataModule base every task extends: how batches are loaded, written once.

A task's DataModule owns its datasets and decides which split serves which stage; how a dataset
becomes batches is the same everywhere and lives here:

* the last partial training batch is dropped (BatchNorm on a batch of one is undefined), unless the
  whole set is smaller than one batch, so a tiny set still trains;
* workers reseed their albumentations pipelines (`seed_worker_augmentation`), so runs repeat;
* workers stay alive between epochs, and batches are pinned when a GPU will receive them;
* the default worker count is what two cores can use: one loader worker beside the training thread.

Sizes the model needs (classes, identities, cells, attributes, input size) are plain attributes or
properties of the DataModule, named in the task's `TaskSpec.links`, so a recipe states each once.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tasks.common.config import plain
from tasks.common.transforms import seed_worker_augmentation

DEFAULT_NUM_WORKERS = min(2, os.cpu_count() or 1)


class TaskDataModule(pl.LightningDataModule):
    def __init__(self, *, batch_size: int, num_workers: int = DEFAULT_NUM_WORKERS, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be at least 0, got {num_workers}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed

    def save_hyperparameters(self, *args, **kwargs) -> None:
        """Save init arguments as plain types, so checkpoints load with `weights_only=True`."""
        import inspect

        kwargs.setdefault("frame", inspect.currentframe().f_back)
        super().save_hyperparameters(*args, **kwargs)
        for key, value in list(self._hparams.items()):
            self._hparams[key] = plain(value)

    def loader(
        self,
        dataset: Dataset,
        *,
        train: bool = False,
        batch_size: int | None = None,
        collate_fn: Callable | None = None,
        sampler: Sampler | None = None,
        batch_sampler: Sampler | None = None,
        persistent: bool = True,
    ) -> DataLoader:
        """`dataset` as batches: shuffled and without a ragged last batch when `train`."""
        options: dict = {
            "num_workers": self.num_workers,
            "persistent_workers": persistent and self.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
            "worker_init_fn": seed_worker_augmentation,
            "collate_fn": collate_fn,
        }
        if batch_sampler is not None:
            return DataLoader(dataset, batch_sampler=batch_sampler, **options)
        size = batch_size or self.batch_size
        return DataLoader(
            dataset,
            batch_size=size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and len(dataset) > size,
            **options,
        )
