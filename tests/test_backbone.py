"""MobileNetV1 structure: Table 1 channels and strides, end points, dilation, variants, bad arguments."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from backbone import MobileNetV1, mobilenet_v1, scaled_channels
from backbone.mobilenet import Conv2dSame

TABLE1 = [  # (layer index, stride, channels at α=1), rows 1..13
    (1, 1, 64), (2, 2, 128), (3, 1, 128), (4, 2, 256), (5, 1, 256), (6, 2, 512),
    *((i, 1, 512) for i in range(7, 12)), (12, 2, 1024), (13, 1, 1024),
]


def expected_end_points(width_mult: float) -> list[tuple[str, int, int]]:
    """(name, channels, stride) for every TF-slim end point, written from Table 1."""
    channels, stride = max(int(32 * width_mult), 8), 2
    points = [("Conv2d_0", channels, stride)]
    for index, layer_stride, out in TABLE1:
        stride *= layer_stride
        points.append((f"Conv2d_{index}_depthwise", channels, stride))
        channels = max(int(out * width_mult), 8)
        points.append((f"Conv2d_{index}_pointwise", channels, stride))
    return points


@pytest.fixture(scope="module")
def half_width() -> MobileNetV1:
    return mobilenet_v1(width_mult=0.5).eval()


def test_end_points_follow_table1_and_real_tensors(half_width):
    expected = expected_end_points(0.5)
    assert [(i["name"], i["num_chs"], i["reduction"]) for i in half_width.feature_info] == expected
    with torch.inference_mode():
        features = half_width.features(torch.randn(1, 3, 128, 128), half_width.end_points)
    assert list(features) == [name for name, _, _ in expected]
    for name, channels, stride in expected:
        assert tuple(features[name].shape) == (1, channels, 128 // stride, 128 // stride), name


def test_features_in_network_order_and_consistent_with_forward(half_width):
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        features = half_width.features(x, ["Conv2d_13_pointwise", "Conv2d_5_depthwise", "Conv2d_0"])
        assert list(features) == ["Conv2d_0", "Conv2d_5_depthwise", "Conv2d_13_pointwise"]
        torch.testing.assert_close(half_width(x), half_width.forward_head(features["Conv2d_13_pointwise"]))
        cropped = half_width.layers_between("Conv2d_11", "Conv2d_13")
        assert list(cropped._modules) == ["Conv2d_12", "Conv2d_13"]
        conv11 = half_width.features(x, ["Conv2d_11_pointwise"])["Conv2d_11_pointwise"]
        torch.testing.assert_close(cropped(conv11), features["Conv2d_13_pointwise"])


def test_width_rule_and_classifier():
    model = mobilenet_v1(width_mult=0.25, num_classes=7)
    assert model.channels("Conv2d_0") == 8 == scaled_channels(32, 0.25)  # min_depth clamps 32·0.25
    assert model.channels("Conv2d_13_pointwise") == model.num_features == 256
    assert model.classifier.in_features == 256 and model.classifier.out_features == 7
    assert model.classifier.bias is not None
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 27
    assert sum(isinstance(m, nn.ReLU6) for m in model.modules()) == 27
    assert mobilenet_v1(width_mult=0.25, min_depth=16).channels("Conv2d_0") == 16
    relu = mobilenet_v1(width_mult=0.25, activation="relu")
    assert sum(isinstance(m, nn.ReLU) for m in relu.modules()) == 27
    headless = mobilenet_v1(width_mult=0.25, num_classes=0).eval()
    assert headless(torch.randn(2, 3, 64, 64)).shape == (2, 256)


@pytest.mark.parametrize("output_stride, final_size, dilations", [(16, 14, (1, 2)), (8, 28, (2, 4))])
def test_output_stride_dilates_instead_of_striding(output_stride, final_size, dilations):
    model = mobilenet_v1(width_mult=0.25, output_stride=output_stride).eval()
    assert max(info["reduction"] for info in model.feature_info) == output_stride
    assert model.stride("Conv2d_13_pointwise") == output_stride
    layer12, layer13 = model.layers.Conv2d_12.depthwise.conv, model.layers.Conv2d_13.depthwise.conv
    assert (layer12.stride, layer12.dilation[0], layer13.dilation[0]) == ((1, 1), *dilations)
    with torch.inference_mode():
        out = model.features(torch.randn(1, 3, 224, 224), ["Conv2d_13_pointwise"])["Conv2d_13_pointwise"]
    assert out.shape == (1, 256, final_size, final_size)


def test_shallow_drops_the_five_14x14_layers():
    deep, shallow = mobilenet_v1(width_mult=0.25), mobilenet_v1(width_mult=0.25, shallow=True)
    assert len(deep.layers) - len(shallow.layers) == 5
    assert [n for n in deep.layers._modules if n not in shallow.layers._modules] == [
        f"Conv2d_{i}" for i in range(7, 12)
    ]
    assert "Conv2d_9_pointwise" not in shallow.end_points
    with pytest.raises(ValueError, match="unknown end point 'Conv2d_9_pointwise'"):
        shallow.features(torch.randn(1, 3, 64, 64), ["Conv2d_9_pointwise"])
    assert shallow(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_full_convolution_variant():
    model = mobilenet_v1(width_mult=0.25, conv="full").eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 14 and all(c.groups == 1 and c.kernel_size == (3, 3) for c in convs)
    assert model.end_points == [f"Conv2d_{i}" for i in range(14)]
    with torch.inference_mode():
        features = model.features(torch.randn(1, 3, 64, 64), model.end_points)
    for info in model.feature_info:
        assert features[info["name"]].shape[1] == info["num_chs"]
        assert features[info["name"]].shape[-1] == math.ceil(64 / info["reduction"])


def test_tf_padding_uses_same_convs_with_unchanged_shapes():
    model = mobilenet_v1(width_mult=0.25, tf_padding=True).eval()
    same = [m for m in model.modules() if isinstance(m, Conv2dSame)]
    assert len(same) == 14  # the stem and the 13 depthwise convs; 1x1 convs need no padding
    with torch.inference_mode():
        for size in (64, 65, 97):
            features = model.features(torch.randn(1, 3, size, size), model.end_points)
            assert features["Conv2d_13_pointwise"].shape[-2:] == (math.ceil(size / 32),) * 2


@pytest.mark.parametrize("options, message", [
    (dict(width_mult=0), "width_mult must be > 0"),
    (dict(width_mult=-0.5), "width_mult must be > 0"),
    (dict(output_stride=4), "output_stride must be 8, 16 or 32"),
    (dict(conv="grouped"), "conv must be 'separable' or 'full'"),
])
def test_bad_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        mobilenet_v1(**options)


def test_bad_inputs_and_end_points_raise(half_width):
    with pytest.raises(ValueError, match=r"input \(31, 64\) is smaller than 32 px"):
        half_width(torch.randn(1, 3, 31, 64))
    with pytest.raises(ValueError, match="smaller than 32 px"):
        half_width.features(torch.randn(1, 3, 64, 16), ["Conv2d_0"])
    with pytest.raises(ValueError, match="unknown end point 'Conv2d_14_pointwise'.*Conv2d_13_pointwise"):
        half_width.features(torch.randn(1, 3, 64, 64), ["Conv2d_14_pointwise"])
    with pytest.raises(ValueError, match="unknown layer 'Conv2d_1_pointwise'"):
        half_width.layers_between(None, "Conv2d_1_pointwise")
