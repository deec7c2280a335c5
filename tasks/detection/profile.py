"""Parameters and mult-adds of whole detectors, next to the paper's Table 13 (`mobilenets profile --model`).

Counting reuses `backbone.complexity.profile` (forward hooks on every conv and linear layer) on a
model built on the meta device, so nothing is computed. What is counted is what runs per image:

- SSD: the backbone to `Conv2d_13`, the extra blocks and the 1x1 predictors at the input size.
  Anchor decoding and NMS are not multiply-adds and are left out, as in the paper.
- Faster R-CNN: the first stage (backbone to `Conv2d_11`, RPN conv and its 1x1 predictors) on the
  image, then the second stage (`Conv2d_12`, `Conv2d_13`, the class/box layers) on as many 14x14
  crops as there are test proposals (300). RoIAlign and NMS are left out.

Class counts follow the TF Object Detection API's COCO label map: 90 foreground ids, so 91 outputs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from backbone import MobileNetV1
from backbone.complexity import profile
from tasks.detection.faster_rcnn import faster_rcnn_mobilenet
from tasks.detection.ssd import ssd_mobilenet

COCO_LABEL_MAP_CLASSES = 90


@dataclass(frozen=True)
class PaperRow:
    """Table 13: COCO mAP@[.5:.95], billion mult-adds, million parameters."""

    mAP: float
    billion_mult_adds: float
    million_params: float


@dataclass(frozen=True)
class DetectorSpec:
    architecture: str
    size: int  # SSD: the square input side; Faster R-CNN: the shorter side
    paper: PaperRow


DETECTORS = {
    "ssd300": DetectorSpec("ssd", 300, PaperRow(19.3, 1.2, 6.8)),
    "frcnn300": DetectorSpec("frcnn", 300, PaperRow(16.4, 25.2, 6.1)),
    "frcnn600": DetectorSpec("frcnn", 600, PaperRow(19.8, 30.5, 6.1)),
}


@dataclass
class DetectorProfile:
    model: str
    width_mult: float
    image_shape: tuple[int, int]
    num_classes: int
    proposals: int | None
    params: int
    mult_adds: int
    paper: PaperRow

    def table(self) -> str:
        h, w = self.image_shape
        proposals = f", {self.proposals} proposals" if self.proposals else ""
        return "\n".join(
            [
                f"{self.model} (α={self.width_mult}, input {h}x{w}{proposals}, "
                f"{self.num_classes + 1} class outputs)",
                f"{'':14}{'params (M)':>12}{'mult-adds (B)':>15}{'COCO mAP':>10}",
                f"{'measured':14}{self.params / 1e6:12.3f}{self.mult_adds / 1e9:15.3f}{'':>10}",
                f"{'paper (T13)':14}{self.paper.million_params:12.1f}"
                f"{self.paper.billion_mult_adds:15.1f}{self.paper.mAP:10.1f}",
            ]
        )


def _unique_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared layers (FRCNN stage 2) count once


def profile_detector(
    name: str,
    *,
    width_mult: float = 1.0,
    num_classes: int = COCO_LABEL_MAP_CLASSES,
    image_shape: tuple[int, int] | None = None,
) -> DetectorProfile:
    """Params and per-image mult-adds of `name` (one of `DETECTORS`); `image_shape` (h, w) defaults
    to the square input our pipeline feeds (the data module resizes every image to a square)."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
    spec = DETECTORS[name]
    height, width = image_shape or (spec.size, spec.size)
    with torch.device("meta"):
        body = MobileNetV1(width_mult=width_mult, num_classes=0)
        image = torch.zeros(1, 3, height, width)
        if spec.architecture == "ssd":
            model = ssd_mobilenet(body=body, num_classes=num_classes, image_size=spec.size)
            proposals = None
            counts = profile(model, image, forward=lambda m, x: m.head(list(m.backbone(x).values())))
        else:
            model = faster_rcnn_mobilenet(body=body, num_classes=num_classes, min_size=spec.size)
            proposals = model.rpn._post_nms_top_n["testing"]
            counts = profile(model, image, forward=lambda m, x: _faster_rcnn_per_image(m, x, proposals))
    return DetectorProfile(
        model=name,
        width_mult=width_mult,
        image_shape=(height, width),
        num_classes=num_classes,
        proposals=proposals,
        params=_unique_params(model),
        mult_adds=counts.mult_adds,
        paper=spec.paper,
    )


def _faster_rcnn_per_image(model: nn.Module, image: torch.Tensor, proposals: int) -> None:
    """Both stages as they run at test time, with the second stage on `proposals` crops."""
    features = model.backbone(image)
    model.rpn.head(list(features.values()))
    channels = model.backbone.out_channels
    crop = model.roi_heads.box_roi_pool.output_size
    crops = torch.zeros(proposals, channels, *crop, device=image.device)
    model.roi_heads.box_predictor(model.roi_heads.box_head(crops))


def main(argv: Sequence[str] | None = None) -> int:
    """`mobilenets profile --model ssd300|frcnn300|frcnn600 [--width-mult A] [--image-shape H W] [--json]`."""
    parser = argparse.ArgumentParser(
        prog="mobilenets profile --model", description="Detector params and mult-adds against Table 13."
    )
    parser.add_argument("--model", required=True, choices=sorted(DETECTORS))
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--num-classes", type=int, default=COCO_LABEL_MAP_CLASSES, help="foreground classes")
    parser.add_argument(
        "--image-shape", type=int, nargs=2, metavar=("H", "W"), help="input size (default: square)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        result = profile_detector(
            args.model,
            width_mult=args.width_mult,
            num_classes=args.num_classes,
            image_shape=tuple(args.image_shape) if args.image_shape else None,
        )
    except ValueError as err:
        parser.error(str(err))
    print(json.dumps(asdict(result), indent=2) if args.json else result.table())
    return 0
