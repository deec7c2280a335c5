"""ONNX export: onnxruntime must reproduce the PyTorch outputs."""

from __future__ import annotations

import onnx
import pytest
import torch

from backbone import mobilenet_v1
from backbone.export import export_onnx, fuse_for_inference, main_export, onnx_session, run_onnx
from backbone.weights import save_weights


def calibrated(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """Give BN real statistics (a fresh BN is the identity and the logits would be ~0)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for seed in range(2):
            model(torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


def test_onnx_matches_pytorch_with_dynamic_batch(tmp_path):
    model = calibrated(mobilenet_v1(width_mult=0.25), 96)
    path = export_onnx(model, tmp_path / "model.onnx", resolution=96)
    onnx.checker.check_model(str(path))
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary left behind

    x = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(5))  # exported at batch 1
    with torch.inference_mode():
        expected = model(x)
    assert expected.abs().max() > 0.1
    got = torch.from_numpy(run_onnx(onnx_session(path), x.numpy()))
    assert got.shape == (3, 1000)
    assert (got - expected).abs().max().item() <= 1e-4


def test_cli_exports_given_weights_with_tf_padding(tmp_path, capsys):
    source = calibrated(mobilenet_v1(width_mult=0.25, num_classes=0, tf_padding=True), 97)
    weights = tmp_path / "backbone.pth"
    save_weights(source, weights)
    out = tmp_path / "features.onnx"
    assert main_export(["--format", "onnx", "--out", str(out), "--width-mult", "0.25", "--resolution", "98",
                        "--num-classes", "0", "--tf-padding", "--weights", str(weights)]) == 0
    assert str(out) in capsys.readouterr().out

    session = onnx_session(out)
    assert [o.name for o in session.get_outputs()] == ["features"]
    x = torch.randn(2, 3, 98, 98, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        expected = source(x)
    assert (torch.from_numpy(run_onnx(session, x.numpy())) - expected).abs().max().item() <= 1e-4


def test_cli_rejects_tiny_resolution(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main_export(["--out", str(tmp_path / "m.onnx"), "--resolution", "16"])
    assert "at least 32 px" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_fused_batchnorm_gives_the_same_outputs():
    model = calibrated(mobilenet_v1(width_mult=0.25, tf_padding=True), 65)
    fused = fuse_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert all(m.bias is not None for m in fused.modules() if isinstance(m, torch.nn.Conv2d))
    x = torch.randn(2, 3, 65, 65, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)
        name = ["Conv2d_7_depthwise"]
        torch.testing.assert_close(fused.features(x, name), model.features(x, name), atol=1e-4, rtol=1e-4)
