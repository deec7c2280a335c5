"""Faster R-CNN-MobileNet as the TF Object Detection API designs it, on torchvision's FasterRCNN.

The first stage runs the backbone only as far as `Conv2d_11_pointwise` (stride 16) and puts the RPN
there. The second stage crops 14x14 RoIAlign windows from that map and runs the backbone's own
`Conv2d_12` (stride 2) and `Conv2d_13` separable layers on them, then pools: those two layers are
shared with the backbone module, not copied, so pretrained weights reach both stages and the
first stage never computes them on the whole image. torchvision supplies the RPN, anchor matching,
sampling, box coding, RoIAlign and NMS.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from backbone import MobileNetV1

RPN_LAYER = "Conv2d_11"
LAST_LAYER = "Conv2d_13"
# TF grid anchor generator: scales 0.25..2 of a 256 px base, ratios 1:2, 1:1, 2:1, stride 16.
TF_ANCHOR_SIZES = (64, 128, 256, 512)
TF_ASPECT_RATIOS = (0.5, 1.0, 2.0)


class FirstStageTrunk(nn.Module):
    """The backbone up to the RPN's end point, as the single-level map torchvision's RPN reads."""

    def __init__(self, body: MobileNetV1, *, end_point: str = f"{RPN_LAYER}_pointwise") -> None:
        super().__init__()
        self.body = body
        self.end_point = end_point
        self.out_channels = body.channels(end_point)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict([("0", self.body.features(x, [self.end_point])[self.end_point])])


class SecondStageHead(nn.Module):
    """The backbone's layers after the RPN end point, run on RoI crops, then global average pooled."""

    def __init__(self, body: MobileNetV1, *, after: str = RPN_LAYER, through: str = LAST_LAYER) -> None:
        super().__init__()
        self.layers = body.layers_between(after, through)
        self.out_channels = body.channels(f"{through}_pointwise")

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.layers(crops).mean(dim=(2, 3))


def faster_rcnn_mobilenet(
    *,
    body: MobileNetV1,
    num_classes: int,
    min_size: int = 600,
    max_size: int = 1024,
    anchor_sizes: tuple[int, ...] = TF_ANCHOR_SIZES,
    crop_size: int = 14,
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_test: int = 300,
    rpn_batch_size_per_image: int = 256,
    box_batch_size_per_image: int = 64,
    box_score_thresh: float = 0.01,
    box_nms_thresh: float = 0.6,
    box_detections_per_img: int = 100,
) -> FasterRCNN:
    """Faster R-CNN on a MobileNet body; `num_classes` counts foreground classes (background is 0).

    Inputs are expected in [-1, 1] already, so torchvision's normalisation is the identity; images
    are resized so their shorter side is `min_size` (longer side at most `max_size`).
    """
    trunk = FirstStageTrunk(body)
    box_head = SecondStageHead(body)
    anchor_generator = AnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=(TF_ASPECT_RATIOS,))
    return FasterRCNN(
        trunk,
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        rpn_anchor_generator=anchor_generator,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=crop_size, sampling_ratio=2),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(box_head.out_channels, num_classes + 1),
        box_score_thresh=box_score_thresh,
        box_nms_thresh=box_nms_thresh,
        box_detections_per_img=box_detections_per_img,
        box_batch_size_per_image=box_batch_size_per_image,
        _skip_resize=True,  # training batches arrive at min_size already
    )
