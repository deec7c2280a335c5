"""Weight conversion: timm and TF-slim sources must give the source model's logits."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from backbone import mobilenet_v1
from backbone.weights import load_weights, save_weights

TF_STRIDES = (2, 1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)  # Conv2d_0 .. Conv2d_13
TF_CHANNELS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


def randomise_batchnorm(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Fresh BN layers are the identity; random statistics make the eps and mapping errors visible."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(n, generator=generator) * 2 + 1e-4)  # some below 1e-3
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.2)


# -- timm ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, width_mult", [("mobilenetv1_100", 1.0), ("mobilenetv1_125", 1.25)])
def test_timm_state_dict_gives_timm_logits(tmp_path, name, width_mult):
    source = timm.create_model(name, pretrained=False).eval()
    with torch.no_grad():
        randomise_batchnorm(source, torch.Generator().manual_seed(0))
    path = tmp_path / f"{name}.pth"
    torch.save(source.state_dict(), path)

    ours = mobilenet_v1(width_mult=width_mult, weights=path).eval()
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert (ours(x) - source(x)).abs().max().item() <= 1e-4


def test_timm_safetensors_and_pooled_features(tmp_path):
    source = timm.create_model("mobilenetv1_100", pretrained=False).eval()
    with torch.no_grad():
        randomise_batchnorm(source, torch.Generator().manual_seed(2))
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(path))

    headless = mobilenet_v1(num_classes=0, weights=path).eval()  # the classifier is skipped
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = source.forward_head(source.forward_features(x), pre_logits=True)
        assert (headless(x) - expected).abs().max().item() <= 1e-4


# -- TF-slim ---------------------------------------------------------------------------------
def tf_slim_arrays(width_mult: float, num_classes: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}

    def batchnorm(scope: str, channels: int) -> None:
        arrays[f"{scope}/BatchNorm/gamma"] = rng.uniform(0.5, 1.5, channels)
        arrays[f"{scope}/BatchNorm/beta"] = rng.normal(0, 0.2, channels)
        arrays[f"{scope}/BatchNorm/moving_mean"] = rng.normal(0, 0.2, channels)
        arrays[f"{scope}/BatchNorm/moving_variance"] = rng.uniform(0.2, 2.0, channels)

    channels = [max(int(c * width_mult), 8) for c in TF_CHANNELS]
    arrays["MobilenetV1/Conv2d_0/weights"] = rng.normal(0, 0.3, (3, 3, 3, channels[0]))
    batchnorm("MobilenetV1/Conv2d_0", channels[0])
    for i in range(1, 14):
        scope = f"MobilenetV1/Conv2d_{i}"
        arrays[f"{scope}_depthwise/depthwise_weights"] = rng.normal(0, 0.3, (3, 3, channels[i - 1], 1))
        batchnorm(f"{scope}_depthwise", channels[i - 1])
        arrays[f"{scope}_pointwise/weights"] = rng.normal(0, 0.3, (1, 1, channels[i - 1], channels[i]))
        batchnorm(f"{scope}_pointwise", channels[i])
    arrays["MobilenetV1/Logits/Conv2d_1c_1x1/weights"] = rng.normal(0, 0.1, (1, 1, channels[-1], num_classes))
    arrays["MobilenetV1/Logits/Conv2d_1c_1x1/biases"] = rng.normal(0, 0.1, num_classes)
    return {name: value.astype(np.float32) for name, value in arrays.items()}


def tf_conv_same(x: torch.Tensor, kernel: np.ndarray, stride: int, depthwise: bool) -> torch.Tensor:
    """TF `conv2d`/`depthwise_conv2d` with padding="SAME", written from the TF definitions (NCHW input)."""
    kh, kw = kernel.shape[:2]
    pads = []
    for size, k in zip(x.shape[:-3:-1], (kw, kh), strict=True):  # width first, as F.pad wants
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
    x = F.pad(x, pads)
    n, c, h, w = x.shape
    out_h, out_w = (h - kh) // stride + 1, (w - kw) // stride + 1
    patches = F.unfold(x, (kh, kw), stride=stride).reshape(n, c, kh, kw, out_h * out_w)
    k = torch.from_numpy(kernel).double()
    out = (torch.einsum("nchwl,hwc->ncl", patches, k[..., 0]) if depthwise
           else torch.einsum("nchwl,hwco->nol", patches, k))
    return out.reshape(n, -1, out_h, out_w)


def tf_slim_reference(arrays: dict[str, np.ndarray], x: torch.Tensor) -> torch.Tensor:
    """The TF-slim MobileNet v1 forward pass, computed straight from the variables (float64)."""

    def bn_relu6(x: torch.Tensor, scope: str) -> torch.Tensor:
        p = {k: torch.from_numpy(arrays[f"{scope}/BatchNorm/{k}"]).double()[:, None, None]
             for k in ("gamma", "beta", "moving_mean", "moving_variance")}
        x = (x - p["moving_mean"]) / torch.sqrt(p["moving_variance"] + 1e-3) * p["gamma"] + p["beta"]
        return x.clamp(0, 6)

    x = x.double()
    x = bn_relu6(tf_conv_same(x, arrays["MobilenetV1/Conv2d_0/weights"], 2, False), "MobilenetV1/Conv2d_0")
    for i, stride in enumerate(TF_STRIDES[1:], start=1):
        scope = f"MobilenetV1/Conv2d_{i}"
        x = tf_conv_same(x, arrays[f"{scope}_depthwise/depthwise_weights"], stride, True)
        x = bn_relu6(x, f"{scope}_depthwise")
        x = bn_relu6(tf_conv_same(x, arrays[f"{scope}_pointwise/weights"], 1, False), f"{scope}_pointwise")
    pooled = x.mean(dim=(2, 3))
    weights = torch.from_numpy(arrays["MobilenetV1/Logits/Conv2d_1c_1x1/weights"][0, 0]).double()
    return pooled @ weights + torch.from_numpy(arrays["MobilenetV1/Logits/Conv2d_1c_1x1/biases"]).double()


@pytest.mark.parametrize("height, width", [(224, 224), (97, 130)])
def test_tf_slim_npz_matches_hand_computed_reference(tmp_path, height, width):
    arrays = tf_slim_arrays(0.25, 1001, seed=height)
    path = tmp_path / "mobilenet_v1_0.25.npz"
    np.savez(path, **arrays)
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(height)) * 0.5
    expected = tf_slim_reference(arrays, x)

    with torch.inference_mode():
        tf_options = dict(width_mult=0.25, tf_padding=True, weights=path)
        with_background = mobilenet_v1(num_classes=1001, **tf_options).eval()
        torch.testing.assert_close(with_background(x).double(), expected, atol=1e-4, rtol=1e-4)
        imagenet = mobilenet_v1(num_classes=1000, **tf_options).eval()
        torch.testing.assert_close(imagenet(x).double(), expected[:, 1:], atol=1e-4, rtol=1e-4)
        # The reference is sensitive to padding: PyTorch's symmetric padding gives other logits.
        symmetric = mobilenet_v1(width_mult=0.25, num_classes=1001, weights=path).eval()
        assert (symmetric(x).double() - expected).abs().max().item() > 1e-2


def test_mismatched_keys_are_all_named(tmp_path):
    arrays = tf_slim_arrays(0.25, 1001, seed=0)
    del arrays["MobilenetV1/Conv2d_5_pointwise/BatchNorm/gamma"]
    arrays["MobilenetV1/Conv2d_5_pointwise/weights/ExponentialMovingAverage"] = np.zeros(1, np.float32)
    arrays["global_step"] = np.zeros((), np.int64)
    path = tmp_path / "broken.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError) as err:
        mobilenet_v1(width_mult=0.25, weights=path)
    message = str(err.value)
    assert str(path) in message
    assert "missing keys (1): layers.Conv2d_5.pointwise.bn.weight" in message
    assert "unexpected keys (2)" in message
    assert "global_step" in message and "weights/ExponentialMovingAverage" in message


def test_wrong_width_is_reported_with_shapes(tmp_path):
    path = tmp_path / "half.pth"
    save_weights(mobilenet_v1(width_mult=0.5), path)
    expected = r"layers.Conv2d_0.conv.weight: file \(16, 3, 3, 3\) vs model \(8, 3, 3, 3\)"
    with pytest.raises(ValueError, match=expected):
        mobilenet_v1(width_mult=0.25, weights=path)


def test_unrecognised_format_names_the_file(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match=r"resnet.pth: unrecognised weights format.*fc.weight"):
        mobilenet_v1(weights=path)


# -- our own checkpoints -------------------------------------------------------------------------
def test_own_checkpoint_round_trip_and_lightning_prefix(tmp_path):
    source = mobilenet_v1(width_mult=0.25, num_classes=10)
    with torch.no_grad():
        randomise_batchnorm(source, torch.Generator().manual_seed(4))
    plain = tmp_path / "plain.pth"
    save_weights(source, plain)
    lightning = tmp_path / "last.ckpt"
    nested = {f"model.backbone.{key}": value for key, value in source.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": {**nested, "model.head.weight": torch.zeros(3)}}, lightning)
    for path in (plain, lightning):
        loaded = mobilenet_v1(width_mult=0.25, num_classes=10, weights=path)
        for key, value in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


def test_fine_tuning_keeps_own_classifier(tmp_path):
    path = tmp_path / "imagenet.pth"
    source = mobilenet_v1(width_mult=0.25)
    save_weights(source, path)
    model = mobilenet_v1(width_mult=0.25, num_classes=10)
    own_classifier = model.classifier.weight.clone()
    load_weights(model, path)
    assert torch.equal(model.classifier.weight, own_classifier)
    last = "layers.Conv2d_13.pointwise.conv.weight"
    assert torch.equal(model.state_dict()[last], source.state_dict()[last])


def test_non_strict_load_keeps_missing_layers(tmp_path):
    path = tmp_path / "shallow.pth"
    save_weights(mobilenet_v1(width_mult=0.25, shallow=True), path)
    model = mobilenet_v1(width_mult=0.25)
    before = model.layers.Conv2d_9.pointwise.conv.weight.clone()
    with pytest.raises(ValueError, match="missing keys"):
        load_weights(model, path)
    load_weights(model, path, strict=False)
    assert torch.equal(model.layers.Conv2d_9.pointwise.conv.weight, before)


def test_tf_slim_export_script_keeps_model_variables_only():
    script_path = Path(__file__).resolve().parents[1] / "scripts" / "export_tf_slim_npz.py"
    spec = importlib.util.spec_from_file_location("export_tf_slim_npz", str(script_path))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    names = [
        "global_step",
        "MobilenetV1/Conv2d_0/weights",
        "MobilenetV1/Conv2d_0/weights/ExponentialMovingAverage",
        "MobilenetV1/Conv2d_0/weights/RMSProp",
        "MobilenetV1/Conv2d_0/weights/RMSProp_1",
        "MobilenetV1/Conv2d_0/BatchNorm/moving_mean",
    ]
    weights, mean = names[1], names[5]
    assert script.select_variables(names, ema=False) == {weights: weights, mean: mean}
    assert script.select_variables(names, ema=True) == {weights: names[2], mean: mean}
