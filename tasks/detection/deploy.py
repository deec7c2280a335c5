"""The SSD as exported: network, box decoding and clip in the graph; per-class selection and NMS in PyTorch.

Outputs: `boxes` (N, anchors, 4), xyxy in units of the input side (as TF's detectors output them; the
runner scales them to pixels) and `scores` (N, anchors, classes + 1), softmaxed. The per-class score
threshold, top-k and NMS stay in PyTorch (`select_detections`, a copy of torchvision's
`SSD.postprocess_detections`): they are data-dependent and cost under 1 ms, ONNX's `NonMaxSuppression`
has no per-class top-k before it and breaks ties in its own order, and keeping torchvision's code keeps
the exported detector's detections those of the PyTorch one. Faster R-CNN is not exported (its RoI stage
crops a data-dependent number of proposals).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tasks.common.deploy import (
    DeployError,
    Exportable,
    OnnxModel,
    TaskDeployment,
    image_loader,
    stack_images,
    trained_on_real_data,
)


class SSDNetwork(nn.Module):
    """torchvision SSD's eval path up to (not including) the per-class selection, batched for ONNX.

    Anchors depend only on the (fixed) input size and are a constant here; decoding is
    `BoxCoder.decode_single` and clipping `clip_boxes_to_image`, written over a batch axis.
    """

    def __init__(self, detector: nn.Module, image_size: int) -> None:
        super().__init__()
        from torchvision.models.detection.image_list import ImageList

        self.features = detector.backbone
        self.head = detector.head
        self.weights = tuple(float(w) for w in detector.box_coder.weights)
        self.xform_clip = float(detector.box_coder.bbox_xform_clip)
        self.image_size = image_size
        with torch.no_grad():
            example = torch.zeros(1, 3, image_size, image_size)
            was_training = detector.training
            detector.eval()
            features = list(self.features(example).values())
            anchors = detector.anchor_generator(ImageList(example, [(image_size, image_size)]), features)[0]
            detector.train(was_training)
        self.register_buffer("anchors", anchors.clone(), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        head = self.head(list(self.features(images).values()))
        return self.decode(head["bbox_regression"]), F.softmax(head["cls_logits"], dim=-1)

    def decode(self, rel_codes: torch.Tensor) -> torch.Tensor:
        anchors = self.anchors
        widths = anchors[:, 2] - anchors[:, 0]
        heights = anchors[:, 3] - anchors[:, 1]
        ctr_x = anchors[:, 0] + 0.5 * widths
        ctr_y = anchors[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx = rel_codes[..., 0::4] / wx
        dy = rel_codes[..., 1::4] / wy
        dw = torch.clamp(rel_codes[..., 2::4] / ww, max=self.xform_clip)
        dh = torch.clamp(rel_codes[..., 3::4] / wh, max=self.xform_clip)
        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]
        half_w, half_h = 0.5 * pred_w, 0.5 * pred_h
        boxes = torch.stack(
            (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=-1
        ).flatten(-2)
        size = float(self.image_size)
        clipped = torch.stack((boxes[..., 0::2].clamp(0, size), boxes[..., 1::2].clamp(0, size)), dim=-1)
        return clipped.reshape(boxes.shape) / size  # normalised, as TF's detectors output them


def select_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    *,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
    topk_candidates: int,
) -> dict[str, torch.Tensor]:
    """One image's decoded boxes (A, 4) and softmax scores (A, C+1) -> detections: torchvision's loop."""
    from torchvision.ops import boxes as box_ops

    image_boxes, image_scores, image_labels = [], [], []
    for label in range(1, scores.shape[-1]):
        score = scores[:, label]
        keep = score > score_thresh
        score, box = score[keep], boxes[keep]
        score, idxs = score.topk(min(topk_candidates, score.numel()))
        image_boxes.append(box[idxs])
        image_scores.append(score)
        image_labels.append(torch.full_like(score, fill_value=label, dtype=torch.int64))
    image_boxes = torch.cat(image_boxes, dim=0)
    image_scores = torch.cat(image_scores, dim=0)
    image_labels = torch.cat(image_labels, dim=0)
    keep = box_ops.batched_nms(image_boxes, image_scores, image_labels, nms_thresh)[:detections_per_img]
    return {"boxes": image_boxes[keep], "scores": image_scores[keep], "labels": image_labels[keep]}


class OnnxDetector(OnnxModel):
    """`detector(images)` of torchvision's SSD in eval mode: a list of {boxes, scores, labels} per image.

    Images of another size are resized to the exported one as torchvision's transform does
    (bilinear), and boxes scaled back to each image's own size.
    """

    def __call__(self, images, targets=None) -> list[dict[str, torch.Tensor]]:
        size = self.image_size
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            images = list(images)
        original = [tuple(image.shape[-2:]) for image in images]
        batch = torch.stack([
            image if image.shape[-2:] == (size, size)
            else F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]
            for image in images
        ])  # fmt: skip
        boxes, scores = self.run(batch)
        boxes = boxes * float(size)
        options = {key: self.metadata[key] for key in
                   ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates")}  # fmt: skip
        detections = []
        for image_boxes, image_scores, (height, width) in zip(boxes, scores, original, strict=True):
            found = select_detections(image_boxes, image_scores, **options)
            if (height, width) != (size, size):
                scale = torch.tensor([width / size, height / size] * 2, device=found["boxes"].device)
                found["boxes"] = found["boxes"] * scale
            detections.append(found)
        return detections


def exportable(module, data: dict, path) -> Exportable:
    import albumentations as A

    from tasks.detection.synthetic import render_image

    if module.architecture != "ssd":
        raise DeployError(f"{path}: a {module.architecture!r} detector; only SSD exports (Faster R-CNN's "
                          "second stage runs on a data-dependent number of proposals)")  # fmt: skip
    size = int(module.image_size)
    resize = A.Compose([A.Resize(height=size, width=size)])  # `detection_eval` without its box params

    def synthetic(count: int) -> np.ndarray:
        if not data.get("synthetic_images"):
            raise trained_on_real_data(path, "COCO-format data")
        side = int(data.get("synthetic_image_size", 320))
        seed = int(data.get("seed", 0))  # indices from 0 are synth-shapes' training images
        return stack_images(resize(image=np.asarray(render_image(seed, i, (side, side))[0]))["image"]
                            for i in range(count))  # fmt: skip

    detector = module.detector
    metadata = {
        "num_classes": module.num_classes,
        "score_thresh": detector.score_thresh,
        "nms_thresh": detector.nms_thresh,
        "detections_per_img": detector.detections_per_img,
        "topk_candidates": detector.topk_candidates,
    }
    return Exportable(SSDNetwork(detector, size), ["boxes", "scores"], size, metadata,
                      image_loader(resize), synthetic)  # fmt: skip


DEPLOYMENT = TaskDeployment(
    task="detection", module="tasks.detection.module:DetectionModule", prefix="detector.backbone.body.",
    hparams=("architecture", "num_classes", "image_size", "ssd"), network="detector",
    exportable=exportable, runner=OnnxDetector,
)  # fmt: skip
