"""SSD300-MobileNet as the TF Object Detection API builds it (`ssd_mobilenet_v1_coco`), on torchvision's SSD.

torchvision's `SSD` supplies the box coder (10, 10, 5, 5), the IoU-0.5 matcher that also forces every
ground truth onto its best anchor, hard negative mining at 3:1, smooth-L1 box loss and batched NMS.
This file adds only what torchvision cannot express: the MobileNet feature maps with TF's four extra
blocks, 1x1 predictor heads (torchvision's `SSDHead` uses 3x3 convs: nine times the head parameters)
and TF's anchors (`anchors.py`).

Classification uses torchvision's softmax cross-entropy, not TF's sigmoid loss: hard negative mining
ranks anchors by that loss, and torchvision's post-processing assumes softmax scores, so keeping its
loss keeps the whole pipeline consistent. Background is class 0.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torchvision.models.detection.ssd import SSD, SSDScoringHead

from backbone import MobileNetV1, scaled_channels
from backbone.mobilenet import ConvBNAct, truncated_normal_
from tasks.detection.anchors import SSDAnchorGenerator, ssd_box_specs

SSD_END_POINTS = ("Conv2d_11_pointwise", "Conv2d_13_pointwise")
EXTRA_DEPTHS = (512, 256, 256, 128)
HEAD_INIT_STDDEV = 0.03  # ssd_mobilenet_v1_coco.config: box predictor truncated_normal_initializer
EXTRA_MIN_DEPTH = 16  # ssd_mobilenet_v1_coco.config: feature_extractor.min_depth
HeadKind = Literal["conv1x1", "depthwise"]


class SSDFeatureExtractor(nn.Module):
    """MobileNet end points, then extra blocks (1x1 to half depth, 3x3 stride 2) down to a 1x1 map.

    Channels come from the backbone's `feature_info`, extra depths are scaled by α with a floor,
    as TF's `multi_resolution_feature_maps` does: `max(int(d·α), min_depth)`.
    """

    def __init__(
        self,
        body: MobileNetV1,
        *,
        end_points: Sequence[str] = SSD_END_POINTS,
        extra_depths: Sequence[int] = EXTRA_DEPTHS,
        min_depth: int = EXTRA_MIN_DEPTH,
    ) -> None:
        super().__init__()
        self.body = body
        self.end_points = tuple(end_points)
        self.out_channels = [body.channels(name) for name in self.end_points]
        extras = []
        channels = self.out_channels[-1]
        for depth in extra_depths:
            middle = scaled_channels(depth // 2, body.width_mult, min_depth)
            out = scaled_channels(depth, body.width_mult, min_depth)
            extras.append(
                nn.Sequential(
                    ConvBNAct(channels, middle, kernel_size=1),
                    ConvBNAct(middle, out, kernel_size=3, stride=2),
                )
            )
            self.out_channels.append(out)
            channels = out
        self.extras = nn.ModuleList(extras)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body.features(x, self.end_points)
        x = features[self.end_points[-1]]
        for index, block in enumerate(self.extras):
            x = block(x)
            features[f"extra_{index}"] = x
        return features


class SSDPredictorHead(nn.Module):
    """Class logits and box offsets per map: TF's convolutional box predictor.

    `head="conv1x1"` is ssd_mobilenet_v1_coco's: one 1x1 conv per output, each anchor sees only its own
    location's features. `head="depthwise"` is TF's `use_depthwise` option and SSDlite's head: a 3x3
    depthwise conv + BN + ReLU6 before the 1x1, so each prediction sees its 3x3 neighbourhood for
    ~10 % more head cost (see the README's detection ablation for what it buys on real images).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_anchors: Sequence[int],
        num_classes: int,
        *,
        head: HeadKind = "conv1x1",
    ) -> None:
        super().__init__()
        self.classification_head = SSDScoringHead(
            self._predictors(in_channels, num_anchors, num_classes, head), num_classes
        )
        self.regression_head = SSDScoringHead(self._predictors(in_channels, num_anchors, 4, head), 4)

    @staticmethod
    def _predictors(
        in_channels: Sequence[int], num_anchors: Sequence[int], columns: int, head: HeadKind
    ) -> nn.ModuleList:
        predictors = nn.ModuleList()
        for channels, anchors in zip(in_channels, num_anchors, strict=True):
            output = nn.Conv2d(channels, anchors * columns, kernel_size=1)
            nn.init.xavier_uniform_(output.weight)
            nn.init.zeros_(output.bias)
            if head == "depthwise":
                context = ConvBNAct(channels, channels, kernel_size=3, groups=channels)
                for conv in (context.conv, output):  # TF's box-predictor init, as SSDlite's head has it
                    truncated_normal_(conv.weight, HEAD_INIT_STDDEV)
                predictors.append(nn.Sequential(context, output))
            elif head == "conv1x1":
                predictors.append(output)
            else:
                raise ValueError(f"ssd head must be 'conv1x1' or 'depthwise', got {head!r}")
        return predictors

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "bbox_regression": self.regression_head(features),
            "cls_logits": self.classification_head(features),
        }


def ssd_mobilenet(
    *,
    body: MobileNetV1,
    num_classes: int,
    image_size: int = 300,
    min_scale: float = 0.2,
    max_scale: float = 0.95,
    extra_min_depth: int = EXTRA_MIN_DEPTH,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
    topk_candidates: int = 200,
    iou_thresh: float = 0.5,
    head: HeadKind = "conv1x1",
    end_points: Sequence[str] = SSD_END_POINTS,
    reduce_lowest_layer: bool = True,
    lowest_layer_scale: float = 0.1,
) -> SSD:
    """SSD on a MobileNet body; `num_classes` counts foreground classes (background is added as 0).

    Inputs are expected in [-1, 1] already (`to_model_input`), so torchvision's normalisation is
    the identity, and at `image_size` square: its fixed-size resize then changes nothing.
    """
    features = SSDFeatureExtractor(body, end_points=end_points, min_depth=extra_min_depth)
    anchors = SSDAnchorGenerator(
        ssd_box_specs(
            num_layers=len(features.out_channels),
            min_scale=min_scale,
            max_scale=max_scale,
            reduce_boxes_in_lowest_layer=reduce_lowest_layer,
            lowest_layer_scale=lowest_layer_scale,
        )
    )
    predictor = SSDPredictorHead(
        features.out_channels, anchors.num_anchors_per_location(), num_classes + 1, head=head
    )
    return SSD(
        features,
        anchors,
        (image_size, image_size),
        num_classes + 1,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        head=predictor,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        iou_thresh=iou_thresh,
        topk_candidates=topk_candidates,
        positive_fraction=0.25,  # 3 hard negatives per positive
        _skip_resize=True,  # training batches arrive at image_size already
    )
