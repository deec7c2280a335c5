"""Face attributes (paper §4.5, Table 12): a MobileNet with one logit per attribute, in one of two modes.

* `supervised`: per-attribute BCE on the labels (optionally `pos_weight` = negatives/positives of the
  training split's label rates). This is how a teacher is trained.
* `distill`: per-attribute cross-entropy to a teacher's sigmoid outputs (`temperature` T, with T²
  scaling; T = 1 is the paper). The teacher is a checkpoint of this task, at any width and input size
  (it is run on the student's own batch, resized to its input size), or a file of precomputed logits
  keyed by image path (`mobilenets face-attributes export-logits`). Labels are not used: with
  `data.train_on: unlabeled` the training batches hold none. The weight decay is
  `distill_weight_decay` (default 0: the paper needed no regularisation), not `optim.weight_decay`.

Validation scores mean AP, chooses each attribute's decision threshold (`threshold_criterion`) and keeps
it in the `thresholds` buffer, so it is saved with every checkpoint; test first re-chooses the
thresholds on the validation split for the weights under test, then scores the test split with them
and at 0.5, and writes `test_attributes.csv`, `test_metrics.json` and `ap_per_attribute.png`. With a
teacher configured (in either mode), validation and test also report the emulation cross-entropy
(the paper's footnote 2) on every image the teacher knows.
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from typing import Literal

import torch

from tasks.common.config import as_dataclass
from tasks.common.io import write_csv, write_text_atomic
from tasks.common.module import TaskModule
from tasks.common.teacher import Teacher, TeacherConfig, build_teacher
from tasks.face_attributes.losses import attribute_bce, distillation_loss, pos_weight_from_rates
from tasks.face_attributes.metrics import (
    AttributeReport,
    choose_thresholds,
    emulation_cross_entropy,
    evaluate_attributes,
)
from tasks.face_attributes.model import build_attribute_network, load_teacher
from tasks.face_attributes.plots import save_ap_bar_chart


class FaceAttributesModule(TaskModule):
    def __init__(
        self,
        *,
        num_attributes: int,
        attribute_names: list[str] | None = None,
        mode: Literal["supervised", "distill"] = "supervised",
        teacher: TeacherConfig | None = None,
        temperature: float = 1.0,
        pos_weight: bool = False,
        max_pos_weight: float = 20.0,
        distill_weight_decay: float | None = 0.0,
        threshold_criterion: Literal["accuracy", "balanced_accuracy"] = "accuracy",
        **shared,
    ) -> None:
        super().__init__(**shared)
        if mode not in ("supervised", "distill"):
            raise ValueError(f"mode must be 'supervised' or 'distill', got {mode!r}")
        if mode == "distill" and teacher is None:
            raise ValueError(
                "mode 'distill' needs a teacher (kind: model with a checkpoint, or kind: outputs with a file)"
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if threshold_criterion not in ("accuracy", "balanced_accuracy"):
            raise ValueError(
                f"threshold_criterion must be accuracy or balanced_accuracy, got {threshold_criterion!r}"
            )
        if attribute_names is not None and len(attribute_names) != num_attributes:
            raise ValueError(f"{len(attribute_names)} attribute names for num_attributes={num_attributes}")
        self.save_hyperparameters()
        self.attribute_names = (
            list(attribute_names) if attribute_names else [str(i) for i in range(num_attributes)]
        )
        self.backbone = build_attribute_network(backbone=self.backbone_config, num_attributes=num_attributes)
        self.mode = mode
        self.temperature = temperature
        if mode == "distill" and distill_weight_decay is not None:
            self.optim_config = dataclasses.replace(self.optim_config, weight_decay=distill_weight_decay)
        self.teacher_config = as_dataclass(TeacherConfig, teacher) if teacher is not None else None
        self.teacher: Teacher | None = None  # built when a stage starts, kept out of the checkpoint
        self.register_buffer("thresholds", torch.full((num_attributes,), 0.5))
        self.loss_pos_weight: torch.Tensor | None = None
        self._eval: dict[str, list[torch.Tensor]] = {
            "logits": [],
            "targets": [],
            "student": [],
            "teacher": [],
        }
        self._predicted: list[tuple[list[str], torch.Tensor]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.teacher_config is not None and self.teacher is None and stage in ("fit", "validate", "test"):
            loader = partial(load_teacher, attributes=self.attribute_names)
            self.teacher = build_teacher(self.teacher_config, loader)
            if self.teacher.output_dim != self.hparams.num_attributes:
                raise ValueError(
                    f"the teacher predicts {self.teacher.output_dim} attributes, the student "
                    f"{self.hparams.num_attributes}; they must predict the same ones"
                )
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage != "fit" or datamodule is None:
            return
        if self.mode == "supervised" and not getattr(datamodule, "labeled_training", True):
            raise ValueError(
                "model.mode supervised trains on labels, but data.train_on is unlabeled; "
                "use model.mode distill (with a teacher) or data.train_on labeled"
            )
        if self.hparams.pos_weight and self.mode == "supervised":
            rates = datamodule.label_frequencies()
            self.loss_pos_weight = pos_weight_from_rates(rates, max_weight=self.hparams.max_pos_weight)

    def _teacher_to_device(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    def on_fit_start(self) -> None:
        self._teacher_to_device()

    def on_validation_start(self) -> None:
        self._teacher_to_device()

    def on_test_start(self) -> None:
        self._teacher_to_device()

    # -- training -------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        if len(batch) == 2:  # unlabeled faces: (images, keys)
            images, keys = batch
            targets = None
        else:
            images, targets, keys = batch
        logits = self(images)
        if self.mode == "supervised":
            if targets is None:
                raise ValueError("a supervised step got a batch without labels")
            pos_weight = None if self.loss_pos_weight is None else self.loss_pos_weight.to(logits.device)
            loss = attribute_bce(logits, targets, pos_weight)
        else:
            loss = distillation_loss(logits, self.teacher(images, keys), temperature=self.temperature)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    # -- evaluation -----------------------------------------------------------------------------
    def _evaluation_step(self, batch) -> None:
        images, targets, keys = batch
        logits = self(images)
        self._eval["logits"].append(logits.float().cpu())
        self._eval["targets"].append(targets.float().cpu())
        if self.teacher is not None and self.teacher.knows(keys):
            self._eval["student"].append(logits.float().cpu())
            self._eval["teacher"].append(self.teacher(images, keys).float().cpu())

    def validation_step(self, batch, batch_idx):
        self._evaluation_step(batch)

    def test_step(self, batch, batch_idx):
        self._evaluation_step(batch)

    def _collect(self) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        logits, targets = torch.cat(self._eval["logits"]), torch.cat(self._eval["targets"])
        emulation = None
        if self._eval["teacher"]:
            emulation = emulation_cross_entropy(
                torch.cat(self._eval["student"]), torch.cat(self._eval["teacher"])
            )
        for values in self._eval.values():
            values.clear()
        return logits, targets, emulation

    def _log_report(self, prefix: str, report: AttributeReport, logits, targets, emulation) -> dict:
        metrics = {f"{prefix}/{name}": value for name, value in report.summary().items()}
        metrics[f"{prefix}/loss"] = float(attribute_bce(logits, targets))
        if emulation is not None:
            metrics[f"{prefix}/emulation_ce"] = emulation
        for name, value in metrics.items():
            self.log(name, value, prog_bar=name.endswith("mean_ap"))
        return metrics

    def on_validation_epoch_end(self) -> None:
        if not self._eval["logits"]:
            return
        logits, targets, emulation = self._collect()
        if self.trainer.sanity_checking:
            return
        probabilities = torch.sigmoid(logits).numpy()
        thresholds = choose_thresholds(
            probabilities, targets.numpy(), criterion=self.hparams.threshold_criterion
        )
        self.thresholds.copy_(torch.from_numpy(thresholds))
        report = evaluate_attributes(probabilities, targets.numpy(), self.attribute_names, thresholds)
        self._log_report("val", report, logits, targets, emulation)

    @torch.no_grad()
    def _choose_thresholds_on_validation(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "threshold_dataloader"):
            return  # keep the thresholds the checkpoint was saved with
        logits, targets = [], []
        for images, batch_targets, _ in datamodule.threshold_dataloader():
            logits.append(self(images.to(self.device)).float().cpu())
            targets.append(batch_targets.float())
        probabilities = torch.sigmoid(torch.cat(logits)).numpy()
        thresholds = choose_thresholds(probabilities, torch.cat(targets).numpy(),
                                       criterion=self.hparams.threshold_criterion)  # fmt: skip
        self.thresholds.copy_(torch.from_numpy(thresholds))

    def on_test_epoch_start(self) -> None:
        self._choose_thresholds_on_validation()

    def on_test_epoch_end(self) -> None:
        logits, targets, emulation = self._collect()
        probabilities = torch.sigmoid(logits).numpy()
        report = evaluate_attributes(probabilities, targets.numpy(), self.attribute_names,
                                     self.thresholds.cpu().numpy())  # fmt: skip
        metrics = self._log_report("test", report, logits, targets, emulation)
        if self.trainer.is_global_zero:
            run = self.run_dir
            write_csv(run / "test_attributes.csv", report.HEADER, report.rows())
            summary = {**metrics, "excluded": report.excluded, "images": len(targets)}
            write_text_atomic(run / "test_metrics.json", json.dumps(summary, indent=1) + "\n")
            save_ap_bar_chart(
                report.attributes,
                report.ap,
                run / "ap_per_attribute.png",
                title=f"test AP per attribute ({len(targets)} images)",
                positive_rates=targets.mean(dim=0).tolist(),
            )
            print(f"wrote test_attributes.csv, test_metrics.json and ap_per_attribute.png to {run}")

    # -- prediction -----------------------------------------------------------------------------
    def on_predict_epoch_start(self) -> None:
        self._predicted = []

    def predict_step(self, batch, batch_idx):
        if batch is None:  # every file of the batch was unreadable
            return
        images, keys = batch
        self._predicted.append((list(keys), torch.sigmoid(self(images)).float().cpu()))

    def on_predict_epoch_end(self) -> None:
        """`predictions.csv`: image, then per attribute its probability and its 0/1 decision at the threshold
        chosen on the validation split (0.5 for a network never validated)."""
        keys = [key for batch_keys, _ in self._predicted for key in batch_keys]
        count = self.hparams.num_attributes
        probabilities = torch.cat([p for _, p in self._predicted]) if keys else torch.zeros(0, count)
        self._predicted = []
        decisions = probabilities >= self.thresholds.cpu()
        header = ["image"] + [
            f"{name}{suffix}" for name in self.attribute_names for suffix in ("", "_decision")
        ]
        rows = (
            [key, *(value for a in range(count) for value in (f"{row[a]:.5f}", int(decided[a])))]
            for key, row, decided in zip(keys, probabilities.tolist(), decisions.tolist(), strict=True)
        )
        if self.trainer.is_global_zero:
            path = self.run_dir / "predictions.csv"
            write_csv(path, header, rows)
            print(f"wrote {len(keys)} predictions to {path}")
