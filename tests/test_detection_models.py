"""SSD / Faster R-CNN MobileNet: anchors, head shapes, parameter and mult-add counts (Table 13)."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from backbone import mobilenet_v1
from tasks.detection.anchors import SSDAnchorGenerator, grid_anchors, ssd_box_specs
from tasks.detection.faster_rcnn import faster_rcnn_mobilenet
from tasks.detection.profile import profile_detector
from tasks.detection.ssd import ssd_mobilenet

SSD300_MAPS = [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]


def test_tf_box_specs_reduce_the_lowest_layer():
    specs = ssd_box_specs()
    assert specs[0] == [(0.1, 1.0), (0.2, 2.0), (0.2, 0.5)]
    assert [len(s) for s in specs] == [3, 6, 6, 6, 6, 6]
    scales = [0.2 + 0.15 * i for i in range(6)] + [1.0]
    for layer in range(1, 6):  # five ratios at s_i, then the 1:1 box at sqrt(s_i * s_{i+1})
        assert [r for _, r in specs[layer][:5]] == pytest.approx([1, 2, 0.5, 3, 1 / 3])
        assert specs[layer][0][0] == pytest.approx(scales[layer])
        assert specs[layer][5] == pytest.approx((math.sqrt(scales[layer] * scales[layer + 1]), 1.0))


def test_anchor_count_at_300_is_1917():
    assert SSDAnchorGenerator(ssd_box_specs()).normalized_anchors(SSD300_MAPS).shape == (1917, 4)


def test_grid_anchors_centres_and_shapes():
    anchors = grid_anchors([(0.5, 1.0), (0.5, 4.0)], (2, 3))  # location-major, two boxes per cell
    assert anchors.shape == (12, 4)
    assert anchors[0].tolist() == pytest.approx([1 / 6, 0.25, 0.5, 0.5])
    assert anchors[1].tolist() == pytest.approx([1 / 6, 0.25, 1.0, 0.25])  # w = s*sqrt(r), h = s/sqrt(r)
    assert anchors[2, :2].tolist() == pytest.approx([0.5, 0.25])  # next column
    assert anchors[6, :2].tolist() == pytest.approx([1 / 6, 0.75])  # next row


def test_anchor_generator_returns_pixel_xyxy_per_image():
    generator = SSDAnchorGenerator([[(0.5, 1.0)]])
    images = ImageList(torch.zeros(2, 3, 100, 200), [(100, 200), (100, 200)])
    anchors = generator(images, [torch.zeros(2, 8, 1, 1)])
    assert len(anchors) == 2
    assert anchors[0].shape == (1, 4)
    assert anchors[0][0].tolist() == pytest.approx([50.0, 25.0, 150.0, 75.0])  # 1:1 in normalised units


@pytest.fixture(scope="module")
def ssd_coco():
    return ssd_mobilenet(body=mobilenet_v1(width_mult=1.0, num_classes=0), num_classes=90, image_size=300)


def test_ssd300_feature_maps_and_head_shapes(ssd_coco):
    ssd_coco.eval()
    with torch.no_grad():
        features = ssd_coco.backbone(torch.zeros(1, 3, 300, 300))
        outputs = ssd_coco.head(list(features.values()))
    assert [tuple(f.shape[-2:]) for f in features.values()] == SSD300_MAPS
    assert [f.shape[1] for f in features.values()] == [512, 1024, 512, 256, 256, 128]
    assert outputs["cls_logits"].shape == (1, 1917, 91)
    assert outputs["bbox_regression"].shape == (1, 1917, 4)
    assert all(
        conv.kernel_size == (1, 1) for conv in ssd_coco.head.modules() if isinstance(conv, torch.nn.Conv2d)
    )


def test_ssd300_coco_has_the_papers_parameter_count(ssd_coco):
    assert sum(p.numel() for p in ssd_coco.parameters()) == 6_819_839  # Table 13: 6.8 M


def test_ssd_extra_depths_scale_with_width_and_floor():
    model = ssd_mobilenet(body=mobilenet_v1(width_mult=0.125, num_classes=0), num_classes=5, image_size=300)
    assert model.backbone.out_channels == [64, 128, 64, 32, 32, 16]  # 512·α, 256·α, 256·α, max(128·α, 16)
    assert model.backbone.extras[3][0].conv.out_channels == 16  # 64·α = 8, floored at 16


def test_depthwise_head_adds_a_3x3_depthwise_bn_layer_per_map_and_keeps_output_shapes():
    body = dict(width_mult=0.25, num_classes=0)
    plain = ssd_mobilenet(body=mobilenet_v1(**body), num_classes=4, image_size=128)
    deep = ssd_mobilenet(body=mobilenet_v1(**body), num_classes=4, image_size=128, head="depthwise")
    depthwise = [m for m in deep.head.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 2 * 6 and all(m.kernel_size == (3, 3) for m in depthwise)
    channels = sum(plain.backbone.out_channels)
    # per map and per output (classes, boxes): c·9 depthwise weights + 2c BatchNorm parameters
    assert (
        sum(p.numel() for p in deep.parameters()) - sum(p.numel() for p in plain.parameters())
        == 2 * 11 * channels
    )
    x = torch.rand(2, 3, 128, 128)
    for model in (plain.eval(), deep.eval()):
        with torch.no_grad():
            outputs = model.head(list(model.backbone(x).values()))
        assert outputs["cls_logits"].shape == (2, 330, 5)  # 8²·3 + (4² + 2² + 1 + 1 + 1)·6 anchors
    with pytest.raises(ValueError, match="head"):
        ssd_mobilenet(body=mobilenet_v1(**body), num_classes=4, image_size=128, head="3x3")


def test_own_data_network_has_six_boxes_everywhere_and_tf_box_predictor_init():
    """The `ssd_own_data.yaml` network at 192 px: six boxes at every location of every map (TF's lowest
    map has three), and the depthwise head drawn from TF's box-predictor initialiser (truncated normal,
    σ 0.03)."""
    body = mobilenet_v1(width_mult=0.25, num_classes=0)
    model = ssd_mobilenet(body=body, num_classes=10, image_size=192, head="depthwise",
                          reduce_lowest_layer=False, min_scale=0.2, max_scale=0.95)  # fmt: skip
    assert model.anchor_generator.num_anchors_per_location() == [6] * 6
    with torch.no_grad():
        outputs = model.eval().head(list(model.backbone(torch.rand(1, 3, 192, 192)).values()))
    assert outputs["cls_logits"].shape == (1, (12**2 + 6**2 + 3**2 + 2**2 + 1 + 1) * 6, 11)
    head_convs = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)]
    weights = torch.cat([m.weight.flatten() for m in head_convs])
    assert weights.abs().max() <= 0.06 + 1e-6 and 0.02 < weights.std() < 0.03
    specs = ssd_box_specs(min_scale=0.2, max_scale=0.95, reduce_boxes_in_lowest_layer=False)
    assert specs[0][:2] == [(0.2, 1.0), (0.2, 2.0)]


def test_ssd_eval_caps_detections():
    model = ssd_mobilenet(
        body=mobilenet_v1(width_mult=0.25, num_classes=0), num_classes=3, image_size=128, score_thresh=0.0
    ).eval()
    with torch.no_grad():
        (out,) = model([torch.rand(3, 128, 128) * 2 - 1])
    assert out["boxes"].shape == (100, 4)
    assert set(out["labels"].tolist()) <= {1, 2, 3}
    assert (out["boxes"] >= 0).all() and (out["boxes"] <= 128).all()


def test_faster_rcnn_second_stage_shares_backbone_layers():
    body = mobilenet_v1(width_mult=0.25, num_classes=0)
    model = faster_rcnn_mobilenet(body=body, num_classes=4, min_size=160, rpn_post_nms_top_n_test=50)
    assert model.roi_heads.box_head.layers.Conv2d_12 is body.layers.Conv2d_12
    assert model.roi_heads.box_head.layers.Conv2d_13 is body.layers.Conv2d_13
    assert model.backbone.out_channels == body.channels("Conv2d_11_pointwise") == 128
    assert model.roi_heads.box_predictor.cls_score.out_features == 5
    ran = []
    hook = body.layers.Conv2d_12.register_forward_hook(lambda m, i, o: ran.append(i[0].shape))
    model.eval()
    with torch.no_grad():
        (out,) = model([torch.rand(3, 160, 160) * 2 - 1])
    hook.remove()
    assert ran == [(50, 128, 14, 14)]  # only on the RoI crops, never on the whole image
    assert out["boxes"].shape[1] == 4


@pytest.mark.parametrize(
    ("name", "params", "billion_mult_adds", "paper"),
    [
        ("ssd300", 6_819_839, 1.237, (19.3, 1.2, 6.8)),
        ("frcnn300", 6_063_939, 25.223, (16.4, 25.2, 6.1)),
        ("frcnn600", 6_063_939, 30.486, (19.8, 30.5, 6.1)),
    ],
)
def test_profile_matches_table13(name, params, billion_mult_adds, paper):
    result = profile_detector(name)
    assert result.params == params
    assert result.mult_adds / 1e9 == pytest.approx(billion_mult_adds, abs=5e-4)
    # the row printed beside ours is Table 13's (mAP, billion mult-adds, million parameters)
    assert (result.paper.mAP, result.paper.billion_mult_adds, result.paper.million_params) == paper
    measured, printed_paper = result.table().splitlines()[2:4]
    assert f"{billion_mult_adds:.3f}" in measured and f"{paper[1]:.1f}" in printed_paper
