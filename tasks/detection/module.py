"""The detection LightningModule: SSD or Faster R-CNN on MobileNet, scored with COCO metrics.

Training logs torchvision's losses. Validation and test collect detections as COCO results and score
them with pycocotools over the split's annotation file; all 12 summary stats are logged (`val/AP` is
the checkpoint monitor) and the results JSON, per-category AP tables and precision-recall curves
land in `<run dir>/<stage>/`. Predict writes a COCO results JSON and, optionally, images with boxes.
Under DDP every rank gathers all detections before scoring, so the logged numbers cover the whole
split and agree across ranks; only rank 0 writes files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist

from backbone import MobileNetV1
from tasks.common.io import write_csv, write_text_atomic
from tasks.common.module import TaskModule
from tasks.common.transforms import from_model_input
from tasks.detection.metrics import STAT_NAMES, DetectionResults, evaluate_coco, write_results_json
from tasks.detection.model import Architecture, FasterRCNNOptions, SSDOptions, build_detector
from tasks.detection.plots import draw_detections, plot_pr_curves, write_ap_tables

PREDICTION_COLUMNS = ("image_id", "category", "score", "x", "y", "width", "height")  # COCO xywh pixels


class DetectionModule(TaskModule):
    """`num_classes` counts foreground classes and must equal the data's (labels 1..K, 0 is background).

    `ssd` / `frcnn` hold the architecture's knobs; `cpu_threads` sets torch's intra-op threads when
    training on CPU (None leaves torch's default).
    """

    def __init__(
        self,
        *,
        architecture: Architecture = "ssd",
        num_classes: int = 5,
        image_size: int = 300,
        ssd: SSDOptions | None = None,
        frcnn: FasterRCNNOptions | None = None,
        eval_backend: Literal["pycocotools", "faster_coco_eval"] = "pycocotools",
        draw_predictions: int = 0,
        draw_score_threshold: float = 0.3,
        **shared,
    ) -> None:
        super().__init__(**shared)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (foreground classes), got {num_classes}")
        # How predictions are drawn is not part of the trained model: left out of the checkpoint so
        # that `predict --ckpt_path X --model.draw_predictions 8` is not overridden by X's value.
        self.save_hyperparameters(ignore=["draw_predictions", "draw_score_threshold"])
        self.architecture = architecture
        self.num_classes = num_classes
        self.image_size = image_size
        self.eval_backend = eval_backend
        self.draw_predictions = draw_predictions
        self.draw_score_threshold = draw_score_threshold
        self.detector = build_detector(
            architecture=architecture,
            body=self.backbone_config.build(num_classes=0),
            num_classes=num_classes,
            image_size=image_size,
            ssd=ssd,
            frcnn=frcnn,
        )
        self._results: DetectionResults | None = None
        self._fit_started: float | None = None
        self._drawn = 0

    backbone_prefix = "detector.backbone.body."

    @property
    def backbone(self) -> MobileNetV1:
        """The MobileNet inside the detector (TaskModule freezes it; FRCNN stage 2 shares its layers)."""
        return self.detector.backbone.body

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return self.detector(images)

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = self.trainer.datamodule
        if datamodule is None:
            return
        if datamodule.num_classes != self.num_classes:
            raise ValueError(
                f"model.num_classes is {self.num_classes} but the data has {datamodule.num_classes} "
                f"categories ({datamodule.val_annotation_file}); set model.num_classes to match"
            )
        if datamodule.image_size != self.image_size:
            raise ValueError(
                f"model.image_size is {self.image_size} but data.image_size is {datamodule.image_size}; "
                "the detector expects inputs at its own size"
            )

    def on_fit_start(self) -> None:
        self._fit_started = time.monotonic()

    def _new_results(self) -> None:
        self._results = DetectionResults(self.trainer.datamodule.label_to_cat_id)

    # -- training -------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.detector(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        loss = sum(losses.values())
        batch_size = len(images)
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    # -- evaluation -----------------------------------------------------------------------------
    def _collect(self, batch) -> list[dict[str, torch.Tensor]]:
        images, targets = batch
        outputs = self.detector(images)
        self._results.add_batch(outputs, targets, input_size=images[0].shape[-2:])
        return outputs

    def on_validation_epoch_start(self) -> None:
        self._new_results()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._collect(batch)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:  # a two-batch sanity pass would score as near zero
            self._score("val")

    def on_test_epoch_start(self) -> None:
        self._new_results()

    def test_step(self, batch, batch_idx: int) -> None:
        self._collect(batch)

    def on_test_epoch_end(self) -> None:
        self._score("test")

    def _gathered_results(self) -> list[dict]:
        results = self._results.results()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            per_rank: list[list[dict]] = [[] for _ in range(dist.get_world_size())]
            dist.all_gather_object(per_rank, results)
            merged = {}  # DistributedSampler pads with repeats: keep one set per image id
            for rank_results in per_rank:
                by_image: dict[int, list[dict]] = {}
                for det in rank_results:
                    by_image.setdefault(det["image_id"], []).append(det)
                merged.update(by_image)
            results = [det for dets in merged.values() for det in dets]
        return results

    def _annotation_file(self, stage: str) -> Path:
        datamodule = self.trainer.datamodule
        return Path(getattr(datamodule, f"{stage}_annotation_file", datamodule.val_annotation_file))

    def _score(self, stage: str) -> None:
        results = self._gathered_results()
        evaluation = evaluate_coco(self._annotation_file(stage), results, backend=self.eval_backend)
        for name in STAT_NAMES:
            self.log(f"{stage}/{name}", evaluation[name], prog_bar=name in ("AP", "AP50"), sync_dist=False)
        if self._fit_started is not None and stage == "val":
            self.log("val/minutes", (time.monotonic() - self._fit_started) / 60)
        if self.trainer.is_global_zero:
            out_dir = self.run_dir / stage
            out_dir.mkdir(parents=True, exist_ok=True)
            write_results_json(out_dir / "detections.json", results)
            summary = {name: evaluation[name] for name in STAT_NAMES} | {"epoch": self.current_epoch}
            write_text_atomic(out_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
            write_ap_tables(evaluation, out_dir)
            plot_pr_curves(evaluation, out_dir)

    # -- prediction -----------------------------------------------------------------------------
    def on_predict_epoch_start(self) -> None:
        self._new_results()
        self._drawn = 0

    def predict_step(self, batch, batch_idx: int) -> None:
        outputs = self._collect(batch)
        if self.trainer.is_global_zero and self._drawn < self.draw_predictions:
            class_names = self.trainer.datamodule.class_names
            for image, output, target in zip(batch[0], outputs, batch[1], strict=True):
                if self._drawn >= self.draw_predictions:
                    break
                draw_detections(
                    from_model_input(image),
                    self.run_dir / "predictions" / f"{int(target['image_id'])}.png",
                    boxes=output["boxes"].tolist(),
                    labels=output["labels"].tolist(),
                    scores=output["scores"].tolist(),
                    class_names=class_names,
                    score_threshold=self.draw_score_threshold,
                )
                self._drawn += 1

    def on_predict_epoch_end(self) -> None:
        results = self._gathered_results()
        if self.trainer.is_global_zero:
            write_results_json(self.run_dir / "predictions.json", results)  # COCO results format
            rows = self._prediction_rows(results)
            path = write_csv(self.run_dir / "predictions.csv", PREDICTION_COLUMNS, rows)
            print(f"wrote {len(results)} detections to {path} and predictions.json")

    def _prediction_rows(self, results: list[dict]) -> list[list]:
        data = self.trainer.datamodule
        name_of = {cat_id: data.class_names[label] for label, cat_id in data.label_to_cat_id.items()}
        return [
            [r["image_id"], name_of[r["category_id"]], f"{r['score']:.5f}", *(f"{v:.2f}" for v in r["bbox"])]
            for r in results
        ]
