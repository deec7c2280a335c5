"""The SSD as exported: network, box decoding and clip in the graph; per-class selection and NMS in PyTorch.

The per-class score threshold, top-k and NMS stay in PyTorch (`select_detections`, a copy of
torchvision's `SSD.postprocess_detections`): they are data-dependent and cost under 1 ms, ONNX's
`NonMaxSuppression` has no per-class top-k before it and breaks ties in its own order, and keeping
torchvision's code keeps the exported detector's detections those of the PyTorch one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
