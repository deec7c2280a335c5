"""MobileNet v1 (Howard et al. 2017), built from one spec list that mirrors the paper's Table 1.

Layer and end-point names follow TF-slim (`Conv2d_0`, `Conv2d_{i}_depthwise`, `Conv2d_{i}_pointwise`)
so that TF checkpoints, the TF Object Detection API configs and this code all speak of the same
tensors. Heads ask for end points by name and read their channels and strides from `feature_info`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MIN_INPUT_SIZE = 32


@dataclass(frozen=True)
class LayerSpec:
    """One row of Table 1 after the stem: a depthwise-separable layer."""

    stride: int
    channels: int


# Table 1, rows 1..13. Row 13 has stride 1 (the paper's s2 is a typo; TF-slim agrees).
STEM_CHANNELS = 32
SEPARABLE_LAYERS: tuple[LayerSpec, ...] = (
    LayerSpec(1, 64),
    LayerSpec(2, 128),
    LayerSpec(1, 128),
    LayerSpec(2, 256),
    LayerSpec(1, 256),
    LayerSpec(2, 512),
    *(LayerSpec(1, 512) for _ in range(5)),
    LayerSpec(2, 1024),
    LayerSpec(1, 1024),
)
SHALLOW_DROPPED = frozenset(range(7, 12))  # Table 5: the five 14x14x512 layers

ACTIVATIONS = {"relu6": nn.ReLU6, "relu": nn.ReLU}


def scaled_channels(channels: int, width_mult: float, min_depth: int = 8) -> int:
    """The width rule of TF-slim: `max(int(c * alpha), min_depth)`."""
    return max(int(channels * width_mult), min_depth)


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) for one spatial dimension."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """A Conv2d that pads like TensorFlow's "SAME" (0 before, 1 after for stride 2 on even sizes).

    PyTorch's symmetric padding shifts every stride-2 output by half a pixel relative to TF;
    only weights trained in TF care, so this is used when `tf_padding=True`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        top, bottom = tf_same_padding(x.shape[-2], kh, sh, dh)
        left, right = tf_same_padding(x.shape[-1], kw, sw, dw)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> activation: every conv of MobileNet has this shape."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        activation: str = "relu6",
        tf_padding: bool = False,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.1,
    ) -> None:
        if tf_padding and kernel_size > 1:
            conv: nn.Conv2d = Conv2dSame(
                in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias=False
            )
        else:
            padding = (kernel_size - 1) // 2 * dilation
            conv = nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False
            )
        super().__init__(
            OrderedDict(
                conv=conv,
                bn=nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum),
                act=ACTIVATIONS[activation](inplace=True),
            )
        )


class SeparableLayer(nn.Module):
    """Depthwise 3x3 then pointwise 1x1, each with BN and activation (Figure 3, right)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, dilation: int, **conv_kw) -> None:
        super().__init__()
        self.depthwise = ConvBNAct(
            in_channels,
            in_channels,
            kernel_size=3,
            stride=stride,
            dilation=dilation,
            groups=in_channels,
            **conv_kw,
        )
        self.pointwise = ConvBNAct(in_channels, out_channels, kernel_size=1, **conv_kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class FullConvLayer(ConvBNAct):
    """One full 3x3 conv in place of a separable pair: the "Conv MobileNet" of Table 4."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, dilation: int, **conv_kw) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size=3, stride=stride, dilation=dilation, **conv_kw
        )


