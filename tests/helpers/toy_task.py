"""A fourth task written from `tasks/README.md` alone: which colour channel of an image is brightest.

Used by `tests/test_task_recipe.py`; it has the recipe's pieces and nothing else: a DataModule on
`TaskDataModule` that knows its class count, a module on `TaskModule` that takes it through
`TaskSpec.links`, and `predict` writing `predictions.csv`.
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch.utils.data import Dataset

from tasks.common.classification import classification_metrics
from tasks.common.data import TaskDataModule
from tasks.common.io import write_csv
from tasks.common.module import TaskModule
from tasks.common.transforms import to_model_input

CHANNELS = ("red", "green", "blue")


class BrightestChannel(Dataset):
    def __init__(self, count: int, *, size: int, seed: int) -> None:
        self.count, self.size, self.seed = count, size, seed

    def __len__(self) -> int:
        return self.count

    def key(self, index: int) -> str:
        return f"toy/{index:04d}"

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, index])
        label = index % len(CHANNELS)
        image = rng.integers(0, 120, (self.size, self.size, 3)).astype(np.uint8)
        image[..., label] += 120
        return to_model_input(image), label


class ToyDataModule(TaskDataModule):
    def __init__(self, *, images: int = 48, image_size: int = 32, batch_size: int = 8, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, num_workers=0, seed=seed)
        self.save_hyperparameters()
        self.images, self.image_size = images, image_size

    @property
    def num_classes(self) -> int:
        return len(CHANNELS)

    def split(self, offset: int) -> BrightestChannel:
        return BrightestChannel(self.images, size=self.image_size, seed=self.seed + offset)

    def train_dataloader(self):
        return self.loader(self.split(0), train=True)

    def val_dataloader(self):
        return self.loader(self.split(1))

    def test_dataloader(self):
        return self.loader(self.split(2))

    def predict_dataloader(self):
        dataset = self.split(3)
        keyed = [(dataset[i][0], dataset.key(i)) for i in range(len(dataset))]
        return self.loader(keyed)


class ToyModule(TaskModule):
    def __init__(self, *, num_classes: int, **shared) -> None:
        super().__init__(**shared)
        self.save_hyperparameters()
        self.backbone = self.backbone_config.build(num_classes=num_classes)
        self.val_metrics = classification_metrics(num_classes).clone(prefix="val/")
        self.test_metrics = classification_metrics(num_classes).clone(prefix="test/")
        self._rows: list[list] = []

    def forward(self, images):
        return self.backbone(images)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.val_metrics.update(self(batch[0]), batch[1])

    def on_validation_epoch_end(self):
        self.log_dict(self.val_metrics.compute())
        self.val_metrics.reset()

    def test_step(self, batch, batch_idx):
        self.test_metrics.update(self(batch[0]), batch[1])

    def on_test_epoch_end(self):
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    def predict_step(self, batch, batch_idx):
        images, keys = batch
        scores, labels = self(images).softmax(dim=1).max(dim=1)
        for key, label, score in zip(keys, labels.tolist(), scores.tolist(), strict=True):
            self._rows.append([key, CHANNELS[label], f"{score:.4f}"])

    def on_predict_epoch_end(self):
        write_csv(self.run_dir / "predictions.csv", ["image", "class", "score"], self._rows)
        self._rows.clear()
