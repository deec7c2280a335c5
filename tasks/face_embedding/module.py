"""Face embeddings (FaceNet, and the paper's §4.5 distillation): a MobileNet trained in one of two modes.

* `triplet`: FaceNet's loss, margin 0.2 on squared L2 distances, semi-hard negatives mined online
  inside each P x K batch. With `softmax_weight > 0` a cosine-margin (CosFace) head over the
  `num_identities` training people adds its cross-entropy to the triplet loss; the head only
  shapes training and is not part of the embedder (evaluation, export and indexing ignore it).
* `distill`: the squared difference between the student's embedding and a teacher's (Table 14).

Before each validation during fit, and when training ends, BatchNorm statistics are re-estimated on
random training photos (`precise_bn_batches`; 0 keeps the running averages), so validation, test and
every checkpoint use statistics of the data rather than of the last look-alike batches.

Validation and test embed every image of the data module's `EvalSet` and score the LFW protocol
(10-fold accuracy, VAL@FAR=1e-3) and gallery/probe identification; test also writes the ROC curve
and the metrics JSON into the run directory.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from tasks.common.batchnorm import PreciseBatchNorm
from tasks.common.config import as_dataclass
from tasks.common.io import write_csv
from tasks.common.module import TaskModule
from tasks.common.teacher import Teacher, TeacherConfig, build_teacher, write_outputs_file
from tasks.face_embedding.losses import (
    CosineMarginClassifier,
    batch_semi_hard_triplet_loss,
    embedding_distillation_loss,
)
from tasks.face_embedding.metrics import EvalSet
from tasks.face_embedding.model import EMBEDDER_PREFIX, build_embedder, load_teacher_embedder

PROGRESS_METRICS = ("lfw_accuracy", "top1")


class FaceEmbeddingModule(TaskModule):
    def __init__(
        self,
        *,
        embedding_dim: int = 128,
        mode: Literal["triplet", "distill"] = "triplet",
        margin: float = 0.2,
        teacher: TeacherConfig | None = None,
        softmax_weight: float = 0.0,
        num_identities: int | None = None,
        softmax_scale: float = 30.0,
        softmax_margin: float = 0.35,
        precise_bn_batches: int = 25,
        **shared,
    ) -> None:
        super().__init__(**shared)
        if mode not in ("triplet", "distill"):
            raise ValueError(f"mode must be 'triplet' or 'distill', got {mode!r}")
        if mode == "distill" and teacher is None:
            raise ValueError(
                "mode 'distill' needs a teacher (kind: model with a checkpoint, or kind: outputs with a file)"
            )
        if softmax_weight > 0 and (mode != "triplet" or not num_identities):
            raise ValueError(
                "softmax_weight > 0 needs mode 'triplet' and num_identities (the training identities)"
            )
        self.save_hyperparameters()
        self.embedder = build_embedder(backbone=self.backbone_config, embedding_dim=embedding_dim)
        self.mode, self.margin = mode, margin
        self.softmax_weight = softmax_weight
        self.classifier = (
            CosineMarginClassifier(embedding_dim, num_identities, scale=softmax_scale, margin=softmax_margin)
            if softmax_weight > 0
            else None
        )
        self.teacher_config = as_dataclass(TeacherConfig, teacher) if teacher is not None else None
        self.teacher: Teacher | None = None  # built when fitting, kept out of the checkpoint
        self._eval_embeddings: list[torch.Tensor] = []
        self._eval_teacher_mse: list[torch.Tensor] = []
        self._identity_sums: torch.Tensor | None = None  # for look-alike batches (PKSampler)

    def configure_callbacks(self) -> list[pl.Callback]:
        """Precise BatchNorm statistics for validation and checkpoints (see `tasks.common.batchnorm`)."""
        batches = self.hparams.precise_bn_batches
        return super().configure_callbacks() + ([PreciseBatchNorm(batches)] if batches else [])

    backbone_prefix = EMBEDDER_PREFIX + "backbone."

    @property
    def backbone(self) -> nn.Module:  # TaskModule freezes and unfreezes this
        return self.embedder.backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedder(images)

    # -- training -------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        train_set = getattr(self.trainer.datamodule, "train_set", None) if self._trainer else None
        if self.classifier is not None and train_set is not None:
            found = len(train_set.identities)
            if found != len(self.classifier.weight):
                raise ValueError(
                    f"model.num_identities is {len(self.classifier.weight)} but the training set has "
                    f"{found} identities; set them equal"
                )
        if self.mode == "distill" and self.teacher is None and stage in ("fit", "validate"):
            self.teacher = build_teacher(self.teacher_config, load_teacher_embedder)
            if self.teacher.output_dim != self.hparams.embedding_dim:
                raise ValueError(
                    f"teacher embeds in {self.teacher.output_dim} dimensions, the student in "
                    f"{self.hparams.embedding_dim}; set model.embedding_dim to match"
                )

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    def on_validation_start(self) -> None:
        self.on_fit_start()

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        # Lightning sets the epoch of plain samplers only; PK batches must reshuffle every epoch too.
        batch_sampler = getattr(self.trainer.train_dataloader, "batch_sampler", None)
        if hasattr(batch_sampler, "set_epoch"):
            batch_sampler.set_epoch(self.current_epoch)
        if getattr(batch_sampler, "similar_identities", 1) > 1:
            self._share_identity_centroids(batch_sampler)

    def _share_identity_centroids(self, batch_sampler) -> None:
        """Hand the sampler last epoch's mean embedding per identity, then start summing afresh."""
        if self._identity_sums is not None:
            sums = self._identity_sums[torch.as_tensor(batch_sampler.identities)]
            batch_sampler.set_identity_centroids(nn.functional.normalize(sums, dim=1).numpy())
        self._identity_sums = torch.zeros(int(batch_sampler.identities.max()) + 1, self.hparams.embedding_dim)

    def training_step(self, batch, batch_idx):
        images, labels, keys = batch
        embeddings = self(images)
        if self.mode == "triplet":
            loss, active = batch_semi_hard_triplet_loss(embeddings, labels, margin=self.margin)
            if self._identity_sums is not None:
                self._identity_sums.index_add_(0, labels.cpu(), embeddings.detach().float().cpu())
            self.log("train/active_triplets", float(active), batch_size=len(labels))
            if self.classifier is not None:
                identity_loss = self.classifier(embeddings, labels)
                self.log("train/identity_loss", identity_loss, batch_size=len(labels))
                loss = loss + self.softmax_weight * identity_loss
        else:
            loss = embedding_distillation_loss(embeddings, self.teacher(images, keys))
            self.log("train/distill_mse", loss, batch_size=len(labels))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        return loss

    # -- evaluation -----------------------------------------------------------------------------
    def validation_step(self, batch, batch_idx):
        images, _, keys = batch
        embeddings = self(images)
        self._eval_embeddings.append(embeddings.float().cpu())
        if self.teacher is not None and self.teacher.knows(keys):
            errors = (embeddings - self.teacher(images, keys)).pow(2).sum(dim=1)
            self._eval_teacher_mse.append(errors.float().cpu())

    def test_step(self, batch, batch_idx):
        self._eval_embeddings.append(self(batch[0]).float().cpu())

    def _collect(self, eval_set: EvalSet) -> np.ndarray | None:
        embeddings = torch.cat(self._eval_embeddings).numpy() if self._eval_embeddings else np.zeros((0, 1))
        self._eval_embeddings.clear()
        if self.trainer.sanity_checking:
            return None
        if len(embeddings) != len(eval_set):
            raise RuntimeError(
                f"embedded {len(embeddings)} of {len(eval_set)} evaluation images: the LFW protocol "
                "needs all of them (do not limit val/test batches; evaluation runs on one process)"
            )
        return embeddings

    def on_validation_epoch_end(self) -> None:
        mse = torch.cat(self._eval_teacher_mse) if self._eval_teacher_mse else None
        self._eval_teacher_mse.clear()
        embeddings = self._collect(self.trainer.datamodule.val_set)
        if embeddings is None:
            return
        metrics = self.trainer.datamodule.val_set.evaluate(embeddings)
        if mse is not None:
            metrics["distill_mse"] = float(mse.mean())
        for name, value in metrics.items():
            self.log(f"val/{name}", value, prog_bar=name in PROGRESS_METRICS)

    def on_predict_epoch_start(self) -> None:
        self._predicted: list[tuple[list[str], torch.Tensor]] = []

    def predict_step(self, batch, batch_idx):
        if batch is not None:  # every file of the batch was unreadable
            images, _, keys = batch
            self._predicted.append((list(keys), self(images).float().cpu()))

    def on_predict_epoch_end(self) -> None:
        """`predictions.csv` (image, then one column per embedding dimension) and `embeddings.npz`
        (`paths`, `outputs`: also a distillation teacher file)."""
        keys = [key for batch_keys, _ in self._predicted for key in batch_keys]
        dim = self.hparams.embedding_dim
        embeddings = torch.cat([e for _, e in self._predicted]).numpy() if keys else np.zeros((0, dim))
        self._predicted.clear()
        if self.trainer.is_global_zero:
            header = ["image", *(f"e{i}" for i in range(dim))]
            rows = ([key, *(f"{v:.6f}" for v in row)] for key, row in zip(keys, embeddings, strict=True))
            write_csv(self.run_dir / "predictions.csv", header, rows)
            write_outputs_file(self.run_dir / "embeddings.npz", keys, embeddings.reshape(len(keys), dim))
            print(f"wrote {len(keys)} embeddings to {self.run_dir / 'predictions.csv'} and embeddings.npz")

    def on_test_epoch_end(self) -> None:
        eval_set = self.trainer.datamodule.test_set
        embeddings = self._collect(eval_set)
        if self.trainer.is_global_zero:
            metrics = eval_set.write_report(embeddings, self.run_dir, prefix="test")
            for name, value in metrics.items():
                self.log(f"test/{name}", value, rank_zero_only=True)
