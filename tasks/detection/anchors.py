"""SSD anchors as the TF Object Detection API makes them (`create_ssd_anchors` of its grid generator).

torchvision's `DefaultBoxGenerator` gives every location of a map the same set of ratios plus the
interpolated box; TF's `reduce_boxes_in_lowest_layer` gives the lowest map only three boxes
(0.1 at 1:1, s0 at 2:1 and 1:2). That is where the 1917 anchors at 300x300 come from
(19²·3 + (10² + 5² + 3² + 2² + 1²)·6), and why this small generator exists.

Anchors are normalised to the image (centre, width, height in [0, 1] units), as in TF: a 1:1 anchor
is square only on a square input. Like TF, and unlike torchvision's default, they are not clipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_convert

TF_ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)


def ssd_box_specs(
    *,
    num_layers: int = 6,
    min_scale: float = 0.2,
    max_scale: float = 0.95,
    aspect_ratios: Sequence[float] = TF_ASPECT_RATIOS,
    interpolated_scale_aspect_ratio: float = 1.0,
    reduce_boxes_in_lowest_layer: bool = True,
    lowest_layer_scale: float = 0.1,
) -> list[list[tuple[float, float]]]:
    """(scale, aspect ratio) of every box at one location, per layer: TF's `create_ssd_anchors`.

    Scales grow linearly from `min_scale` to `max_scale`; the extra box of each layer has scale
    sqrt(s_i · s_{i+1}) (s_{L} = 1) and ratio `interpolated_scale_aspect_ratio` (0 leaves it out).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if not 0 < min_scale <= max_scale:
        raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
    if num_layers == 1:
        scales = [min_scale, 1.0]
    else:
        step = (max_scale - min_scale) / (num_layers - 1)
        scales = [min_scale + step * i for i in range(num_layers)] + [1.0]
    specs = []
    for layer, (scale, scale_next) in enumerate(zip(scales[:-1], scales[1:], strict=True)):
        if layer == 0 and reduce_boxes_in_lowest_layer:
            specs.append([(lowest_layer_scale, 1.0), (scale, 2.0), (scale, 0.5)])
            continue
        boxes = [(scale, ratio) for ratio in aspect_ratios]
        if interpolated_scale_aspect_ratio > 0:
            boxes.append((math.sqrt(scale * scale_next), interpolated_scale_aspect_ratio))
        specs.append(boxes)
    return specs


def grid_anchors(boxes: Sequence[tuple[float, float]], grid_size: tuple[int, int]) -> torch.Tensor:
    """Normalised (cx, cy, w, h) anchors of one map, location-major: (H·W·A, 4).

    Centres sit at (i + 0.5) / size; width = scale·sqrt(ratio), height = scale / sqrt(ratio). The order
    (row, column, box) matches how torchvision's SSD heads flatten their outputs.
    """
    height, width = grid_size
    scales = torch.tensor([s for s, _ in boxes], dtype=torch.float64)
    ratios = torch.tensor([r for _, r in boxes], dtype=torch.float64)
    box_w, box_h = scales * ratios.sqrt(), scales / ratios.sqrt()
    cy = (torch.arange(height, dtype=torch.float64) + 0.5) / height
    cx = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    cy, cx = torch.meshgrid(cy, cx, indexing="ij")
    num_boxes = len(boxes)
    anchors = torch.stack(
        [
            cx[..., None].expand(-1, -1, num_boxes),
            cy[..., None].expand(-1, -1, num_boxes),
            box_w.expand(height, width, -1),
            box_h.expand(height, width, -1),
        ],
        dim=-1,
    )
    return anchors.reshape(-1, 4).float()


class SSDAnchorGenerator(nn.Module):
    """The anchor generator torchvision's `SSD` calls as `anchor_generator(images, features)`.

    Returns, per image, (num_anchors, 4) xyxy anchors in the pixels of the batched input. Anchors
    depend only on the map sizes and the input size, so they are cached per shape.
    """

    def __init__(self, box_specs: list[list[tuple[float, float]]]) -> None:
        super().__init__()
        self.box_specs = box_specs
        self._cache: dict[tuple, torch.Tensor] = {}

    def num_anchors_per_location(self) -> list[int]:
        return [len(boxes) for boxes in self.box_specs]

    def normalized_anchors(self, grid_sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """All anchors, (cx, cy, w, h) in units of the image size, for maps of these sizes."""
        if len(grid_sizes) != len(self.box_specs):
            raise ValueError(
                f"{len(grid_sizes)} feature maps, but anchors are defined for {len(self.box_specs)}"
            )
        return torch.cat(
            [grid_anchors(boxes, size) for boxes, size in zip(self.box_specs, grid_sizes, strict=True)]
        )

    def forward(self, images: ImageList, features: list[torch.Tensor]) -> list[torch.Tensor]:
        grid_sizes = tuple(tuple(f.shape[-2:]) for f in features)
        height, width = images.tensors.shape[-2:]
        key = (grid_sizes, height, width, features[0].device, features[0].dtype)
        if key not in self._cache:
            scale = torch.tensor([width, height, width, height], dtype=torch.float32)
            pixels = box_convert(self.normalized_anchors(grid_sizes) * scale, "cxcywh", "xyxy")
            self._cache[key] = pixels.to(device=features[0].device, dtype=features[0].dtype)
        return [self._cache[key]] * len(images.image_sizes)