class MobileNetV1(nn.Module):
    """MobileNet v1 with TF-slim naming, optional dilation, and named feature extraction.

    `num_classes=0` leaves out the classifier; `forward` then returns pooled 1024·α features.
    """

    def __init__(
        self,
        *,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        conv: str = "separable",
        shallow: bool = False,
        activation: str = "relu6",
        min_depth: int = 8,
        dropout: float = 0.001,
        output_stride: int = 32,
        tf_padding: bool = False,
        in_channels: int = 3,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        _check_options(width_mult, conv, activation, output_stride, num_classes, dropout)
        self.width_mult = width_mult
        self.conv_kind = conv
        conv_kw = dict(activation=activation, tf_padding=tf_padding, bn_eps=bn_eps, bn_momentum=bn_momentum)
        layer_class = SeparableLayer if conv == "separable" else FullConvLayer

        stem_channels = scaled_channels(STEM_CHANNELS, width_mult, min_depth)
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            Conv2d_0=ConvBNAct(in_channels, stem_channels, kernel_size=3, stride=2, **conv_kw)
        )
        self.feature_info: list[dict] = [dict(name="Conv2d_0", num_chs=stem_channels, reduction=2)]
        channels, current_stride, rate = stem_channels, 2, 1
        for index, spec in enumerate(SEPARABLE_LAYERS, start=1):
            if shallow and index in SHALLOW_DROPPED:
                continue
            if current_stride == output_stride:  # TF-slim: keep resolution, dilate instead
                stride, dilation = 1, rate
                rate *= spec.stride
            else:
                stride, dilation = spec.stride, 1
                current_stride *= spec.stride
            out_channels = scaled_channels(spec.channels, width_mult, min_depth)
            name = f"Conv2d_{index}"
            layers[name] = layer_class(channels, out_channels, stride=stride, dilation=dilation, **conv_kw)
            if conv == "separable":
                self.feature_info.append(
                    dict(name=f"{name}_depthwise", num_chs=channels, reduction=current_stride)
                )
                self.feature_info.append(
                    dict(name=f"{name}_pointwise", num_chs=out_channels, reduction=current_stride)
                )
            else:
                self.feature_info.append(dict(name=name, num_chs=out_channels, reduction=current_stride))
            channels = out_channels

        self.layers = nn.Sequential(layers)
        self.num_features = channels
        self.num_classes = num_classes
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes) if num_classes else nn.Identity()
        self._end_point_index = {info["name"]: i for i, info in enumerate(self.feature_info)}
        init_tf_slim(self)

    # -- introspection -------------------------------------------------------------------------
    @property
    def end_points(self) -> list[str]:
        return [info["name"] for info in self.feature_info]

    def end_point_info(self, name: str) -> dict:
        if name not in self._end_point_index:
            raise ValueError(f"unknown end point {name!r}; this model has: {', '.join(self.end_points)}")
        return self.feature_info[self._end_point_index[name]]

    def _position(self, name: str) -> int:
        self.end_point_info(name)
        return self._end_point_index[name]

    def channels(self, name: str) -> int:
        return self.end_point_info(name)["num_chs"]

    def stride(self, name: str) -> int:
        return self.end_point_info(name)["reduction"]

    def layers_between(self, after: str | None, through: str) -> nn.Sequential:
        """The layers that turn end point `after` (None: the image) into layer `through`'s output.

        Faster R-CNN uses this to run `Conv2d_12`/`Conv2d_13` on cropped proposals. Both names
        are layer names (`Conv2d_11`), not depthwise/pointwise halves.
        """
        names = list(self.layers._modules)
        for name in (after, through):
            if name is not None and name not in names:
                raise ValueError(f"unknown layer {name!r}; layers: {', '.join(names)}")
        start = 0 if after is None else names.index(after) + 1
        stop = names.index(through) + 1
        if stop <= start:
            raise ValueError(f"layer {through!r} does not come after {after!r}")
        return nn.Sequential(OrderedDict((n, self.layers._modules[n]) for n in names[start:stop]))

    # -- forward -------------------------------------------------------------------------------
    def features(self, x: torch.Tensor, end_points: Iterable[str]) -> OrderedDict[str, torch.Tensor]:
        """Run only as far as needed and return the requested end points, in network order."""
        wanted = sorted(set(end_points), key=self._position)
        _check_input(x)
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        remaining = set(wanted)
        for name, layer in self.layers.named_children():
            if not remaining:
                break
            if isinstance(layer, SeparableLayer):
                x = layer.depthwise(x)
                if f"{name}_depthwise" in remaining:
                    out[f"{name}_depthwise"] = x
                    remaining.discard(f"{name}_depthwise")
                x = layer.pointwise(x)
                key = f"{name}_pointwise"
            else:
                x = layer(x)
                key = name
            if key in remaining:
                out[key] = x
                remaining.discard(key)
        return OrderedDict((n, out[n]) for n in wanted)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x)
        return self.layers(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.pool(x), 1))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def init_tf_slim(model: nn.Module, stddev: float = 0.09) -> None:
    """TF-slim's initialisation: truncated normal (±2σ) weights, zero biases, BN γ=1 β=0."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            truncated_normal_(module.weight, stddev)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


@torch.no_grad()
def truncated_normal_(tensor: torch.Tensor, stddev: float) -> torch.Tensor:
    """TF's `truncated_normal` (±2σ) by the inverse CDF, entirely in place.

    `nn.init.trunc_normal_` rejects and redraws with fresh full-size temporaries each round;
    on a small CPU that made building a 4M-parameter model take seconds.
    """
    edge = math.erf(2 / math.sqrt(2))  # P(|z| < 2) = erf(√2): uniform on (-edge, edge) -> |z| < 2
    tensor.uniform_(-edge, edge).erfinv_().mul_(math.sqrt(2) * stddev)
    return tensor.clamp_(-2 * stddev, 2 * stddev)


def _check_options(
    width_mult: float, conv: str, activation: str, output_stride: int, num_classes: int, dropout: float
) -> None:
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    if conv not in ("separable", "full"):
        raise ValueError(f"conv must be 'separable' or 'full', got {conv!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def _check_input(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D batch (N, C, H, W), got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < MIN_INPUT_SIZE:
        raise ValueError(f"input {tuple(x.shape[-2:])} is smaller than {MIN_INPUT_SIZE} px on a side")
