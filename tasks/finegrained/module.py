"""Fine-grained classification (Stanford Dogs, any ImageFolder set, the synthetic set): §4.3 of the paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks.common.classification import (
    classification_metrics,
    confusion_matrix,
    save_confusion_png,
    write_topk_csv,
)
from tasks.common.module import TaskModule


class FineGrainedModule(TaskModule):
    """A MobileNet with a `num_classes` classifier; class count and names come from the data module."""

    def __init__(
        self,
        *,
        num_classes: int,
        class_names: list[str] | None = None,
        label_smoothing: float = 0.0,
        predict_top_k: int = 5,
        **shared,
    ) -> None:
        super().__init__(**shared)
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.save_hyperparameters(ignore=["predict_top_k"])  # a predict-time choice, not the model's
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.backbone = self.backbone_config.build(num_classes=num_classes)
        self.label_smoothing = label_smoothing
        self.predict_top_k = min(predict_top_k, num_classes)
        self.val_metrics = classification_metrics(num_classes).clone(prefix="val/")
        self.test_metrics = classification_metrics(num_classes).clone(prefix="test/")
        self.test_confusion = confusion_matrix(num_classes)
        self._predictions: list[tuple[str, list[str], list[float]]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        self.log_dict({"train/loss": loss, "train/top1": accuracy}, prog_bar=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        self.log("val/loss", F.cross_entropy(logits, labels), batch_size=len(labels), sync_dist=True)
        self.val_metrics.update(logits, labels)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True, sync_dist=True)
        self.val_metrics.reset()

    def test_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        self.test_metrics.update(logits, labels)
        self.test_confusion.update(logits, labels)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute(), sync_dist=True)
        matrix = self.test_confusion.compute().cpu()
        if self.trainer.is_global_zero:
            save_confusion_png(matrix, self.class_names, self.run_dir / "confusion_matrix.png")
        self.test_metrics.reset()
        self.test_confusion.reset()

    def predict_step(self, batch, batch_idx):
        images, paths = batch
        scores, indices = self(images).softmax(dim=1).topk(self.predict_top_k, dim=1)
        for path, row_scores, row_indices in zip(paths, scores.tolist(), indices.tolist(), strict=True):
            self._predictions.append((str(path), [self.class_names[i] for i in row_indices], row_scores))

    def on_predict_epoch_end(self) -> None:
        path = self.run_dir / "predictions.csv"
        write_topk_csv(path, self._predictions)
        print(f"wrote {len(self._predictions)} predictions to {path}")
        self._predictions.clear()
